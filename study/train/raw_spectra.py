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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from study.data.bundle import DataBundle, LazyImages, Split
from study.models.hypersl_partial import PartialHyperSL, chunks_per_image
from study.train.loop import EpochFn, TrainSettings, pick_device, train_epoch

#: Default side of the random training crop of a k > 0 HyperSL-RU-Net trial (pixels).
CROP = 128


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
    # the statistics walk every raw image, one at a time, read from its file (never held: LazyImages)
    backbone.set_sources([LazyImages(s.base) for s in (train, val, test)], chunk_size)  # type: ignore[list-item]
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
