"""The local Ray's workers get one malloc arena and hide the GPUs from zero-GPU workers
(study.orchestration.ray_setup.trial_env): Tune trains in a thread of its actor, and Ray 2.60 leaves
CUDA_VISIBLE_DEVICES alone for a worker that requests no GPU. That ``init_ray`` passes it to the local Ray is
checked in tests/test_cli.py with the dashboard settings."""

from __future__ import annotations

import pytest

from study.orchestration import trial_env

OVERRIDE = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"


def test_one_arena_by_default_and_the_user_s_value_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert trial_env()["MALLOC_ARENA_MAX"] == "1"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert trial_env()["MALLOC_ARENA_MAX"] == "4"


def test_zero_gpu_workers_get_no_visible_gpu_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray reads this in the worker (``set_visible_accelerator_ids``): 1 sets CUDA_VISIBLE_DEVICES="" for zero GPUs."""
    monkeypatch.delenv(OVERRIDE, raising=False)
    assert trial_env()[OVERRIDE] == "1"
    monkeypatch.setenv(OVERRIDE, "0")
    assert trial_env()[OVERRIDE] == "0"


def test_the_override_is_the_variable_ray_reads() -> None:
    from ray._private import accelerators

    assert accelerators.RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO_ENV_VAR == OVERRIDE
