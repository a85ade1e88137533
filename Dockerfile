# hsistudy cluster image: CUDA build of torch 2.13 + Ray 2.60 + hsistudy (with its bundled spectra), so
# autoscaled Ray workers start in seconds instead of installing torch for minutes.
# Used by cluster.yaml (docker: image) and the KubeRay manifests in k8s/ (image:). Build and push:
#   docker build -t registry.example.org/hsistudy:0.1.0 --build-arg GIT_SHA=$(git rev-parse --short=12 HEAD) .
#   docker push registry.example.org/hsistudy:0.1.0
# Optional: --build-arg PRETRAIN=1 bakes the local sanity HyperSL backbone into $HSISTUDY_CACHE (a few CPU
# minutes at build time); the released weights and the HS3-Bench data go on the shared volume, not here.
FROM python:3.11-slim-bookworm

# rsync/openssh: the Ray cluster launcher syncs file_mounts into the container; procps: `ray stop`;
# gcc + libc6-dev: --compile (torch.compile -> Triton) builds its kernel launchers with a host C compiler at
# run time, and python:3.11-slim has none (the Python headers are in the image already)
RUN apt-get update -q && apt-get install -yq --no-install-recommends rsync openssh-client procps git \
    gcc libc6-dev && rm -rf /var/lib/apt/lists/*

# MALLOC_ARENA_MAX=1: Tune trains in a thread of each trial actor, and glibc's per-thread arenas held a
# HyperSL k = 1 trial at 4.4 GB instead of 1.1 GB (docs/performance.md section 7; study.run sets it for a local Ray)
# RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1: Ray 2.60 otherwise leaves CUDA_VISIBLE_DEVICES alone for a worker that
# requests no GPU, and a CPU-only trial or export task on a GPU node would use GPU 0 (study.run sets it locally too)
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 HSISTUDY_CACHE=/opt/hsistudy-cache PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=1 \
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1
# torch==2.13.0 from PyPI is the CUDA build on Linux x86_64 (CUDA 13.0: its NVIDIA libraries come as cu13
# wheels; the host needs only an NVIDIA driver >= 580, docs/cluster.md). The same pins as pyproject.toml;
# ray[default] adds the dashboard/job server.
RUN pip install torch==2.13.0 "ray[default]==2.60.0"

# the package from a wheel of this checkout: the spectra bundle (study/data/spectra_bundle.npz) is inside
WORKDIR /src
COPY pyproject.toml README.md ./
COPY study ./study
COPY trainables ./trainables
COPY search_spaces ./search_spaces
RUN pip wheel --no-deps -w /tmp/wheels . && pip install /tmp/wheels/hsistudy-*.whl && rm -rf /tmp/wheels /src
WORKDIR /work

# which code ran: rows record this instead of "0.1.0" (no .git in the image)
ARG GIT_SHA=""
ENV HSISTUDY_CODE_VERSION=${GIT_SHA:+0.1.0+g${GIT_SHA}}
ARG PRETRAIN=0
RUN if [ "$PRETRAIN" = "1" ]; then hsistudy pretrain; fi && mkdir -p "$HSISTUDY_CACHE" && chmod -R a+rwX "$HSISTUDY_CACHE"

# fail the build, not the cluster, if the package or its data is broken, torch is not a CUDA build, or the C
# compiler cannot build a Python extension (what Triton does for --compile)
RUN python -c "import study.data.spectra as sp; assert sp.bundle() is not None" && hsistudy --help > /dev/null \
    && python -c "import torch; assert torch.version.cuda, torch.__version__; print('torch CUDA', torch.version.cuda)" \
    && printf '#include <Python.h>\nint main(void) { return 0; }\n' > /tmp/cc.c \
    && gcc -I"$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" /tmp/cc.c -o /tmp/cc \
    && rm /tmp/cc /tmp/cc.c
CMD ["hsistudy", "--help"]
