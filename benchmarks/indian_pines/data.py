"""Indian Pines at a target layout's bands, the classes kept by the split and the pixels a head trains on.

Why here and not in the study: the benchmark scales the whole scene per band, as
pretraining does (``pretrain_data.to_sensor``), not as the cross-domain export does.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from study.data.pretrain_data import INDIAN_PINES_WAVELENGTHS, IP_MIN_PIXELS, indian_pines, to_grid, to_sensor
from study.data.specs import get_spec


@lru_cache(maxsize=1)
def _scene_on_grid() -> np.ndarray:
    cube, _ = indian_pines()
    return to_grid(np.asarray(INDIAN_PINES_WAVELENGTHS), cube.reshape(-1, cube.shape[-1]).astype(np.float64))


def scene(layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Indian Pines at ``layout``'s bands, min-max scaled per band over the scene: (145, 145, C) and (C,) nm."""
    _, labels = indian_pines()
    image = to_sensor(_scene_on_grid(), layout).reshape(*labels.shape, -1)
    return image, get_spec(layout).wavelength_array()


def kept_classes(split: dict[str, np.ndarray]) -> np.ndarray:
    """Labels (1-based) with >= IP_MIN_PIXELS labelled pixels in both the training and the test cells."""
    _, labels = indian_pines()
    n = int(labels.max()) + 1
    tr = np.bincount(labels[split["train"]], minlength=n)
    te = np.bincount(labels[split["test"]], minlength=n)
    return np.flatnonzero((tr >= IP_MIN_PIXELS) & (te >= IP_MIN_PIXELS) & (np.arange(n) > 0))


def pick_pixels(mask: np.ndarray, classes: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Flat indices of the labelled pixels in ``mask`` of the kept classes (``per_class`` random ones each)."""
    _, labels = indian_pines()
    flat = labels.reshape(-1)
    idx = np.flatnonzero(mask.reshape(-1) & np.isin(flat, classes))
    if per_class is None:
        return idx
    rng = np.random.default_rng(10_000 + seed)
    return np.sort(np.concatenate([rng.permutation(idx[flat[idx] == c])[:per_class] for c in classes]))
