"""The HS3-Bench reader's file-level rules and their messages: each names the file, the rule and the fix.

:mod:`study.data.h5reader` opens and reads split files; what it refuses, and how it says so, is here:
a missing split file (or a folder or broken link in its place), band centres (root attribute >
``wave_<name>.csv`` > the spec), a file h5py cannot read, and the rules that tie a dataset's splits
together (one band set, no sample in two splits).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from study.data.specs import DatasetSpec
from study.data.storage import DTYPE_ATTR, DTYPES, FORMAT_ATTR, FORMATS, file_storage
from study.errors import DataValidationError

WAVELENGTH_RANGE_NM = (300.0, 2600.0)
SPLIT_LAYOUT = "the HS3-Bench layout, see README.md, section 'Real HS3-Bench data'"
#: marker file of a finished synthetic-data cache entry (study.data.synthetic.generator writes it; not imported: heavy)
_CACHE_MARKER = "COMPLETE.json"

#: no real sensor value (radiance, reflectance, raw counts up to 16 bit) or backbone feature comes near this
MAX_ABS_VALUE = 1e6
EXTREME_FIX = (". Fix: repair or drop this sample when converting the data (or run with --allow-extreme-values "
               "to train on it anyway)")



def expected_files(spec: DatasetSpec) -> str:
    return ", ".join(spec.file_name(s) for s in spec.splits)


def missing_file_error(path: Path, spec: DatasetSpec) -> DataValidationError:
    folder = path.parent
    if path.is_dir():  # not "file not found ... it holds <this name>": say what is there
        return DataValidationError(
            f"{path}: is a folder, not an HDF5 file. The data folder {folder} must hold {expected_files(spec)} "
            f"as files ({SPLIT_LAYOUT}). Fix: move the real file to {path} (is it inside that folder, e.g. after "
            "unpacking?) or point --data-root at the folder that holds the files."
        )
    if path.is_symlink():
        return DataValidationError(
            f"{path}: a broken link (it points to {os.readlink(path)}, which does not exist). Fix: point the link "
            "at the real file or copy the file there."
        )
    present = ", ".join(sorted(p.name for p in folder.glob("*.h5"))[:8]) if folder.is_dir() else ""
    holds = f"it holds {present or 'no .h5 files'}" if folder.is_dir() else "the folder does not exist"
    return DataValidationError(
        f"{path}: file not found. The data folder {folder} must hold {expected_files(spec)} ({SPLIT_LAYOUT}); "
        f"{holds}. Fix: point --data-root at the folder with these files (or omit it for synthetic data)."
    )


def resolve_wavelengths(fh: h5py.File, path: Path, spec: DatasetSpec) -> tuple[np.ndarray, str]:
    """Band centres (C,) float32 and where they came from: root attribute > wave_<name>.csv > spec."""
    csv = path.parent / f"wave_{spec.name}.csv"
    if "wavelengths" in fh.attrs:
        raw: Any = fh.attrs["wavelengths"]
        source = f"root attribute 'wavelengths' of {path.name}"
    elif csv.is_file():
        source = f"column 1 of {csv}"
        try:
            table = np.loadtxt(csv, ndmin=2)
        except ValueError as exc:
            raise DataValidationError(
                f"{csv}: cannot parse the wavelength table ({exc}); expected whitespace-separated lines "
                "'<1-based band index> <centre wavelength in nm>'"
            ) from None
        if table.shape[1] < 2:
            raise DataValidationError(f"{csv}: needs 2 columns (band index, nm), got {table.shape[1]}")
        raw = table[:, 1]
    else:
        raw = spec.wavelengths
        source = f"the {spec.name} spec in study/data/specs.py (no 'wavelengths' attribute, no {csv.name})"
    arr = np.asarray(raw)
    if arr.dtype.kind not in "fiu" or arr.ndim != 1 or arr.size == 0:
        raise DataValidationError(
            f"{path}: wavelengths from {source} must be a non-empty 1-D numeric array, "
            f"got dtype {arr.dtype} and shape {arr.shape}"
        )
    wl = arr.astype(np.float64)
    lo, hi = WAVELENGTH_RANGE_NM
    if not np.all(np.isfinite(wl)) or wl.min() < lo or wl.max() > hi:
        raise DataValidationError(
            f"{path}: wavelengths from {source} must lie in {lo:g}-{hi:g} nm, got {wl.min():g}-{wl.max():g}; "
            "fix: store centre wavelengths in nanometres (micrometres x 1000)"
        )
    steps = np.diff(wl)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        raise DataValidationError(
            f"{path}: wavelengths from {source} must be strictly increasing, but band {i + 1} "
            f"({wl[i + 1]:g} nm) follows band {i} ({wl[i]:g} nm); fix: list the bands in spectral order"
        )
    return wl.astype(np.float32), source


def unreadable_error(path: Path, name: str | None, exc: BaseException) -> DataValidationError:
    """h5py's low-level error (truncated, corrupt) reading ``path`` (sample ``name``) -> one message with the fix."""
    where = f"{path}" + (f", sample {name!r}" if name is not None else "")
    if (path.parent / _CACHE_MARKER).is_file():  # our own generated cache, not the user's copy
        fix = (f"delete the cache entry {path.parent} (rm -r it); the synthetic data is generated "
               "again on the next run")
    else:
        fix = "copy or convert it again"
    return DataValidationError(
        f"{where}: cannot be read as HDF5 ({exc}); the file is not HDF5, truncated or corrupt "
        f"(e.g. an interrupted copy or download). Fix: {fix}."
    )


def check_pca_shapes(where: str, scores: tuple[int, ...], coeffs: tuple[int, ...],
                     means: tuple[int, ...]) -> tuple[int, int, int]:
    """Shapes of a pca sample agree: scores (H, W, D), coefficients (D, C), means (C,); the image's shape."""
    d = scores[2]
    c = coeffs[1] if len(coeffs) == 2 else -1
    if len(coeffs) != 2 or coeffs[0] != d or means != (c,):
        raise DataValidationError(
            f"{where}: pca shapes disagree: scores {scores}, coefficients {coeffs}, means {means}; they must "
            "be (H, W, D), (D, C) and (C,). Fix: convert the data again with python -m study.prepare"
        )
    return scores[0], scores[1], c


def extreme_value(path: Path, name: str, block: np.ndarray, row0: int) -> str | None:
    """The first value beyond :data:`MAX_ABS_VALUE` in ``block``, said in one line; None if there is none."""
    # the bound as a float32 0-d array: a float16 block (feature caches) compared with the Python float would
    # cast 1e6 to float16 (inf, with numpy's overflow warning in every demo); float32 holds it exactly
    big = np.abs(block) > np.float32(MAX_ABS_VALUE)
    if not big.any():
        return None
    r, c, b = (int(v) for v in np.argwhere(big)[0])
    return (f"{path}, sample {name!r}: image holds {int(big.sum())} value(s) beyond +-{MAX_ABS_VALUE:g} "
            f"(first {float(block[r, c, b]):.4g} at row {row0 + r}, column {c}, band {b}); no sensor "
            "value or feature reaches that, one such pixel wrecks the training of every cell it is in")


def check_finite(path: Path, name: str, block: np.ndarray, row0: int = 0) -> None:
    """Every pixel of ``block`` is finite, else one line naming the sample and the first bad pixel."""
    finite = np.isfinite(block)
    if not finite.all():
        r, c, b = (int(v) for v in np.argwhere(~finite)[0])
        raise DataValidationError(
            f"{path}, sample {name!r}: image holds {int((~finite).sum())} NaN/inf value(s) "
            f"(first at row {row0 + r}, column {c}, band {b}); rule: every pixel must be finite. "
            "Fix: repair or drop this sample when converting the data"
        )


def checked_storage(path: Path, fh: h5py.File) -> tuple[str, str]:
    """The file's ``storage_format`` / ``storage_dtype`` (absent: cube / float32), checked to be known."""
    fmt, dtype = file_storage(fh.attrs)
    for attr, value, valid in ((FORMAT_ATTR, fmt, FORMATS), (DTYPE_ATTR, dtype, DTYPES)):
        if value not in valid:
            raise DataValidationError(
                f"{path}: root attribute {attr!r} is {value!r}; this hsistudy reads {', '.join(valid)}. "
                "Fix: convert the data again with this version's python -m study.prepare"
            )
    return fmt, dtype


def is_feature_file(path: Path, fh: h5py.File) -> bool:
    """A study.features file carries both ``feature_dim`` and ``source_wavelengths``, valid.

    Root attributes are free for other tools to use: one this reader does not know, or a
    ``feature_dim`` without its partner, is ignored with a warning, never reported as corruption.
    """
    if "feature_dim" not in fh.attrs:
        return False
    try:
        dim = fh.attrs["feature_dim"]
        ok = "source_wavelengths" in fh.attrs and np.ndim(dim) == 0 and int(dim) >= 1
    except (TypeError, ValueError, OSError):
        ok = False
    if not ok:
        warnings.warn(f"{path}: root attribute 'feature_dim' is ignored (a study.features file has an integer "
                      "'feature_dim' and 'source_wavelengths'); the file is read as spectra", stacklevel=3)
    return ok
