"""How a split file stores its images: as cubes or as the release's PCA scores, in float32, float16 or bfloat16.

Two root attributes of a split file say it (absent: ``cube`` / ``float32``, every file made before them):

* ``storage_format``: ``cube`` - each sample's ``image`` (H, W, C) holds the spectra; ``pca`` - each sample
  holds ``scores`` (H, W, D), ``coefficients`` (D, C) float32 and ``means`` (C,) float32, and its image is
  :func:`pca_decode` of them: HCV2's own ``.hsd`` representation (D = 6 of 128 bands), kept compressed.
* ``storage_dtype``: the dtype of ``image`` / ``scores``. HDF5 has no bfloat16, so ``bfloat16`` arrays
  are stored as ``uint16`` bit patterns (the upper half of the float32, rounded to nearest even) and
  only this attribute tells a reader to widen them: a tool that ignores it sees integers.

Why one module: ``study.prepare`` writes these files and :mod:`study.data.h5reader` reads them; the decode
is one function both call, so a pca file decodes with exactly the float32 product (same numpy operations,
same order) the cube path used to make the cube file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

FORMAT_ATTR = "storage_format"
DTYPE_ATTR = "storage_dtype"
FORMATS: tuple[str, ...] = ("cube", "pca")
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: the datasets of one sample in each format (besides ``labels``)
SAMPLE_KEYS: dict[str, tuple[str, ...]] = {"cube": ("image",), "pca": ("scores", "coefficients", "means")}
#: the largest finite float16
FLOAT16_MAX = float(np.finfo(np.float16).max)


def pca_decode(scores: np.ndarray, coeffs: np.ndarray, means: np.ndarray, out: np.ndarray | None = None,
               ) -> np.ndarray:
    """``scores @ coeffs + means`` float32: scores (..., D), coeffs (D, C), means (C,) -> (..., C).

    One matrix product over all pixels at once, then the means added: the float32 operations of
    ``study.prepare.hsd.decode_hsd``. ``out`` (C-contiguous float32 of the result's shape) is filled in place.
    """
    d, c = coeffs.shape
    flat = np.ascontiguousarray(scores, dtype=np.float32).reshape(-1, d)
    lead = tuple(scores.shape[:-1])
    if out is None:
        return (flat @ coeffs.astype(np.float32, copy=False) + means.astype(np.float32, copy=False)).reshape(*lead, c)
    target = out.reshape(-1, c)  # a view: out is contiguous
    np.matmul(flat, coeffs.astype(np.float32, copy=False), out=target)
    np.add(target, means.astype(np.float32, copy=False), out=target)
    return out


def to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 as uint16 bit patterns, rounded to nearest even (finite input)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact: bfloat16 is the upper half of a float32)."""
    wide = np.left_shift(np.asarray(bits).astype(np.uint32), np.uint32(16)).view(np.float32)
    if out is None:
        return wide
    out[...] = wide
    return out


def to_storage(array: np.ndarray, dtype: str) -> np.ndarray:
    """A float32 array as stored under ``storage_dtype`` ``dtype`` (float16 beyond its range: ValueError)."""
    array = np.asarray(array, dtype=np.float32)
    if dtype == "float32":
        return array
    if dtype == "float16":
        peak = float(np.abs(array).max()) if array.size else 0.0
        if peak > FLOAT16_MAX:
            raise ValueError(f"values up to {peak:g} exceed float16's range (+-{FLOAT16_MAX:g})")
        return array.astype(np.float16)
    if dtype == "bfloat16":
        return to_bfloat16_bits(array)
    raise ValueError(f"storage dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def stored_dtype(dtype: str) -> np.dtype:
    """The numpy dtype an array of ``storage_dtype`` ``dtype`` has in the file."""
    return np.dtype({"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def file_storage(attrs: Mapping[str, Any]) -> tuple[str, str]:
    """(format, dtype) recorded in a split file's root attributes; (cube, float32) when absent. Not validated."""
    return _text(attrs.get(FORMAT_ATTR, "cube")), _text(attrs.get(DTYPE_ATTR, "float32"))


def storage_attrs(fmt: str, dtype: str) -> dict[str, str]:
    """Root attributes recording ``fmt`` / ``dtype``; none for cube + float32 (those files stay as they were)."""
    if fmt == "cube" and dtype == "float32":
        return {}
    return {FORMAT_ATTR: fmt, DTYPE_ATTR: dtype}
