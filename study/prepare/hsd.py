"""Decoder for Hyperspectral City V2 ``.hsd`` files (PCA-compressed cubes, docs/reference.md §R5).

Layout (little-endian, as the release's own MATLAB reader ``readHSD.m`` and the
cross-domain ``prep_hcv2.py`` read it): int32 height, width, bands, D; int32
start wavelength; float32 step; int32 end wavelength; then float32 band means
[bands], coefficients [D x bands] and scores [H*W x D], all row-major. The cube
is ``scores @ coefficients + means`` reshaped to (H, W, bands), float32.

Why a memory map and row/column selection: a full-resolution HCV2 cube is
1422 x 1889 x 128 float32 (1.4 GB). The benchmark keeps only the pixels that
OpenCV's ×0.5 nearest-neighbour resize samples, so only their scores are read
and reconstructed (a quarter of the work and memory). Each kept pixel is the
same float32 product as in the full reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.data.storage import pca_decode
from study.prepare.readers import PrepareError

HEADER = np.dtype([("height", "<i4"), ("width", "<i4"), ("bands", "<i4"), ("d", "<i4"),
                   ("start", "<i4"), ("step", "<f4"), ("end", "<i4")])


@dataclass(frozen=True)
class HsdHeader:
    """The seven header fields of an ``.hsd`` file."""

    height: int
    width: int
    bands: int
    d: int
    start_nm: int
    step_nm: float
    end_nm: int

    @property
    def body_bytes(self) -> int:
        return 4 * (self.bands + self.d * self.bands + self.height * self.width * self.d)


def read_header(path: Path) -> HsdHeader:
    """Parse and sanity-check the header (a short or nonsensical one is a clear error)."""
    try:
        size = path.stat().st_size
        raw = np.fromfile(path, dtype=HEADER, count=1)
    except OSError as exc:
        raise PrepareError(f"{path}: cannot read ({exc})") from exc
    if raw.size != 1:
        raise PrepareError(f"{path}: only {size} bytes, shorter than the 28-byte .hsd header; "
                           "the file is truncated or not an .hsd file")
    h = HsdHeader(*(v.item() for v in raw[0]))
    if min(h.height, h.width, h.bands, h.d) < 1 or h.d > h.bands or h.height * h.width > 10**9:
        raise PrepareError(f"{path}: not a valid .hsd header (height {h.height}, width {h.width}, "
                           f"bands {h.bands}, D {h.d}); the file is corrupt or not an .hsd file")
    if size < HEADER.itemsize + h.body_bytes:
        raise PrepareError(f"{path}: {size} bytes, but its header (H {h.height}, W {h.width}, bands {h.bands}, "
                           f"D {h.d}) needs {HEADER.itemsize + h.body_bytes}; the file is truncated "
                           "(an interrupted download or extraction?)")
    return h


def read_pca(path: Path, rows: np.ndarray | None = None, cols: np.ndarray | None = None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, HsdHeader]:
    """The release's representation at the chosen pixel rows/columns (default: all): scores
    (len(rows), len(cols), D), coefficients (D, bands) and means (bands,), float32 as stored."""
    h = read_header(path)
    rows = np.arange(h.height) if rows is None else np.asarray(rows)
    cols = np.arange(h.width) if cols is None else np.asarray(cols)
    off = HEADER.itemsize
    try:
        means = np.fromfile(path, dtype="<f4", count=h.bands, offset=off).astype(np.float32)
        coeffs = np.fromfile(path, dtype="<f4", count=h.d * h.bands, offset=off + 4 * h.bands)
        coeffs = coeffs.reshape(h.d, h.bands).astype(np.float32)
        scores = np.memmap(path, dtype="<f4", mode="r", offset=off + 4 * (h.bands + h.d * h.bands),
                           shape=(h.height, h.width, h.d))
        picked = np.ascontiguousarray(scores[rows][:, cols], dtype=np.float32)
        del scores
    except (OSError, ValueError) as exc:
        raise PrepareError(f"{path}: cannot read the .hsd body ({exc})") from exc
    return picked, coeffs, means, h


def decode_hsd(path: Path, rows: np.ndarray | None = None, cols: np.ndarray | None = None,
               ) -> tuple[np.ndarray, HsdHeader]:
    """The cube (len(rows), len(cols), bands) float32 at the chosen pixel rows/columns (default: all).

    Each pixel is decoded on its own (a row of scores times the coefficients), so selecting score rows
    first and decoding them equals decoding everything and then selecting: ``--format pca`` stores the
    selected scores and the reader decodes them with the same :func:`pca_decode`."""
    picked, coeffs, means, h = read_pca(path, rows, cols)
    return pca_decode(picked, coeffs, means), h


def encode_hsd(path: Path, scores: np.ndarray, coeffs: np.ndarray, means: np.ndarray,
               start_nm: int = 449, step_nm: float = 4.0, end_nm: int = 957) -> None:
    """Write an ``.hsd`` file (tests and tiny fixtures); ``scores`` is (H, W, D), ``coeffs`` (D, bands)."""
    height, width, d = scores.shape
    bands = coeffs.shape[1]
    header = np.array([(height, width, bands, d, start_nm, step_nm, end_nm)], dtype=HEADER)
    with open(path, "wb") as fh:
        fh.write(header.tobytes())
        for arr in (means, coeffs, scores):
            fh.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
