"""Nearest-neighbour downsampling that picks exactly the pixels OpenCV's INTER_NEAREST picks.

The HCV2 conversion of HS3-Bench and of the cross-domain code halves image and
labels with ``cv2.resize(x, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_NEAREST)``
(docs/reference.md §R5). Reproducing its output size and sample positions bit for
bit keeps our files interchangeable with theirs without an OpenCV dependency.

What OpenCV does (``modules/imgproc/src/resize.cpp``, ``core/fast_math.hpp``):

* ``dsize = Size(saturate_cast<int>(src.cols * fx), saturate_cast<int>(src.rows * fy))``;
  ``saturate_cast<int>(double)`` is ``cvRound``, which is ``_mm_cvtsd_si32`` on x86-64
  and ``lrint`` / ``vcvtr`` elsewhere: round half to **even** under the default FP
  rounding mode. So a 7-pixel side gives round(3.5) = 4, a 5-pixel side round(2.5) = 2,
  and HCV2's 1889 columns give 944 (not 945) - matching the 711 x 944 the benchmark uses.
  Python's ``round`` is also round-half-even.
* ``resizeNN(src, dst, fx, fy)`` with ``ifx = 1. / fx`` maps destination index x to
  source index ``min(cvFloor(x * ifx), src.cols - 1)`` (rows alike).
"""

from __future__ import annotations

import math

import numpy as np


def opencv_dst_size(src: int, fx: float) -> int:
    """Output length OpenCV gives a side of ``src`` pixels at scale ``fx`` (cvRound: half to even)."""
    out = round(src * fx)  # Python's round on a float is round-half-even, like cvRound
    if out < 1:
        raise ValueError(f"scale {fx} turns a side of {src} pixels into {out}; OpenCV rejects an empty output")
    return out


def opencv_nn_indices(src: int, fx: float) -> np.ndarray:
    """Source indices OpenCV's INTER_NEAREST samples along one axis of length ``src`` (int64)."""
    ifx = 1.0 / fx
    dst = opencv_dst_size(src, fx)
    return np.array([min(math.floor(x * ifx), src - 1) for x in range(dst)], dtype=np.int64)


def resize_nearest(array: np.ndarray, fx: float = 0.5, fy: float | None = None) -> np.ndarray:
    """``cv2.resize(array, None, fx=fx, fy=fy, interpolation=INTER_NEAREST)`` for (H, W) or (H, W, C)."""
    fy = fx if fy is None else fy
    rows = opencv_nn_indices(array.shape[0], fy)
    cols = opencv_nn_indices(array.shape[1], fx)
    return np.ascontiguousarray(array[rows][:, cols])
