"""Readers for the raw release files: MATLAB ``.mat`` (v5 and v7.3) and label PNGs.

Why a thin layer: every raw file problem (unreadable, missing key, wrong
shape) must become one :class:`PrepareError` naming the file, not a SciPy or
Pillow traceback from deep inside a worker process an hour into a conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from study.errors import HsiStudyError


class PrepareError(HsiStudyError):
    """A raw release file or folder breaks what ``python -m study.prepare`` expects."""


def _missing_dependency(package: str, extra: str = "prepare") -> PrepareError:
    return PrepareError(
        f"python -m study.prepare needs {package}; install it with `pip install 'hsistudy[{extra}]'` "
        f"(or `pip install {package}`)"
    )


def load_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The variables ``keys`` of a ``.mat`` file, in MATLAB's axis order, whatever its version.

    MATLAB v7.3 files are HDF5 and store arrays column-major, so h5py sees every
    array with its axes reversed; ``.T`` restores the shape MATLAB (and
    ``scipy.io.loadmat`` for v5 files) report.
    """
    if not path.is_file():
        raise PrepareError(f"{path}: file not found")
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as fh:
                found = sorted(k for k in fh if not k.startswith("#"))
                missing = [k for k in keys if not isinstance(fh.get(k), h5py.Dataset)]
                if missing:
                    raise _missing_keys(path, missing, found, "v7.3")
                return {k: np.asarray(fh[k][()]).T for k in keys}
        except PrepareError:
            raise
        except Exception as exc:  # h5py raises OSError/KeyError/RuntimeError for damaged files
            raise PrepareError(f"{path}: cannot read this MATLAB v7.3 (HDF5) file ({exc}); "
                               "it is truncated or corrupt: extract it from the release again") from exc
    try:
        from scipy.io import loadmat, whosmat
    except ImportError:
        raise _missing_dependency("scipy") from None
    try:
        found = sorted(name for name, _, _ in whosmat(str(path)))
        missing = [k for k in keys if k not in found]
        if missing:
            raise _missing_keys(path, missing, found, "v5")
        mat = loadmat(str(path), variable_names=list(keys))
    except PrepareError:
        raise
    except Exception as exc:  # scipy raises ValueError/MatReadError/OSError/TypeError for bad files
        raise PrepareError(f"{path}: cannot read as a MATLAB .mat file ({type(exc).__name__}: {exc}); "
                           "it is truncated, corrupt or not a .mat file: extract it from the release again") from exc
    return {k: np.asarray(mat[k]) for k in keys}


def _missing_keys(path: Path, missing: list[str], found: list[str], version: str) -> PrepareError:
    shown = ", ".join(repr(k) for k in found[:10]) or "none"
    return PrepareError(
        f"{path}: this MATLAB {version} file has no variable {', '.join(repr(k) for k in missing)} "
        f"(it holds {shown}); is it a file of the right dataset?"
    )


def load_png_labels(path: Path) -> np.ndarray:
    """A label PNG as a 2-D integer id map (what ``cv2.imread(..., IMREAD_GRAYSCALE)`` gives for it).

    Grey ('L', 16-bit 'I') images are returned as stored. Colour or palette images
    are accepted only when every pixel is grey (R = G = B), where every grey
    conversion agrees; a real colour image is an error, not a silent luminance mix.
    """
    try:
        from PIL import Image
    except ImportError:
        raise _missing_dependency("pillow") from None
    if not path.is_file():
        raise PrepareError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            colour = mode in ("P", "PA", "LA", "RGBA", "RGB")
            arr = np.asarray(img.convert("RGB") if colour else img)
    except Exception as exc:  # PIL.UnidentifiedImageError, OSError for truncated files
        raise PrepareError(f"{path}: cannot read as an image ({type(exc).__name__}: {exc}); "
                           "it is truncated or not a PNG: extract it from the release again") from exc
    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise PrepareError(f"{path}: is a colour ({mode}) image, but label files must be grey id maps "
                               "(one class id per pixel); is this the colour-coded visualisation instead?")
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise PrepareError(f"{path}: expected a 2-D integer label image, got mode {mode} with shape {arr.shape}")
    return np.ascontiguousarray(arr)


def as_label_ids(labels: np.ndarray, path: Path) -> np.ndarray:
    """Integer label ids (H, W): MATLAB stores labels as double sometimes; they must be whole numbers."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "ui":
        return np.ascontiguousarray(labels)
    if labels.dtype.kind == "b":
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        small = labels.size == 0 or (labels.min() >= 0 and labels.max() <= 255)
        return labels.astype(np.uint8 if small else np.int32)
    raise PrepareError(f"{path}: labels must be whole-number class ids, got dtype {labels.dtype}")
