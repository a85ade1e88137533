"""What a trainable receives: where a cell's samples are and which ones it uses, never the arrays.

A :class:`DataBundle` travels to Ray workers once per cell through
``tune.with_parameters`` (the object store). It holds one :class:`SplitRef` per
split (file path + the manifest's sample names + their shapes: a few KB even for
HCV2), so a trial's memory does not grow with the data set: trials stream their
batches from the HDF5 files (:mod:`study.data.stream`). :class:`SplitArrays` is
the in-memory form of the same interface, for tests and benchmarks that make
their data on the fly. Backbone weights are not data either: a trial reads them
from the path in its config (``backbone_path``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from study.data.h5reader import H5Split
from study.data.specs import DatasetSpec
from study.data.subsets import SubsetManifest
from study.errors import DataValidationError


class Split(Protocol):
    """A split a trial can stream: sample names, their (H, W), channels per pixel, one sample at a time."""

    names: tuple[str, ...]

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]: ...

    @property
    def n_channels(self) -> int: ...

    def __len__(self) -> int: ...

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class SplitArrays:
    """One split in memory: images (N, H, W, C) float32, labels (N, H, W) int64 (tests, benchmarks)."""

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(self.images.shape[1]), int(self.images.shape[2])) for _ in range(len(self)))

    @property
    def n_channels(self) -> int:
        return int(self.images.shape[-1])

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, C) float32 and labels (H, W) int64 of sample ``i``."""
        return np.asarray(self.images[i], dtype=np.float32), np.asarray(self.labels[i], dtype=np.int64)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, H, W, C) and labels (B, H, W) of the given sample indices."""
        return self.images[idx], self.labels[idx]


#: per-process readers: (path, dataset) -> (pid, H5Split); a forked loader worker builds its own
_READERS: dict[tuple[str, str], tuple[int, H5Split]] = {}


@dataclass(frozen=True)
class SplitRef:
    """Where one split's samples are: an HS3-Bench-layout file (raw cube or feature cache) and the names used.

    Pickles as a path and names; the HDF5 handle is opened lazily by whichever
    process reads (a DataLoader worker, the trial itself), once per process.
    """

    path: str
    spec: DatasetSpec
    names: tuple[str, ...]
    sample_shapes: tuple[tuple[int, int], ...]
    channels: int
    storage_format: str = "cube"  # "pca": the stream may decode on the device (read_stored)
    #: the narrowest float type holding the file's image values exactly (float16 / bfloat16 files, float16 feature
    #: caches): what a resident copy keeps (study.data.resident); the reads return float32 whatever it is
    value_dtype: str = "float32"

    def __len__(self) -> int:
        return len(self.names)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        return self.sample_shapes

    @property
    def n_channels(self) -> int:
        return self.channels

    def reader(self) -> H5Split:
        """This process's reader of the file (structure checked once per process, values per sample read)."""
        key, pid = (self.path, self.spec.name), os.getpid()
        hit = _READERS.get(key)
        if hit is None or hit[0] != pid:
            _READERS[key] = hit = (pid, H5Split(self.path, self.spec, check_values=False))
        return hit[1]

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, C) float32 and remapped labels (H, W) int64 of sample ``i`` (checked as it is read)."""
        return self.reader().read(self.names[i])

    def read_stored(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``i`` of a pca file as stored: scores, coefficients, means, remapped labels (H5Split.read_stored)."""
        return self.reader().read_stored(self.names[i])

    def identity(self) -> dict[str, object]:
        """What names these samples' values: the file (path, size, modification time), the dataset's label remap,
        the names. A node's shared copy of the split is keyed by it (study.data.shared_copy)."""
        st = Path(self.path).stat()
        return {"path": self.path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "spec": self.spec.name,
                "names": list(self.names), "format": self.storage_format}


def split_ref(split: H5Split, names: Sequence[str] | None = None) -> SplitRef:
    """A reference to (a subset of) an opened split; every name must be in the file."""
    chosen = tuple(names) if names is not None else tuple(split.names)
    if not chosen:
        raise DataValidationError(f"{split.path}: no samples selected; a split needs at least one image")
    index = {n: i for i, n in enumerate(split.names)}
    missing = [n for n in chosen if n not in index]
    if missing:
        raise DataValidationError(f"{split.path}: no sample named {missing[0]!r} ({len(missing)} missing of "
                                  f"{len(chosen)}); fix: use a subset manifest made from this file")
    shapes = tuple(split.shapes[index[n]] for n in chosen)
    return SplitRef(str(Path(split.path).absolute()), split.spec, chosen, shapes, int(split.n_channels),
                    split.storage_format, value_dtype(split.storage_dtype, split.stored_dtypes))


def value_dtype(storage_dtype: str, stored: frozenset[str] | set[str]) -> str:
    """The narrowest float type that holds a file's image values exactly: its ``storage_dtype`` (bfloat16, float16),
    float16 when every sample's image is stored as float16 (a feature cache), else float32."""
    if storage_dtype in ("bfloat16", "float16"):
        return storage_dtype
    return "float16" if stored and set(stored) == {"float16"} else "float32"


def iter_images(split: Split) -> Iterator[np.ndarray]:
    """Every image of ``split`` in order, one at a time (k > 0 chunk statistics walk the splits this way)."""
    for i in range(len(split)):
        yield split.read(i)[0]


class LazyImages:
    """A re-iterable sequence of a split's images, read when iterated (never held)."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """(H, W) per image, without reading any (the k > 0 statistics table is sized from them)."""
        return tuple(self.split.shapes)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter_images(self.split)


def pixel_sample(split: Split, max_pixels: int) -> np.ndarray:
    """Every ``step``-th pixel (P, C) of the split's images concatenated in raster order, ``step`` =
    total // ``max_pixels`` (at least 1), read one image at a time: the regular subsample a scaling fit
    takes of the whole array, without the array."""
    total = sum(h * w for h, w in split.shapes)
    step, seen, parts = max(1, total // max_pixels), 0, []
    for image in iter_images(split):
        flat = image.reshape(-1, image.shape[-1])
        parts.append(flat[(-seen) % step :: step].copy())
        seen += flat.shape[0]
    return np.concatenate(parts)


def materialize(split: Split) -> SplitArrays:
    """Read a whole split into memory (tests and small benchmarks only: a trial streams)."""
    if isinstance(split, SplitArrays):
        return split
    pairs = [split.read(i) for i in range(len(split))]
    return SplitArrays(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), tuple(split.names))


@dataclass(frozen=True)
class DataBundle:
    """Data of one (dataset, fraction) cell, identical for every strategy at that fraction."""

    dataset: str
    train: Split
    val: Split
    test: Split
    wavelengths: np.ndarray  # (C,) nm
    subset: SubsetManifest
    source: str  # "synthetic:<dir>" or the real data root, recorded in every row
    backbone_hash: str | None = None  # set when the images are frozen-backbone features, not spectra
    #: The raw spectra of the same samples, for feature bundles whose trials may train the backbone (freeze
    #: depth k > 0, which recomputes features in the trial); k = 0 trials ignore it.
    raw: DataBundle | None = None

    @property
    def n_bands(self) -> int:
        return int(self.train.n_channels)


def make_bundle(
    spec: DatasetSpec,
    splits: dict[str, H5Split],
    subset: SubsetManifest,
    source: str | Path,
    backbone_hash: str | None = None,
) -> DataBundle:
    """A cell's bundle: references to the subset of train and the complete val and test splits (no reads)."""
    return DataBundle(
        dataset=spec.name,
        train=split_ref(splits["train"], subset.names),
        val=split_ref(splits["val"]),
        test=split_ref(splits["test"]),
        wavelengths=np.asarray(splits["train"].wavelengths, dtype=np.float32),
        subset=subset,
        source=str(source),
        backbone_hash=backbone_hash,
    )


def in_memory(bundle: DataBundle) -> DataBundle:
    """The same bundle with every split read into memory (tests that edit arrays; ``raw`` too)."""
    raw = in_memory(bundle.raw) if bundle.raw is not None else None
    return replace(bundle, train=materialize(bundle.train), val=materialize(bundle.val),
                   test=materialize(bundle.test), raw=raw)
