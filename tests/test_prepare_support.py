"""Builders of tiny raw releases (HyKo2, HSI-Drive v2, HCV2) for the study.prepare tests (no tests here).

Each builder writes the files the way the real release stores them and
returns the expected converted sample per group name, computed independently
of study.prepare (plain numpy on the full-resolution arrays).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from study.prepare.hsd import encode_hsd

HYKO2_LABEL_KEY = "label_Semantic Classes for Urban Scenes"


def write_lists(folder: Path, lists: dict[str, list[str]], trailing_newline: bool = True) -> Path:
    """``{train,val,test}_samples.csv``, one name per line, no header."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        (folder / f"{split}_samples.csv").write_text("\n".join(names) + ("\n" if trailing_newline else ""))
    return folder


def write_png(path: Path, labels: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.astype(np.uint8), mode="L")
    if mode != "L":
        img = img.convert(mode)
    img.save(path)


def write_mat_v73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file: HDF5 behind a 512-byte MATLAB header, arrays stored column-major (axes reversed)."""
    with h5py.File(path, "w", userblock_size=512) as fh:
        for key, arr in arrays.items():
            fh.create_dataset(key, data=np.ascontiguousarray(arr.T))
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def build_hyko2(raw: Path, names: list[str], rng: np.random.Generator, *, v73: tuple[str, ...] = (),
                size: tuple[int, int] = (6, 7)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``<raw>/<name>`` .mat files (float64 ``data`` (H, W, 15), labels 0..10); expected per stem."""
    raw.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name in names:
        data = rng.uniform(0, 4000, size=(*size, 15))
        labels = rng.integers(0, 11, size=size).astype(np.uint8)
        arrays = {"data": data, HYKO2_LABEL_KEY: labels}
        if name in v73:
            write_mat_v73(raw / name, arrays)
        else:
            scipy.io.savemat(raw / name, arrays)
        expected[Path(name).stem] = (data.astype(np.float32), labels)
    return expected


def build_hsidrive(raw: Path, names: list[str], rng: np.random.Generator, *, v73: tuple[str, ...] = (),
                   size: tuple[int, int] = (6, 7)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``cubes_fl32/<name>_TC.mat`` (``cube`` (25, H, W) float32) + ``labels/<name>.png`` (ids 0..10)."""
    (raw / "cubes_fl32").mkdir(parents=True, exist_ok=True)
    expected = {}
    for name in names:
        cube = rng.uniform(0, 4, size=(25, *size)).astype(np.float32)
        labels = rng.integers(0, 11, size=size).astype(np.uint8)
        path = raw / "cubes_fl32" / f"{name}_TC.mat"
        if name in v73:
            write_mat_v73(path, {"cube": cube})
        else:
            scipy.io.savemat(path, {"cube": cube})
        write_png(raw / "labels" / f"{name}.png", labels)
        expected[name] = (np.transpose(cube, (1, 2, 0)), labels)
    return expected


def opencv_half(n: int) -> np.ndarray:
    """Independent statement of cv2's x0.5 INTER_NEAREST sample positions: round-half-even size, 2*i."""
    return np.minimum(np.arange(int(np.rint(n * 0.5))) * 2, n - 1)


def build_hcv2(raw: Path, folders: dict[str, list[str]], rng: np.random.Generator,
               sizes: list[tuple[int, int]], d: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``<raw>/<folder>/<stem>.hsd`` + ``<folder>/gt/rgb<stem>_gray.png``; expected = full cube then halved."""
    expected = {}
    i = 0
    for folder, names in folders.items():
        (raw / folder / "gt").mkdir(parents=True, exist_ok=True)
        for name in names:
            h, w = sizes[i % len(sizes)]
            i += 1
            scores = rng.normal(size=(h, w, d)).astype(np.float32)
            coeffs = rng.normal(size=(d, 128)).astype(np.float32)
            means = rng.uniform(100, 200, size=128).astype(np.float32)
            encode_hsd(raw / folder / name, scores, coeffs, means)
            labels = rng.choice(np.r_[np.arange(19), 255], size=(h, w)).astype(np.uint8)
            stem = Path(name).stem
            write_png(raw / folder / "gt" / f"rgb{stem}_gray.png", labels)
            cube = (scores.reshape(-1, d) @ coeffs + means).reshape(h, w, 128)
            r, c = opencv_half(h), opencv_half(w)
            expected[stem] = (cube[r][:, c], labels[r][:, c])
    return expected
