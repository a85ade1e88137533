"""The streaming data plane of a trial: batches read from HDF5 by DataLoader workers, in a given order.

Why streaming: a cell's data (HCV2: ~460 GB of cubes) cannot sit in a trial's
memory, and loading must overlap with compute to keep a GPU busy. A trial builds
one :class:`SplitStream` per split over a map-style :class:`SampleDataset`: each
DataLoader worker opens its own HDF5 handle lazily (``SplitRef.reader``; nothing
open is ever pickled), workers persist across epochs and prefetch, and batches
land in pinned memory when the trial has a GPU.

Why the order is given from outside: the epoch loops draw their sample order
from the trial's numpy Generator exactly as the in-memory loops did (a
permutation, then per-batch flips), and hand the loader a *plan* (the list of
batches of sample keys) for the epoch. The plan lives in the trial process (the
DataLoader's batch sampler), so the workers only ever see keys, and the results
of a seed do not depend on the number of workers.

A key is a sample index, or ``(index, row, col, height, width)`` for a window
(the random crops of a k > 0 trial): the worker reads the sample and cuts the window.

HCV2 files kept as PCA scores (``study.prepare --format pca``) are decoded by the reader
(exactly the cube files' values) unless ``LoaderSettings.decode_device`` is set (a CUDA
trial sets it): then the workers read the stored scores (D of 128 channels, float16 or
bfloat16 where stored so), those cross to the device, and :func:`decode_batch` expands them
there; the images equal the reader's within float32 rounding, the labels stay on the host.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from study.data.bundle import Split

Key = int | tuple[int, int, int, int, int]
#: loader workers per trial at most: HDF5 reads of one trial saturate a disk long before
MAX_WORKERS = 8
#: Bytes of batches a trial's loader may hold in flight (workers x prefetch x batch), default: HCV2 batches are
#: GBs (8 images of 256-d features: 5.5 GB), and 7 workers x 2 prefetched would be 77 GB of host memory per trial.
LOADER_MEMORY = 2 * 1024**3


class BatchStream(Protocol):
    """What the loops read a split through, whatever the placement: this module's :class:`SplitStream` or a
    resident stream (:mod:`study.data.resident`)."""

    def __len__(self) -> int: ...

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]: ...

    def batches(self, plan: Iterable[Sequence[Key]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def sequential(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def close(self) -> None: ...


class SampleDataset(Dataset):
    """Map-style dataset over one split: key -> (image (h, w, C) float32, labels (h, w) int64), as numpy;
    ``stored``: key -> (scores (h, w, D) as stored, coefficients, means, labels) of a pca file instead."""

    def __init__(self, split: Split, stored: bool = False) -> None:
        self.split, self.stored = split, stored

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: Key) -> tuple[np.ndarray, ...]:
        if self.stored:
            i, (r, c, h, w) = (key[0], key[1:]) if isinstance(key, tuple) else (key, (0, 0, None, None))
            scores, coeffs, means, labels = self.split.read_stored(int(i))  # type: ignore[attr-defined]
            rows, cols = slice(r, None if h is None else r + h), slice(c, None if w is None else c + w)
            return np.ascontiguousarray(scores[rows, cols]), coeffs, means, np.ascontiguousarray(labels[rows, cols])
        if isinstance(key, tuple):
            i, r, c, h, w = key
            image, labels = self.split.read(int(i))
            return np.ascontiguousarray(image[r : r + h, c : c + w]), np.ascontiguousarray(labels[r : r + h, c : c + w])
        return self.split.read(int(key))


class BatchPlan:
    """The DataLoader's batch sampler: yields the batches of keys set for the current epoch."""

    def __init__(self) -> None:
        self.batches: list[list[Key]] = []

    def __iter__(self) -> Iterator[list[Key]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class LoaderSettings:
    """How a trial's loaders run: worker processes, batches prefetched per worker, pinned memory."""

    workers: int = 0
    prefetch: int = 2
    pin_memory: bool = False
    memory_bytes: int = LOADER_MEMORY
    #: where pca split files are decoded: None in the reader (host, exact), else this device per batch
    decode_device: str | None = None

    def bounded(self, batch_bytes: int) -> tuple[int, int]:
        """(workers, prefetch per worker) holding at most ``memory_bytes`` of ``batch_bytes`` batches in flight,
        but always one batch: fewer workers first (each holds >= 1), then less prefetch. (0, 0) reads in-process."""
        if self.workers <= 0:
            return 0, 0
        in_flight = max(1, self.memory_bytes // max(1, batch_bytes))
        workers = min(self.workers, in_flight)
        return workers, max(1, min(self.prefetch, in_flight // workers))

    @classmethod
    def for_trial(cls, config: Mapping[str, Any], device: torch.device) -> LoaderSettings:
        """Workers from the trial's CPUs (``loader_workers``, else ``num_threads`` - 1: one CPU computes;
        1 CPU -> 0, reads in the trial process), pinned memory on CUDA."""
        n = config.get("loader_workers")
        if n is None:
            cpus = int(float(config.get("num_threads") or os.environ.get("OMP_NUM_THREADS") or 1))
            n = min(MAX_WORKERS, max(0, cpus - 1))
        memory = config.get("loader_memory_gib")
        return cls(workers=int(n), prefetch=int(config.get("loader_prefetch", 2)), pin_memory=device.type == "cuda",
                   memory_bytes=LOADER_MEMORY if memory is None else int(float(memory) * 1024**3),
                   decode_device=str(device) if device.type == "cuda" else None)


def batch_bytes(split: Split, batch_images: int) -> int:
    """Host bytes of a batch of ``batch_images`` of the split's largest images: float32 channels + int64 labels."""
    pixels = max((h * w for h, w in split.shapes), default=0)
    return batch_images * pixels * (4 * int(split.n_channels) + 8)


class SplitBatches:
    """What every stream of one split shares, whatever the placement: its length, names and shapes come from
    ``self.split``, and the evaluation order is a plan of consecutive batches for the subclass's ``batches``."""

    split: Split

    def __len__(self) -> int:
        return len(self.split)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.split.names)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.split.shapes)

    def batches(self, plan: Iterable[Sequence[Key]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def sequential(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in stored order, ``batch_size`` samples per batch (evaluation)."""
        n = len(self)
        return self.batches([list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)])


class SplitStream(SplitBatches):
    """One split read through a DataLoader; :meth:`batches` iterates a plan of keys in its order."""

    def __init__(self, split: Split, settings: LoaderSettings, *, persistent: bool = True,
                 batch_images: int = 1) -> None:
        """``batch_images``: the largest batch this stream will be asked for (bounds the loader's memory)."""
        self.split, self.settings = split, settings
        self.plan = BatchPlan()
        #: decode pca scores on this device per batch (None: the reader decodes)
        self.decode_device = (settings.decode_device if getattr(split, "storage_format", "cube") == "pca"
                              else None)
        workers, prefetch = settings.bounded(batch_bytes(split, batch_images))
        self.workers, self.prefetch = workers, prefetch
        extra: dict[str, Any] = {}
        if workers > 0:
            extra = {"prefetch_factor": prefetch, "persistent_workers": persistent,
                     "worker_init_fn": _one_thread}
        # its own generator: an iterator draws a worker base seed, which must not advance torch's global RNG
        # (dropout masks of the trial would change with the loader; workers draw nothing random)
        if self.decode_device is not None:
            extra["collate_fn"] = collate_stored
        self.loader = DataLoader(SampleDataset(split, stored=self.decode_device is not None), batch_sampler=self.plan,
                                 num_workers=workers, pin_memory=settings.pin_memory,
                                 generator=torch.Generator().manual_seed(0), **extra)

    def batches(self, plan: Iterable[Sequence[Key]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images (B, h, w, C) float32, labels (B, h, w) int64) CPU tensors (pinned on CUDA), in plan order;
        with a ``decode_device`` the images are decoded there (on that device), the labels stay on the host."""
        self.plan.batches = [list(b) for b in plan]
        if not self.plan.batches:
            return iter(())
        if self.decode_device is None:
            return iter(self.loader)
        device = torch.device(self.decode_device)
        return ((decode_batch(scores, coeffs, means, device), labels) for scores, coeffs, means, labels in self.loader)

    def close(self) -> None:
        """Stop this loader's persistent workers now (they would otherwise live until garbage collection)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


def collate_stored(items: list[tuple[np.ndarray, ...]]) -> tuple[torch.Tensor, ...]:
    """A batch of stored pca samples: scores (B, h, w, D) in their stored dtype (bfloat16 bits as bfloat16),
    coefficients (B, D, C), means (B, C), labels (B, h, w)."""
    scores, coeffs, means, labels = (np.stack(part) for part in zip(*items, strict=True))
    s = torch.from_numpy(scores.view(np.int16)).view(torch.bfloat16) if scores.dtype == np.uint16 else \
        torch.from_numpy(scores)
    return s, torch.from_numpy(coeffs), torch.from_numpy(means), torch.from_numpy(labels)


def decode_batch(scores: torch.Tensor, coeffs: torch.Tensor, means: torch.Tensor,
                 device: torch.device) -> torch.Tensor:
    """``scores @ coeffs + means`` per image on ``device``, float32: (B, h, w, D), (B, D, C), (B, C) -> (B, h, w, C).

    D multiply-adds in the order of the host's matrix product (term 0 first, the means last), elementwise:
    no TF32 whatever the matmul precision setting, only the scores (D of C channels) cross to the device."""
    s = to_device(scores, device).float()
    c, m = to_device(coeffs, device), to_device(means, device)
    c = c[:, None, None]  # (B, 1, 1, D, C)
    out = s[..., 0:1] * c[..., 0, :]
    for k in range(1, s.shape[-1]):
        out.addcmul_(s[..., k : k + 1], c[..., k, :])
    return out.add_(m[:, None, None, :])


def _one_thread(_: int) -> None:
    """Loader workers read and copy; torch threads there would only compete with the trial's compute."""
    torch.set_num_threads(1)


class Streams:
    """A trial's streams of one bundle: train and val built once (persistent workers), test on demand."""

    def __init__(self, train: Split, val: Split, test: Split, settings: LoaderSettings, *,
                 train_batch: int = 1, eval_batch: int = 1) -> None:
        self.settings, self.eval_batch = settings, eval_batch
        self.train = SplitStream(train, settings, batch_images=train_batch)
        self.val = SplitStream(val, settings, batch_images=eval_batch)
        self._test = test

    def test(self) -> SplitStream:
        """The test split's stream, used once at the end of the final phase (no persistent workers)."""
        return SplitStream(self._test, self.settings, persistent=False, batch_images=self.eval_batch)

    def __enter__(self) -> Streams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the persistent workers (also when a trial is stopped or fails mid-epoch)."""
        for s in (self.train, self.val):
            with contextlib.suppress(Exception):
                s.close()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to ``device``; non-blocking from pinned memory so the copy overlaps with queued compute."""
    return x.to(device, non_blocking=x.is_pinned()) if x.device != device else x


def autocast(device: torch.device, mode: str = "auto") -> contextlib.AbstractContextManager:
    """The forward-pass precision: bf16 autocast on CUDA (``auto``), fp32 on CPU; ``bf16`` forces it
    (a CPU test of the autocast path), ``off`` disables it. Losses and metrics are computed in fp32."""
    if mode not in ("auto", "bf16", "off"):
        raise ValueError(f"autocast must be auto, bf16 or off, got {mode!r}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
