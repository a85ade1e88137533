"""Where a trial's splits live while it trains (``--data-placement``): the rule ``auto`` follows, the room it
reads, and the streams each placement opens.

- ``device``: held in the trial's device memory (:mod:`study.data.resident`); nothing crosses per batch on CUDA;
- ``memory``: one host copy per node in shared memory, shared by every trial there (:mod:`study.data.shared_copy`);
- ``stream``: read per batch from the HDF5 files by DataLoader workers (:mod:`study.data.stream`);
- ``auto``: :func:`choose`. Every placement gives the same batches to the bit, so the choice is a runtime
  setting: it keys no id, and rows say which one a trial used (``data_placement``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from study.data.bundle import Split
from study.data.resident import ResidentStreams, copy_key, layout_of
from study.data.shared_copy import copy_dir, present_bytes
from study.data.stream import LoaderSettings, Streams

PLACEMENTS = ("auto", "device", "memory", "stream")
#: ``device``: the splits plus the model's footprint take at most this share of the trial's GPU memory; the rest
#: is room for activations, cuDNN workspaces and the allocator's cache
DEVICE_FRACTION = 0.5
#: ``memory``: the splits not yet on the node take at most this share of its free memory and of free /dev/shm
MEMORY_FRACTION = 0.5
#: the optimiser's share of the footprint per trainable parameter byte: its gradient and AdamW's two moments
OPTIMIZER_FACTOR = 3
_UNLIMITED = 2**60
GIB = 1024**3


@dataclass(frozen=True)
class Choice:
    """The placement a trial uses and the one-line reason."""

    placement: str
    reason: str


@dataclass(frozen=True)
class DeviceRoom:
    """A CUDA trial's GPU: its share of the device's memory and the model's measured footprint there (bytes)."""

    share_bytes: int
    footprint_bytes: int


@dataclass(frozen=True)
class NodeRoom:
    """The node's host room: free memory (cgroup-aware), free space of the shared-copy folder, bytes of this
    trial's copies already there, and ``--loader-memory-gib`` when given (bytes)."""

    available_bytes: int
    shm_free_bytes: int
    present_bytes: int = 0
    loader_cap_bytes: int | None = None


def _gib(n: float) -> str:
    """A size for the reason line: GiB, or MiB below one GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def choose(requested: str, data_bytes: int, gpu: DeviceRoom | None, node: NodeRoom) -> Choice:
    """The placement of a trial whose splits take ``data_bytes`` when held (``gpu``: None on a CPU).

    ``auto``:

    1. ``device`` on CUDA when splits + footprint <= DEVICE_FRACTION x the trial's GPU share, where the footprint
       is what the trial holds on the device once its model is there (measured) plus OPTIMIZER_FACTOR x its
       trainable parameters' bytes (gradients, AdamW's moments: allocated at the first step);
    2. else ``memory`` when the bytes not yet on the node <= MEMORY_FRACTION x the node's free memory (the
       smaller of MemAvailable and the cgroup's limit less its use) and x the free space of /dev/shm, and the
       splits <= ``--loader-memory-gib`` when given;
    3. else ``stream``.

    An explicit ``device`` that cannot fit the GPU share at all raises ValueError (one line, with the fix).
    """
    if requested not in PLACEMENTS:
        raise ValueError(f"data_placement must be one of {', '.join(PLACEMENTS)}, got {requested!r}")
    if requested != "auto":
        if requested == "device" and gpu is not None and data_bytes + gpu.footprint_bytes > gpu.share_bytes:
            raise ValueError(f"--data-placement device: the splits ({_gib(data_bytes)}) and the model "
                             f"({_gib(gpu.footprint_bytes)}) exceed the trial's GPU share ({_gib(gpu.share_bytes)});"
                             " use --data-placement auto or memory")
        return Choice(requested, f"asked for (--data-placement {requested})")
    if gpu is not None:
        room = DEVICE_FRACTION * gpu.share_bytes
        need = data_bytes + gpu.footprint_bytes
        if need <= room:
            return Choice("device", f"the splits ({_gib(data_bytes)}) and the model ({_gib(gpu.footprint_bytes)}) "
                          f"fit in {DEVICE_FRACTION:g} of the trial's GPU share ({_gib(gpu.share_bytes)})")
        gpu_note = f"; {_gib(need)} of splits and model exceed {DEVICE_FRACTION:g} of the GPU share"
    else:
        gpu_note = ""
    missing = max(0, data_bytes - node.present_bytes)
    room = MEMORY_FRACTION * min(node.available_bytes, node.shm_free_bytes)
    if node.loader_cap_bytes is not None and data_bytes > node.loader_cap_bytes:
        return Choice("stream", f"the splits ({_gib(data_bytes)}) exceed --loader-memory-gib "
                      f"({_gib(node.loader_cap_bytes)}){gpu_note}")
    if missing <= room:
        there = f", {_gib(node.present_bytes)} of it on the node already" if node.present_bytes else ""
        return Choice("memory", f"the splits ({_gib(data_bytes)}{there}) fit in {MEMORY_FRACTION:g} of the node's "
                      f"free memory ({_gib(node.available_bytes)}) and /dev/shm ({_gib(node.shm_free_bytes)})"
                      f"{gpu_note}")
    return Choice("stream", f"the splits ({_gib(data_bytes)}) exceed {MEMORY_FRACTION:g} of the node's free "
                  f"memory ({_gib(node.available_bytes)}) or /dev/shm ({_gib(node.shm_free_bytes)}){gpu_note}")


def held_bytes(splits: Sequence[Split]) -> tuple[int, int]:
    """(bytes the splits take when held, bytes of their shared copies already on this node)."""
    total = present = 0
    for split in splits:
        lay = layout_of(split)
        total += lay.nbytes
        key = copy_key(split, lay)
        present += present_bytes(key) if key is not None else 0
    return total, present


def node_room(loader_memory_gib: float | None = None) -> NodeRoom:
    """This node's room for shared copies now (see :class:`NodeRoom`)."""
    folder = copy_dir()
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    shm_free = shutil.disk_usage(probe).free
    cap = None if loader_memory_gib is None else int(float(loader_memory_gib) * GIB)
    return NodeRoom(min(mem_available(), cgroup_available()), shm_free, 0, cap)


def mem_available() -> int:
    """MemAvailable of /proc/meminfo in bytes (unlimited where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _UNLIMITED


def cgroup_available(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")) -> int:
    """The smallest (limit - anonymous and shared memory in use) of this process's memory cgroup and its parents,
    v1 or v2 (page cache is reclaimable: not counted as used); unlimited when there is no limit."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return _UNLIMITED
    best = _UNLIMITED
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, limit_file, keys = root, "memory.max", ("anon", "shmem")
        elif "memory" in controllers.split(","):
            base, limit_file, keys = root / "memory", "memory.limit_in_bytes", ("total_rss", "total_shmem")
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            best = min(best, _cgroup_room(folder, limit_file, keys))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return best


def _cgroup_room(folder: Path, limit_file: str, keys: tuple[str, str]) -> int:
    try:
        text = (folder / limit_file).read_text().strip()
        limit = _UNLIMITED if text == "max" else int(text)
        if limit >= _UNLIMITED:
            return _UNLIMITED
        stat = dict(ln.split() for ln in (folder / "memory.stat").read_text().splitlines() if ln.count(" ") == 1)
        return max(0, limit - sum(int(stat.get(k, 0)) for k in keys))
    except (OSError, ValueError):
        return _UNLIMITED


def open_streams(train: Split, val: Split, test: Split, settings: LoaderSettings, placement: str,
                 device: torch.device, *, train_batch: int = 1, eval_batch: int = 1) -> Streams | ResidentStreams:
    """The trial's streams for a resolved placement (``stream``: today's :class:`Streams`, untouched)."""
    if placement == "stream":
        return Streams(train, val, test, settings, train_batch=train_batch, eval_batch=eval_batch)
    return ResidentStreams(train, val, test, settings, placement, device)

