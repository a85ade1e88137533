"""What a trainable receives: the cell's training subset plus the full val and test splits.

A :class:`DataBundle` travels to Ray workers once per cell through
``tune.with_parameters`` (the object store), never through ``config``, so a
trial's config stays small, hashable and printable. Backbone weights are not
data: a trial reads them from the path in its config (``backbone_path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.data.h5reader import H5Split
from study.data.specs import DatasetSpec
from study.data.subsets import SubsetManifest
from study.errors import DataValidationError


@dataclass(frozen=True)
class SplitArrays:
    """One split in memory: images (N, H, W, C) float32, labels (N, H, W) int64."""

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, H, W, C) and labels (B, H, W) of the given sample indices."""
        return self.images[idx], self.labels[idx]


@dataclass(frozen=True)
class DataBundle:
    """Data of one (dataset, fraction) cell, identical for every strategy at that fraction."""

    dataset: str
    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    wavelengths: np.ndarray  # (C,) nm
    subset: SubsetManifest
    source: str  # "synthetic:<dir>" or the real data root, recorded in every row
    backbone_hash: str | None = None  # set when the images are frozen-backbone features, not spectra
    #: The raw spectra of the same samples, for feature bundles whose trials may train the backbone (freeze
    #: depth k > 0, which recomputes features in the trial); k = 0 trials ignore it.
    raw: DataBundle | None = None

    @property
    def n_bands(self) -> int:
        return int(self.train.images.shape[-1])


def load_split(split: H5Split, names: tuple[str, ...] | None = None) -> SplitArrays:
    """Read (a subset of) one split into memory, checking every sample it returns."""
    chosen = tuple(names) if names is not None else tuple(split.names)
    if not chosen:
        raise DataValidationError(f"{split.path}: no samples selected; a split needs at least one image")
    images, labels = split.load(chosen)
    return SplitArrays(images=images, labels=labels, names=chosen)


def make_bundle(
    spec: DatasetSpec,
    splits: dict[str, H5Split],
    subset: SubsetManifest,
    source: str | Path,
    backbone_hash: str | None = None,
) -> DataBundle:
    """Assemble a cell's bundle: the subset of train, the complete val and test splits."""
    return DataBundle(
        dataset=spec.name,
        train=load_split(splits["train"], subset.names),
        val=load_split(splits["val"]),
        test=load_split(splits["test"]),
        wavelengths=np.asarray(splits["train"].wavelengths, dtype=np.float32),
        subset=subset,
        source=str(source),
        backbone_hash=backbone_hash,
    )
