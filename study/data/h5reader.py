"""HS3-Bench HDF5 reader: one open handle per process, every layout rule checked up front.

Layout (HS3-Bench's, described in README.md "Real HS3-Bench data"): one file per split,
``<root>/<dataset>_<split>.h5``; every top-level group except ``metadata`` is a
sample named by its stem, holding ``image`` (H, W, C) and ``labels`` (H, W) with
the RAW label ids, which :meth:`DatasetSpec.remap_labels` turns into training
ids. Samples are ordered by sorted name (h5py's default key order), which the
seeded subsets depend on. A file may store its images another way (root attributes
``storage_format`` / ``storage_dtype``, :mod:`study.data.storage`): HCV2's PCA scores
(``scores``, ``coefficients``, ``means`` instead of ``image``), float16 or bfloat16
numbers. Every read returns float32 images all the same, decoded here, and every
check (shapes, NaN/inf, labels) applies to the decoded image.

Why validate on open: a corrupt file, a wrong band count or an out-of-range
label must stop the study *before* Ray starts, with one message that names the
file, the sample, the rule and the fix - not surface as a shape error deep in
a trial. Why one handle: opening an HDF5 file re-reads its metadata; a loader
that opens per item spends more time there than reading pixels. A handle is
never shared across ``fork``: the process id is checked and a child reopens.

The file-level rules and their messages (missing files, wavelengths, unreadable files, splits that
disagree) live in :mod:`study.data.h5checks`; the per-sample rules stay here, next to the reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from study.data.h5checks import (
    EXTREME_FIX,
    SPLIT_LAYOUT,
    check_finite,
    check_pca_shapes,
    checked_storage,
    extreme_value,
    is_feature_file,
    missing_file_error,
    resolve_wavelengths,
    unreadable_error,
)
from study.data.specs import DatasetSpec
from study.data.storage import (
    DTYPE_ATTR,
    SAMPLE_KEYS,
    from_bfloat16_bits,
    pca_decode,
    stored_dtype,
)
from study.errors import DataValidationError

METADATA_KEY = "metadata"
#: value checks read row blocks of about this many bytes, so a 400 GB file never sits in memory
CHUNK_BYTES = 32 * 2**20
_CORRUPT_ERRORS = (OSError, RuntimeError, KeyError)
#: feature width of the cross-domain repository's exported HyperSL files (no attributes)
EXPORTED_FEATURE_DIM = 256


def split_path(root: str | Path, spec: DatasetSpec, split: str) -> Path:
    """``<root>/<dataset>_<split>.h5`` (raises ValueError for a split the spec lacks)."""
    return Path(root) / spec.file_name(split)


class H5Split:
    """One split file: sample names, shapes and wavelengths, read through one handle per process.

    ``check_values=True`` also scans every pixel (NaN/inf, label range) on open,
    in row blocks; otherwise :meth:`read` checks each sample it returns.
    """

    def __init__(self, path: str | Path, spec: DatasetSpec, *, check_values: bool = True,
                 allow_extreme: bool = False) -> None:
        self.path = Path(path)
        self.spec = spec
        self.names: list[str] = []
        self.shapes: list[tuple[int, int]] = []
        self.wavelengths = spec.wavelength_array()
        self.wavelength_source = ""
        #: channels per pixel: the band count, or the feature width D of a feature file
        #: (HS3-Bench layout whose ``image`` holds per-pixel backbone features, see study.features)
        self.n_channels = self.wavelengths.size
        self.feature_dim: int | None = None
        #: how images are stored (study.data.storage): cube | pca, float32 | float16 | bfloat16
        self.storage_format, self.storage_dtype = "cube", "float32"
        #: the dtypes the samples' ``image`` / ``scores`` datasets have in the file (a float16 feature cache says
        #: float16 here without a ``storage_dtype`` attribute): what a resident copy may keep without loss
        self.stored_dtypes: frozenset[str] = frozenset()
        self.values_checked = False
        #: the first value beyond MAX_ABS_VALUE, when the values were checked with ``allow_extreme``
        self.extreme: str | None = None
        self._index: dict[str, int] = {}
        self._classes: list[frozenset[int]] | None = None
        self._fh: h5py.File | None = None
        self._pid: int | None = None
        try:
            self._validate_structure()
            if check_values:
                self.validate_values(allow_extreme)
        except BaseException:
            self.close()
            raise

    @property
    def _file(self) -> h5py.File:
        """The open handle; (re)opened lazily when missing or inherited through fork."""
        if self._fh is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise missing_file_error(self.path, self.spec)
            with self._reading(None):
                self._fh = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._fh

    @contextmanager
    def _reading(self, name: str | None) -> Iterator[None]:
        """Turn h5py's low-level errors (truncated, corrupt) into one DataValidationError."""
        try:
            yield
        except _CORRUPT_ERRORS as exc:
            raise unreadable_error(self.path, name, exc) from exc

    def close(self) -> None:
        """Close this process's handle (a later read reopens it)."""
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = None

    def __enter__(self) -> H5Split:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the handle: the receiving process opens its own."""
        state = self.__dict__.copy()
        state["_fh"], state["_pid"] = None, None
        return state

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"H5Split({str(self.path)!r}, {self.spec.name}, {len(self)} samples, {self.wavelengths.size}b)"

    def _validate_structure(self) -> None:
        fh = self._file
        with self._reading(None):
            self.storage_format, self.storage_dtype = checked_storage(self.path, fh)
            if is_feature_file(self.path, fh):  # features replace the spectrum; keep the source's band centres
                self.feature_dim = int(fh.attrs["feature_dim"])
                self.wavelengths = np.asarray(fh.attrs["source_wavelengths"], dtype=np.float32)
                self.wavelength_source = f"attribute 'source_wavelengths' of feature file {self.path.name}"
                self.n_channels = self.feature_dim
            else:
                self.wavelengths, self.wavelength_source = resolve_wavelengths(fh, self.path, self.spec)
                self.n_channels = self.wavelengths.size
            names = sorted(k for k in fh if k != METADATA_KEY)
            if "wavelengths" not in fh.attrs and self.feature_dim is None:
                self._detect_exported_features(fh, names)
        if not names:
            raise DataValidationError(
                f"{self.path}: no samples; the file must hold one top-level group per image "
                f"(besides an optional '{METADATA_KEY}') with 'image' and 'labels' ({SPLIT_LAYOUT})"
            )
        self.names = names
        dtypes: set[str] = set()
        self.shapes = [self._check_sample(fh, n, dtypes) for n in names]
        self.stored_dtypes = frozenset(dtypes)
        self._index = {n: i for i, n in enumerate(names)}

    def _detect_exported_features(self, fh: h5py.File, names: list[str]) -> None:
        """The cross-domain repo's HyperSL feature files carry no attributes:
        ``image`` is (H, W, 256) float32. Read as features of the spec's bands, not as a 256-band cube."""
        image = fh[names[0]].get("image") if names and isinstance(fh[names[0]], h5py.Group) else None
        dim = image.shape[-1] if isinstance(image, h5py.Dataset) and image.ndim == 3 else None
        if dim == EXPORTED_FEATURE_DIM != self.n_channels:
            self.feature_dim = self.n_channels = EXPORTED_FEATURE_DIM
            self.wavelength_source = f"{self.wavelength_source}; {self.path.name} holds exported 256-d HyperSL features"

    def _check_sample(self, fh: h5py.File, name: str, dtypes: set[str]) -> tuple[int, int]:
        """Structure of one sample (no pixel reads); returns its (H, W) and adds its image dtype to ``dtypes``."""
        where = f"{self.path}, sample {name!r}"
        with self._reading(name):
            grp = fh[name]
            if not isinstance(grp, h5py.Group):
                raise DataValidationError(
                    f"{where}: is a {type(grp).__name__}, not a group; every top-level entry except "
                    f"'{METADATA_KEY}' must be a sample group holding 'image' and 'labels' ({SPLIT_LAYOUT})"
                )
            keys = (*SAMPLE_KEYS[self.storage_format], "labels")
            missing = [k for k in keys if not isinstance(grp.get(k), h5py.Dataset)]
            if missing:
                hint = " ('data' is an old hyperseg export key: rename it 'image')" if "data" in grp else ""
                need = ("'image' (H, W, C)" if self.storage_format == "cube" else
                        "'scores' (H, W, D), 'coefficients' (D, C), 'means' (C,) (storage_format pca)")
                raise DataValidationError(
                    f"{where}: lacks dataset(s) {', '.join(repr(m) for m in missing)}; found {sorted(grp)}"
                    f"{hint}. Each sample needs {need} and 'labels' (H, W)"
                )
            image, labels = grp[keys[0]], grp["labels"]
            ishape, lshape = tuple(image.shape), tuple(labels.shape)
            idtype, ldtype = image.dtype, labels.dtype
            pca = None if self.storage_format == "cube" else (tuple(grp["coefficients"].shape),
                                                               tuple(grp["means"].shape))
        what = keys[0]
        dtypes.add(str(idtype))
        if idtype.kind not in "fiu" or ldtype.kind not in "fiu":
            raise DataValidationError(
                f"{where}: non-numeric dtype ({what} {idtype}, labels {ldtype}); {what} must be float or "
                "integer and labels integer. Fix: convert the arrays when writing the file"
            )
        if self.storage_dtype != "float32" and idtype != stored_dtype(self.storage_dtype):
            raise DataValidationError(
                f"{where}: {what} is {idtype}, but the root attribute {DTYPE_ATTR!r} says {self.storage_dtype} "
                f"(stored as {stored_dtype(self.storage_dtype)}); the file is inconsistent: convert it again"
            )
        if len(ishape) != 3:
            raise DataValidationError(f"{where}: {what} must be 3-D (H, W, C) channel-last, got {ishape}")
        if len(lshape) != 2:
            raise DataValidationError(f"{where}: labels must be 2-D (H, W), got shape {lshape}")
        if ishape[:2] != lshape:
            raise DataValidationError(
                f"{where}: {what} H x W {ishape[:2]} != labels H x W {lshape}; the label map must cover the "
                "image pixel for pixel (was one of them resized, or is the image stored (C, H, W)?)"
            )
        if pca is not None:
            ishape = check_pca_shapes(where, ishape, *pca)
        n_wl = self.n_channels
        if ishape[2] != n_wl:
            raise DataValidationError(
                f"{where}: image has {ishape[2]} bands but there are {n_wl} wavelengths from "
                f"{self.wavelength_source}; fix: give the file the matching wavelengths (root attribute "
                f"'wavelengths' or wave_{self.spec.name}.csv) or pick the right dataset"
            )
        return int(ishape[0]), int(ishape[1])

    def validate_values(self, allow_extreme: bool = False) -> None:
        """Scan every sample: images finite and within :data:`MAX_ABS_VALUE`, labels in [0, n_classes) after
        remap (row blocks). ``allow_extreme``: an extreme value is kept in :attr:`extreme` (a warning for the
        caller) instead of refused."""
        if self.values_checked:
            if self.extreme and not allow_extreme:
                raise DataValidationError(self.extreme + EXTREME_FIX)
            return
        classes, extreme = [], None
        for name in self.names:
            with self._reading(name):
                grp = self._file[name]
                stored = grp[SAMPLE_KEYS[self.storage_format][0]]
                decoded = self.storage_format == "pca" or self.storage_dtype == "bfloat16"
                # int8/16 cubes can reach neither NaN nor the extreme-value bound
                if stored.dtype.kind == "f" or decoded or stored.dtype.itemsize >= 4:
                    h, w = stored.shape[:2]
                    itemsize = 4 if decoded else stored.dtype.itemsize
                    rows = max(1, CHUNK_BYTES // max(1, w * self.n_channels * itemsize))
                    for r0 in range(0, h, rows):
                        block = self._decoded_rows(grp, r0, min(h, r0 + rows))
                        if block.dtype.kind == "f":
                            check_finite(self.path, name, block, r0)
                        extreme = extreme or extreme_value(self.path, name, block, r0)
                classes.append(self._present(self._labels(name)))
            if extreme and not allow_extreme:
                raise DataValidationError(extreme + EXTREME_FIX)
        self._classes = classes
        self.extreme = extreme
        self.values_checked = True

    def _labels(self, name: str) -> np.ndarray:
        """Remapped labels (H, W) int64 of one sample, checked against [0, n_classes)."""
        raw = np.asarray(self._file[name]["labels"][()])
        where = f"{self.path}, sample {name!r}"
        if raw.dtype.kind == "f":
            if not (np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))):
                raise DataValidationError(f"{where}: float labels must hold whole numbers; store integers")
            raw = raw.astype(np.int64)
        labels = self.spec.remap_labels(raw)
        n = self.spec.n_classes
        bad = (labels < 0) | (labels >= n)
        if bad.any():
            values = [int(v) for v in np.unique(raw[bad])[:10]]
            if self.spec.raw_label_map is None:
                rule, valid = "no remap", f"0..{n - 1}"
            else:
                rule = f"{self.spec.name}'s raw_label_map"
                valid = ", ".join(str(k) for k, _ in self.spec.raw_label_map)
            raise DataValidationError(
                f"{where}: labels hold raw id(s) {values} ({int(bad.sum())} pixels) that fall outside "
                f"[0, {n}) after {rule}; valid raw ids are {valid}. Fix: relabel those pixels as the "
                f"ignore id (raw {self.spec.raw_label_of(self.spec.ignore_index)}) or use the right dataset"
            )
        return labels

    def _present(self, labels: np.ndarray) -> frozenset[int]:
        counts = np.bincount(labels.ravel(), minlength=self.spec.n_classes)
        return frozenset(int(c) for c in np.flatnonzero(counts) if c != self.spec.ignore_index)

    def _name_of(self, item: int | str) -> str:
        if isinstance(item, str):
            if item not in self._index:
                shown = ", ".join(self.names[:5]) + (", ..." if len(self.names) > 5 else "")
                raise DataValidationError(
                    f"{self.path}: no sample named {item!r} (the file holds {len(self.names)}: {shown}); "
                    "fix: use a subset manifest made from this file"
                )
            return item
        if not 0 <= int(item) < len(self.names):
            raise IndexError(f"sample index {item} out of range for {self.path} ({len(self.names)} samples)")
        return self.names[int(item)]

    def _decoded_rows(self, grp: h5py.Group, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` of a sample's image (H', W, C), decoded from how it is stored (a cube: as stored)."""
        stored = grp[SAMPLE_KEYS[self.storage_format][0]][r0:r1]
        if self.storage_dtype == "bfloat16":
            stored = from_bfloat16_bits(stored)
        if self.storage_format == "pca":
            return pca_decode(stored, grp["coefficients"][()], grp["means"][()])
        return stored

    def _read_into(self, name: str, image_out: np.ndarray) -> np.ndarray:
        """Read one sample's image into ``image_out`` (H, W, C) float32; return its labels (H, W) int64.

        A float32 cube is read straight into ``image_out``, float16 / bfloat16 ones widened; pca scores are decoded with
        :func:`study.data.storage.pca_decode`, the float32 product that made the cube files."""
        with self._reading(name):
            grp = self._file[name]
            if self.storage_format == "pca":
                scores = grp["scores"][()]
                if self.storage_dtype == "bfloat16":
                    scores = from_bfloat16_bits(scores)
                pca_decode(scores, grp["coefficients"][()], grp["means"][()], out=image_out)
            elif self.storage_dtype == "bfloat16":
                from_bfloat16_bits(grp["image"][()], out=image_out)
            elif self.storage_dtype == "float16":  # numpy widens ~5x faster than HDF5's soft conversion
                np.copyto(image_out, grp["image"][()])
            else:
                grp["image"].read_direct(image_out)
            labels = self._labels(name)
        check_finite(self.path, name, image_out)
        return labels

    def read(self, item: int | str) -> tuple[np.ndarray, np.ndarray]:
        """One sample by index or name: image (H, W, C) float32, labels (H, W) int64 (remapped, checked)."""
        name = self._name_of(item)
        h, w = self.shapes[self._index[name]]
        image = np.empty((h, w, self.n_channels), dtype=np.float32)
        return image, self._read_into(name, image)

    def read_stored(self, item: int | str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One sample of a pca file as stored, for a decode elsewhere (the device): scores (H, W, D) in the
        stored dtype (bfloat16: uint16 bits), coefficients (D, C) and means (C,) float32, labels as :meth:`read`.
        Values are not checked here (the decoded image is: the streaming loader's decode checks nothing either,
        so a study checks them on open, ``validate_dataset``)."""
        if self.storage_format != "pca":
            raise ValueError(f"{self.path}: read_stored is for storage_format pca files, not {self.storage_format}")
        name = self._name_of(item)
        with self._reading(name):
            grp = self._file[name]
            scores, coeffs, means = grp["scores"][()], grp["coefficients"][()], grp["means"][()]
            labels = self._labels(name)
        return scores, coeffs.astype(np.float32, copy=False), means.astype(np.float32, copy=False), labels

    def classes_present(self) -> list[frozenset[int]]:
        """Per sample (in ``names`` order): the valid classes it contains (ignore id excluded). Cached."""
        if self._classes is None:
            classes = []
            for name in self.names:
                with self._reading(name):
                    classes.append(self._present(self._labels(name)))
            self._classes = classes
        return list(self._classes)

    def load(self, names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stack samples: images (N, H, W, C) float32, labels (N, H, W) int64; all must share H x W."""
        chosen = list(self.names if names is None else names)
        if not chosen:
            raise DataValidationError(f"{self.path}: no samples selected; load() needs at least one name")
        sizes: dict[tuple[int, int], str] = {}
        for name in chosen:
            sizes.setdefault(self.shapes[self._index[self._name_of(name)]], name)
        if len(sizes) > 1:
            listed = "; ".join(f"{n!r} is {hw[0]}x{hw[1]}" for hw, n in sizes.items())
            raise DataValidationError(
                f"{self.path}: selected samples differ in size ({listed}); load() stacks them into one "
                "array, so they must share H x W. Fix: crop/resize them when converting, or read() one by one"
            )
        (h, w), c = next(iter(sizes)), self.n_channels
        images = np.empty((len(chosen), h, w, c), dtype=np.float32)
        labels = np.empty((len(chosen), h, w), dtype=np.int64)
        for j, name in enumerate(chosen):
            labels[j] = self._read_into(name, images[j])
        return images, labels
