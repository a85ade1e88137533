"""Shared fixtures: one local Ray per test session, tiny synthetic data sets made once."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# tests/test_object_store.py talks to a local moto S3 server. Set here, before the session's Ray starts,
# so Ray's workers inherit it too: dummy credentials, and no lookups at the EC2 metadata address.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

# the node-shared copies of --data-placement memory (study.data.shared_copy) of this session, Ray's trials included:
# a folder of its own, removed when the session ends
_COPIES = Path(tempfile.mkdtemp(prefix="hsistudy-test-copies-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                                else None))
os.environ.setdefault("HSISTUDY_SHM_DIR", str(_COPIES))

TINY = dict(height=24, width=40, n_train=6, n_val=3, n_test=3)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic HyKo2-like data set in the HS3-Bench layout (made once per session)."""
    from study.data.specs import get_spec
    from study.data.synthetic.generator import GeneratorConfig, generate_dataset

    out = tmp_path_factory.mktemp("tiny_hyko2")
    return generate_dataset(get_spec("hyko2"), out, GeneratorConfig(**TINY, seed=3))


@pytest.fixture(scope="session")
def clean_resume_store(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of ``test_resume.RESUME_ARGS`` (a subprocess, as the interrupted runs are): the store
    the SIGKILL and Ctrl+C tests compare their resumed stores with, made once per session."""
    import os
    import subprocess
    import sys

    from test_resume import RESUME_ARGS

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    clean = tmp_path_factory.mktemp("clean-resume") / "res"
    subprocess.run([sys.executable, "-m", "study.run", *RESUME_ARGS, "--data-root", str(tiny_root), "--results",
                    str(clean)], env=env, check=True, capture_output=True, timeout=600)
    return clean


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HyperSL saved in the released checkpoint layout (weights random, seed 0: the plumbing is under test)."""
    import torch

    from study.models.checkpoints import save_checkpoint
    from study.models.hypersl import build_hypersl

    torch.manual_seed(0)
    return save_checkpoint(build_hypersl("tiny"), tmp_path_factory.mktemp("bb") / "tiny_hypersl.pt")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread, as the trainables use (num_threads=1): on a busy 2-core box two threads of tiny
    matrix products spin-wait on each other and run ~10x slower (a HyperSL feature export ~100x)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """One real local Ray for the whole test session (2 CPUs, no dashboard)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _remove_node_copies():
    yield
    shutil.rmtree(_COPIES, ignore_errors=True)
