"""What Ray gave this process: its GPU ids and its GPU share, and the memory cap that makes a share real.

Ray 2.60 no longer clears ``CUDA_VISIBLE_DEVICES`` for a task or actor that requests no GPU
(``ray._private.utils.set_visible_accelerator_ids`` skips it unless ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1``):
torch in a CPU-only trial on a GPU node sees every GPU of the node. Inside a Ray worker the device is
therefore Ray's assignment, not ``torch.cuda.is_available()``; outside Ray (a driver, a script, a test)
it stays the user's (``CUDA_VISIBLE_DEVICES``). A fractional share (0.25, 0.5) is accounting only in Ray:
:func:`limit_gpu_memory` caps the trial's caching allocator at its share of the device.

Nothing here imports Ray: a process that has not imported it is not a Ray worker.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

#: device memory a CUDA process holds outside its caching allocator (context, kernels, cuBLAS/cuDNN handles),
#: left out of a fractional share's cap so that the trials sharing a GPU fit on it together (an estimate, not
#: measured on a GPU yet)
CUDA_CONTEXT_BYTES = 1024**3


def ray_worker_context() -> Any | None:
    """Ray's runtime context when this process is a Ray worker (a trial actor, a task), else None.

    A driver (``SCRIPT_MODE``) is not a worker: its device stays the user's choice."""
    ray = sys.modules.get("ray")  # a Ray worker has imported ray; checking costs nothing and starts nothing
    if ray is None or not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    return ctx if ctx.worker.mode == ray.WORKER_MODE else None


def ray_gpu_ids() -> list[str] | None:
    """The GPU ids Ray assigned to this worker ([] for a zero-GPU task or trial); None outside a Ray worker."""
    if ray_worker_context() is None:
        return None
    import ray

    return [str(i) for i in ray.get_gpu_ids()]


def ray_gpu_share() -> float | None:
    """The GPU share Ray reserved for this worker (0.25, 1.0, 0.0 without GPU); None outside a Ray worker."""
    ctx = ray_worker_context()
    if ctx is None:
        return None
    return float(ctx.get_assigned_resources().get("GPU", 0.0))


def ray_cpus() -> int | None:
    """Whole CPUs Ray reserved for this worker (a GPU trial's share of its node's CPUs); None outside a Ray worker."""
    ctx = ray_worker_context()
    if ctx is None:
        return None
    return int(ctx.get_assigned_resources().get("CPU", 0.0))


def release_device_memory(device: str | torch.device) -> bool:
    """Give a CUDA process's cached memory back: the device caching allocator's unused blocks
    (``torch.cuda.empty_cache``) and the pinned host blocks of its host caching allocator
    (``torch.accelerator.empty_host_cache``, power-of-two blocks that are otherwise kept for the life of the
    process: a Ray actor reused for the next trial). Returns whether anything was released (CUDA in use)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_initialized():
        return False
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.accelerator.empty_host_cache()
    return True


def limit_gpu_memory(device: torch.device, share: float | None = None) -> float | None:
    """Cap this process's CUDA caching allocator at its fractional GPU share; returns the fraction set, or None.

    ``share`` defaults to Ray's reservation (:func:`ray_gpu_share`). Only a share below one GPU on a CUDA
    device is capped, at ``share`` of the device less :data:`CUDA_CONTEXT_BYTES` (never below half the
    share): four 0.25 trials then fit on one GPU together, and a trial that outgrows its share fails
    itself with an out-of-memory error instead of its neighbours."""
    if device.type != "cuda":
        return None
    if share is None:
        share = ray_gpu_share()
    if share is None or not 0 < share < 1:
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = float(max(share / 2, share - CUDA_CONTEXT_BYTES / total))
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


def deterministic_kernels(device: torch.device) -> bool:
    """``--deterministic`` on CUDA: deterministic kernels (cuBLAS workspace, cuDNN, ``use_deterministic_algorithms``).

    On a CPU torch's kernels already give the same numbers run to run at a fixed thread count (every trial sets
    its own), so nothing is switched there. ``warn_only``: an op without a deterministic CUDA kernel warns
    instead of failing the trial. ``CUBLAS_WORKSPACE_CONFIG`` must be set before the process's first cuBLAS
    call: a trial calls this before it builds its model. Returns whether anything was switched.
    """
    if device.type != "cuda":
        return False
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    return True


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) before a model is built, so its initial weights follow the seed."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device() -> torch.device:
    """CUDA when Ray (or the user) gave this process a GPU, else CPU.

    Inside a Ray worker only Ray's assignment counts: Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` alone for a
    zero-GPU trial or task, so torch sees the node's GPUs there (:mod:`study.train.devices`). Outside Ray:
    CUDA whenever torch sees one."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    gpu_ids = ray_gpu_ids()
    return torch.device("cuda" if gpu_ids is None or gpu_ids else "cpu")


def ray_node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray), recorded so results show placement."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - placement is informative only
        return None
