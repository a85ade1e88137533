"""The raw-spectra side of a HyperSL freeze depth k > 0 trial: chunk ids, crops, the trial's backbone.

A k > 0 trial runs HyperSL itself on the raw spectra of the same samples as its
feature bundle (``DataBundle.raw``), from the checkpoint at
``config["backbone_path"]``, with the export's BatchNorm mode and chunk size
(``config["bn_mode"]``, ``config["chunk_size"]``). Every pixel carries the id of
the export chunk it belonged to as one extra, last channel, so flips, crops and
batching in the shared loops move it with the pixel. Why raw spectra and not a
token cache, and what it costs: ``docs/freeze_depth.md``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from study.data.bundle import DataBundle, LazyImages, Split
from study.hashing import json_digest
from study.models.hypersl_partial import PartialHyperSL, chunks_per_image
from study.train.devices import pick_device
from study.train.loop import EpochFn, train_epoch
from study.train.settings import TrainSettings

#: Default side of the random training crop of a k > 0 HyperSL-RU-Net trial (pixels).
CROP = 128
#: Folder of the cached chunk-statistics tables, inside the features' cache folder
STATS_FOLDER = "chunk-stats"
#: Bump when the statistics a (backbone, source, chunk size) gives change
STATS_VERSION = 1


def chunk_id_map(n_images: int, height: int, width: int, chunk_size: int, offset: int = 0) -> np.ndarray:
    """Export chunk of every pixel, (N, H, W) int32: image i, raster pixel p -> offset + i*cpi + p // chunk_size."""
    cpi = chunks_per_image(height, width, chunk_size)
    within = (np.arange(height * width) // chunk_size).reshape(height, width)
    ids = offset + np.arange(n_images)[:, None, None] * cpi + within[None]
    if ids.size and int(ids.max()) >= 2**24:
        raise ValueError("more than 2^24 export chunks: chunk ids travel as float32 and would lose precision")
    return ids.astype(np.int32)


@dataclass(frozen=True)
class ChunkedSplit:
    """Raw spectra whose samples carry every pixel's export chunk id as one extra, last channel (float32).

    A :class:`study.data.bundle.Split` over ``base``: ids are computed per image from
    its index (``offsets[i]``, the first chunk of image i, numbered across train,
    val, test in that order), so nothing but the base reference and one int per
    image travels to loader workers.
    """

    base: Split
    chunk_size: int
    offsets: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.base.names)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.base.shapes)

    @property
    def n_channels(self) -> int:
        return int(self.base.n_channels) + 1

    def __len__(self) -> int:
        return len(self.base)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self.base.read(i)
        h, w = labels.shape
        ids = chunk_id_map(1, h, w, self.chunk_size, self.offsets[i])[0]
        return np.concatenate([image, ids[..., None].astype(np.float32)], axis=-1), labels

    def identity(self) -> dict[str, object] | None:
        """The base split's identity plus the chunk ids' numbering (keys a node's shared copy); None without one."""
        base = getattr(self.base, "identity", None)
        if not callable(base):
            return None
        return {"base": base(), "chunk_size": self.chunk_size, "offsets": list(self.offsets)}

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stacked samples (B, H, W, C+1) and labels (B, H, W) of ``idx`` (tests; trials stream)."""
        pairs = [self.read(int(i)) for i in idx]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def chunked_splits(raw: DataBundle, chunk_size: int) -> list[ChunkedSplit]:
    """train, val, test of ``raw`` with chunk ids numbered across the three splits in that order."""
    splits, offset = [], 0
    for split in (raw.train, raw.val, raw.test):
        offsets = []
        for h, w in split.shapes:
            offsets.append(offset)
            offset += chunks_per_image(h, w, chunk_size)
        if offset > 2**24:
            raise ValueError("more than 2^24 export chunks: chunk ids travel as float32 and would lose precision")
        splits.append(ChunkedSplit(split, chunk_size, tuple(offsets)))
    return splits


@dataclass(frozen=True)
class StatsCache:
    """A frozen stem's chunk-statistics rows of each source split, one file each, next to the k = 0 features.

    Every k > 0 trial of a study needs the same rows (they depend on the backbone's weights, the split's raw
    images and the chunk size, not on the trial): without the cache each one read every raw image of train,
    val and test through the stem (HCV2 val + test: ~131 GB per trial). A file's name is the digest of
    (backbone hash, source file, its size and mtime, the split's image names, chunk size); it is written under
    a temporary name and renamed, so concurrent trials never read a partial one. A folder that cannot be
    written only costs the next trial the recomputation."""

    folder: Path
    keys: tuple[str, ...]

    def path(self, i: int) -> Path:
        return self.folder / f"{self.keys[i]}.pt"

    def load(self, i: int, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Source ``i``'s rows, or None when not stored yet (or not of ``shape``: recomputed and replaced)."""
        try:
            rows = torch.load(self.path(i), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - missing or unreadable: recomputed and written again
            return None
        return rows if isinstance(rows, torch.Tensor) and tuple(rows.shape) == shape else None

    def save(self, i: int, rows: torch.Tensor) -> None:
        path = self.path(i)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(rows.detach().cpu().clone(), tmp)  # a copy: a view would save the whole table
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            print(f"[hsistudy] chunk statistics not cached ({exc}); the next trial recomputes them",
                  file=sys.stderr, flush=True)


def stats_cache(config: Mapping[str, Any], data: DataBundle, sources: list[Split]) -> StatsCache | None:
    """The cache of ``sources`` (the raw splits, in chunk-id order) in the folder of ``data``'s k = 0 features
    (``config["feature_folder"]`` when the trial computes them: the folder the cache would hold them in); None
    when the features or the raw splits are not files (in-memory bundles: tests, benchmarks)."""
    feature_path = getattr(data.train, "path", None)
    folder = config.get("feature_folder") or (Path(feature_path).parent if feature_path is not None else None)
    if folder is None or not config.get("backbone_hash"):
        return None
    keys = []
    for split in sources:
        path = getattr(split, "path", None)
        if path is None:
            return None
        st = Path(path).stat()
        keys.append(json_digest({"backbone": config["backbone_hash"], "source": str(path),
                                 "source_stat": f"{st.st_size}:{st.st_mtime_ns}", "names": list(split.names),
                                 "chunk_size": int(config["chunk_size"]), "version": STATS_VERSION}))
    return StatsCache(Path(folder) / STATS_FOLDER, tuple(keys))


def build_backbone(config: Mapping[str, Any], data: DataBundle) -> tuple[PartialHyperSL, DataBundle]:
    """The trial's HyperSL (last ``freeze_depth`` groups trainable, statistics ready, on the trial's device)
    and a bundle of :class:`ChunkedSplit` raw spectra with the feature bundle's identity."""
    from study.models.checkpoints import load_hypersl

    path = config.get("backbone_path")
    if data.raw is None or not path:
        raise ValueError("freeze_depth > 0 needs the raw spectra (DataBundle.raw) and the HyperSL checkpoint "
                         "(config['backbone_path']); the driver provides both when k > 0 is searched, "
                         "or set freeze_depth=0")
    chunk_size = int(config["chunk_size"])
    backbone = PartialHyperSL(load_hypersl(path), int(config["freeze_depth"]), data.raw.wavelengths,
                              str(config["bn_mode"]))
    train, val, test = chunked_splits(data.raw, chunk_size)
    # the statistics walk every raw image, one at a time, read from its file (never held: LazyImages), once per
    # study while the stem is frozen: later trials read them from the cache
    sources = [s.base for s in (train, val, test)]
    backbone.set_sources([LazyImages(s) for s in sources], chunk_size,  # type: ignore[list-item]
                         cache=stats_cache(config, data, sources))
    backbone.to(pick_device())
    backbone.refresh_stats()
    return backbone, replace(data, train=train, val=val, test=test)


def with_fresh_stats(fn: Callable[..., Any], backbone: PartialHyperSL) -> Callable[..., Any]:
    """``fn`` (an epoch or eval function, model first) preceded by a statistics refresh when the stem trains
    in chunk mode; otherwise ``fn`` itself (the table of a frozen stem never changes)."""
    if not (backbone.stem_trainable and backbone.bn_mode == "chunk"):
        return fn

    def wrapped(*args: Any) -> Any:
        backbone.refresh_stats()
        return fn(*args)

    return wrapped


def crop_windows(split: Split, crop: int, gen: np.random.Generator) -> list[tuple[int, int, int, int]] | None:
    """One random ``crop``² window (row, col, h, w) per image, drawn from ``gen`` (rows, then cols, as the
    in-memory crops did); None when the crop covers the whole image (nothing drawn)."""
    h, w = split.shapes[0]
    n = len(split)
    ch, cw = min(crop, h), min(crop, w)
    if (ch, cw) == (h, w):
        return None
    rows, cols = gen.integers(0, h - ch + 1, size=n), gen.integers(0, w - cw + 1, size=n)
    return [(int(r), int(c), ch, cw) for r, c in zip(rows, cols, strict=True)]


def crop_epoch(config: Mapping[str, Any], settings: TrainSettings) -> EpochFn:
    """The k > 0 image epoch: :func:`~study.train.loop.train_epoch` on one random ``crop_size``² crop per
    training image (the crop bounds per-step compute, ``docs/freeze_depth.md``)."""
    crop = int(config.get("crop_size", CROP))
    if crop < 1:
        raise ValueError(f"crop_size must be >= 1 pixel, got {crop}")

    def epoch_fn(model, opt, loss_fn, split, gen, device):  # noqa: ANN001, ANN202 - loop.EpochFn
        windows = crop_windows(split, crop, gen)  # drawn before the epoch's order, as the in-memory crops were
        return train_epoch(model, opt, loss_fn, split, settings, gen, device, windows=windows)

    return epoch_fn
