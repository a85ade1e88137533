"""Every cluster config the project ships is valid before anyone pays for a cluster.

The ``ray up`` configs go through Ray's own offline validation (the function
``ray up`` itself calls: defaults filled in, then ``ray-schema.json`` via
jsonschema, plus Ray's extra rules), so a misspelt field fails here instead of
minutes into a launch. ``prepare_config``/``validate_config`` are private Ray
API: they are pinned by ``ray[tune]==2.60.0`` in pyproject.toml, and
:func:`test_cluster_configs_install_the_pinned_versions` keeps the pins in step.
The KubeRay manifests are checked for the fields hsistudy relies on (the CRD
itself is not vendored).
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY_UP_CONFIGS = ["cluster.yaml", "cluster-onprem.yaml"]
K8S_DIR = ROOT / "k8s"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def _validate(config: dict[str, Any]) -> dict[str, Any]:
    """What ``ray up`` does with a config before it contacts any cloud: fill defaults, check the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _pins() -> dict[str, str]:
    """Exact ``name==version`` pins of pyproject.toml's dependencies (extras dropped)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", d.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_config_passes_rays_schema_validation(name: str) -> None:
    prepared = _validate(_load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_aws_config_has_a_cpu0_head_and_autoscaling_gpu_worker_types() -> None:
    cfg = _load("cluster.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials must stay off the head"
    gpu_types = {k: v for k, v in types.items() if v.get("resources", {}).get("GPU", 0) > 0}
    assert sorted(t["resources"]["GPU"] for t in gpu_types.values()) == [1, 4]
    for t in gpu_types.values():
        assert 0 <= t["min_workers"] <= t["max_workers"]
    assert sum(t["max_workers"] for t in gpu_types.values()) <= cfg["max_workers"]
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start


IMAGE = "registry.example.org/hsistudy:0.1.0"


def test_dockerfile_installs_the_pins_and_the_package_with_its_data() -> None:
    text = (ROOT / "Dockerfile").read_text()
    pins = _pins()
    assert f"torch=={pins['torch']}" in text and f'"ray[default]=={pins["ray"]}"' in text
    assert re.search(r"pip install /tmp/wheels/hsistudy-\*\.whl", text)  # the wheel: bundled spectra inside
    assert "sp.bundle() is not None" in text and "HSISTUDY_CODE_VERSION" in text
    for copied in ("study", "trainables", "search_spaces", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", text, re.M), copied
    assert "--index-url" not in text and "--extra-index-url" not in text


def test_aws_cluster_and_kuberay_run_the_dockerfile_image() -> None:
    cfg = _load("cluster.yaml")
    assert cfg["docker"]["image"] == IMAGE
    assert any("/mnt/efs:/mnt/efs" in o for o in cfg["docker"]["run_options"])
    assert any("mount -t nfs4" in c for c in cfg["initialization_commands"])  # on the host, not in the container
    assert not any("pip install" in c and "torch" in c for c in cfg["setup_commands"])  # the image has it
    for f in sorted(K8S_DIR.glob("*.yaml")):
        images = re.findall(r"image:\s*(\S+)", f.read_text())
        assert images and set(images) == {IMAGE}, f.name
        assert "Dockerfile" in f.read_text(), f"{f.name} should say where its image comes from"


def _docker_run_options(cfg: dict[str, Any], node_type: str) -> list[str]:
    """The ``docker run`` options the launcher gives a node type's container (Ray 2.60: the head gets the global
    ``docker`` section's ``run_options + head_run_options``; a worker that section updated with its node type's
    ``docker`` section, then ``run_options + worker_run_options``)."""
    docker = copy.deepcopy(cfg["docker"])
    if node_type == cfg["head_node_type"]:
        return docker.get("run_options", []) + docker.get("head_run_options", [])
    docker.update(cfg["available_node_types"][node_type].get("docker", {}))
    return docker.get("run_options", []) + docker.get("worker_run_options", [])


def test_aws_head_container_gets_no_gpus_and_every_gpu_worker_does() -> None:
    """``--gpus all`` on the CPU head fails its container start (nvidia-container-cli finds no GPU there)."""
    cfg = _validate(_load("cluster.yaml"))
    types = cfg["available_node_types"]
    head = _docker_run_options(cfg, cfg["head_node_type"])
    assert not any(o.startswith("--gpus") for o in head), head
    assert any("/mnt/efs:/mnt/efs" in o for o in head)  # the head's driver writes results too
    gpu_types = [t for t, v in types.items() if v.get("resources", {}).get("GPU", 0) > 0]
    assert gpu_types
    for t in gpu_types:
        opts = _docker_run_options(cfg, t)
        assert "--gpus all" in opts and any("/mnt/efs:/mnt/efs" in o for o in opts), (t, opts)


def test_kuberay_head_requests_no_gpu() -> None:
    for spec in _cluster_specs():
        for container in spec["headGroupSpec"]["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in {**container["resources"].get("requests", {}),
                                            **container["resources"].get("limits", {})}


def _logical_lines(dockerfile: str) -> str:
    """The Dockerfile with its backslash continuations joined: one instruction per line."""
    return re.sub(r"\\\n", " ", dockerfile)


def test_dockerfile_installs_a_c_compiler_for_compile() -> None:
    """``--compile``: Triton builds its launchers with a host C compiler at run time; python:3.11-slim has none."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)  # the base that needs it
    installs = " ".join(re.findall(r"apt-get install ([^&]*)", _logical_lines(text)))
    assert "build-essential" in installs or ("gcc" in installs.split() and "libc6-dev" in installs.split()), installs
    assert "#include <Python.h>" in text and re.search(r"\bgcc -I", text)  # the build proves it compiles


def test_image_and_clusters_hide_gpus_from_zero_gpu_workers() -> None:
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a worker that requests no GPU unless this is set."""
    env = " ".join(re.findall(r"^ENV (.*)$", _logical_lines((ROOT / "Dockerfile").read_text()), re.M))
    assert "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1" in env.split()
    onprem = _load("cluster-onprem.yaml")
    assert all("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1" in " ".join(onprem[k])
               for k in ("head_start_ray_commands", "worker_start_ray_commands"))


@pytest.mark.parametrize("name", ["cluster-onprem.yaml"])
def test_cluster_configs_install_the_pinned_versions(name: str) -> None:
    cfg = _load(name)
    setup = "\n".join(cfg["setup_commands"])
    pins = _pins()
    assert f"torch=={pins['torch']}" in setup
    assert f'"ray[default]=={pins["ray"]}"' in setup  # dashboard + job submission on the cluster
    assert re.search(r"pip install .*-e ~?/?\S*hsistudy", setup)
    assert re.search(r"pip install .*--no-deps -r \S*requirements-data\.txt", setup)
    assert "--index-url" not in setup and "--extra-index-url" not in setup
    assert "." in cfg["file_mounts"].values(), "the repository itself is copied to every node"
    # `ray down` runs a bare `ray stop` in a login shell: ray must be on that PATH (docs/reference.md §R33)
    assert re.search(r"export PATH=\S*hsistudy-venv/bin", setup) and "~/.bashrc" in setup


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_commands_are_valid_bash(name: str) -> None:
    """The schema sees commands as plain strings; ``bash -n`` catches a broken quote or brace."""
    import subprocess

    cfg = _load(name)
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    for cmd in (c for k in keys for c in cfg.get(k) or []):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {cmd!r}: {r.stderr}"


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("cluster.yaml", lambda c: c.__setitem__("max_worker", c.pop("max_workers")), "'max_worker' was unexpected"),
        ("cluster.yaml", lambda c: c["available_node_types"]["gpu.1x.a10g"].__setitem__(
            "min_worker", c["available_node_types"]["gpu.1x.a10g"].pop("min_workers")), "'min_worker' was unexpected"),
        ("cluster.yaml", lambda c: c.__setitem__("setup_command", c.pop("setup_commands")),
         "'setup_command' was unexpected"),
        ("cluster-onprem.yaml", lambda c: c.__setitem__("head_start_ray_command", c.pop("head_start_ray_commands")),
         "'head_start_ray_command' was unexpected"),
    ],
    ids=["max_worker", "node-type-min_worker", "setup_command", "onprem-head_start_ray_command"],
)
def test_a_misspelt_field_fails_validation(name: str, mutate: Any, message: str) -> None:
    import jsonschema

    cfg = _load(name)
    mutate(cfg)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        _validate(cfg)


def test_onprem_config_rejects_node_types() -> None:
    """The local provider builds its single node type itself; ``available_node_types`` is an error there."""
    import click

    cfg = _load("cluster-onprem.yaml")
    cfg["available_node_types"] = _load("cluster.yaml")["available_node_types"]
    with pytest.raises(click.ClickException, match="available_node_types is not supported"):
        _validate(cfg)


# ---- KubeRay manifests: parse, required fields, what hsistudy needs ---------------------------------


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for f in sorted(K8S_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def _cluster_specs() -> list[dict[str, Any]]:
    """The RayCluster spec of every RayCluster and of every RayJob (its rayClusterSpec)."""
    specs = []
    for d in _k8s_docs():
        if d["kind"] == "RayCluster":
            specs.append(d["spec"])
        elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
            specs.append(d["spec"]["rayClusterSpec"])
    return specs


def test_k8s_manifests_have_the_expected_kinds() -> None:
    docs = _k8s_docs()
    for d in docs:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(d), d.get("kind")
        assert d["metadata"].get("name")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["PersistentVolumeClaim", "Pod", "RayCluster", "RayJob"]
    assert all(d["apiVersion"] == "ray.io/v1" for d in docs if d["kind"].startswith("Ray"))


def test_kuberay_clusters_keep_trials_off_the_head_and_autoscale_gpu_workers() -> None:
    specs = _cluster_specs()
    assert len(specs) == 2
    for spec in specs:
        assert spec["rayVersion"] == _pins()["ray"]
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        (group,) = spec["workerGroupSpecs"]
        assert group["groupName"] and group["minReplicas"] == 0 and group["maxReplicas"] == 4
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_kuberay_results_volume_is_one_shared_claim_mounted_everywhere() -> None:
    (pvc,) = [d for d in _k8s_docs() if d["kind"] == "PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    for spec in _cluster_specs():
        for pod in [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"]
                                                                   for g in spec["workerGroupSpecs"]]:
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                      for v in pod["volumes"] if "persistentVolumeClaim" in v}
            mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
            assert [mounts[n] for n, c in claims.items() if c == pvc["metadata"]["name"]] == ["/results"]


def test_rayjob_entrypoint_is_a_valid_study_run_command() -> None:
    from study.run import build_parser

    (job,) = [d for d in _k8s_docs() if d["kind"] == "RayJob"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "study.run"]
    args = build_parser().parse_args(argv[3:])  # every flag exists (argparse exits on an unknown one)
    assert args.strategy == "all" and args.address == "auto"
    assert str(args.results).startswith("/results/")
    # data and weights come from the shared volume, where k8s/data-loader.yaml puts them
    assert str(args.data_root).startswith("/results/data/") and str(args.backbone).startswith("/results/weights/")
    (loader,) = [d for d in _k8s_docs() if d["kind"] == "Pod"]
    pod = loader["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "hsistudy-results"
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/results"
