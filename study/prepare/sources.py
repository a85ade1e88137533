"""Where each raw release keeps its files, and how one sample is turned into (image, labels).

One :class:`Job` is one sample with its resolved file paths; :func:`load_sample`
is a top-level function so worker processes can run it. Layouts:

* HyKo2 (``vis_annotated.zip``): ``<raw>/<entry>.mat`` with ``data`` (H, W, 15) and
  ``label_Semantic Classes for Urban Scenes`` (H, W); group = file stem.
* HSI-Drive v2 (``Image_dataset/``): ``<raw>/cubes_fl32/<name>_TC.mat`` (``cube``,
  (25, H, W) float32, transposed to (H, W, 25)) and ``<raw>/labels/<name>.png``; group = name.
* HCV2: ``<raw>/train/<stem>.hsd`` + ``<raw>/train/gt/rgb<stem>_gray.png`` (train, val and,
  in the old split, test), ``<raw>/test/...`` for the new split's test images; image and
  labels halved by OpenCV-exact nearest neighbour; labels keep raw 255 (the spec maps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.data.specs import get_spec
from study.prepare.hsd import decode_hsd, read_header, read_pca
from study.prepare.readers import PrepareError, as_label_ids, load_mat, load_png_labels
from study.prepare.resize import opencv_nn_indices, resize_nearest
from study.prepare.splits import sample_key

HYKO2_IMAGE_KEY = "data"
HYKO2_LABEL_KEY = "label_Semantic Classes for Urban Scenes"
HSIDRIVE_KEY = "cube"
HCV2_SCALE = 0.5
DATASETS: tuple[str, ...] = ("hyko2", "hsidrive", "hcv2")


@dataclass(frozen=True)
class Job:
    """One sample to convert: its group name and the raw files it is made from."""

    dataset: str
    group: str
    cube: Path
    labels: Path | None  # None: labels live in the cube file (HyKo2)
    fmt: str = "cube"  # "pca": keep HCV2's scores, coefficients and means (study.data.storage)


def _with_suffix(entry: str, suffix: str) -> str:
    return entry if entry.lower().endswith(suffix) else entry + suffix


def hcv2_folder(split: str, hcv2_split: str) -> str:
    """Release folder of an HCV2 split: the new split's test images are the official test release."""
    return "test" if (split == "test" and hcv2_split == "new") else "train"


def make_job(dataset: str, raw: Path, split: str, entry: str, hcv2_split: str = "new", fmt: str = "cube") -> Job:
    """Resolve the raw files of one list entry (no check that they exist); ``fmt`` pca: HCV2 only."""
    group = sample_key(dataset, entry)
    if dataset == "hyko2":
        return Job(dataset, group, raw / _with_suffix(entry, ".mat"), None)
    if dataset == "hsidrive":
        return Job(dataset, group, raw / "cubes_fl32" / f"{entry}_TC.mat", raw / "labels" / f"{entry}.png")
    if dataset == "hcv2":
        folder = raw / hcv2_folder(split, hcv2_split)
        return Job(dataset, group, folder / _with_suffix(entry, ".hsd"), folder / "gt" / f"rgb{group}_gray.png", fmt)
    raise PrepareError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def missing_files(job: Job, split: str) -> list[str]:
    """One message per file of ``job`` that does not exist: sample, path looked for, folder searched."""
    out = []
    for what, path in (("cube", job.cube), ("labels", job.labels)):
        if path is None or path.is_file():
            continue
        hint = ""
        if job.dataset == "hcv2":  # <raw>/<train|test>/[gt/]<file>: is it in the other release folder?
            folder = job.cube.parent
            other = folder.parent / ("test" if folder.name == "train" else "train")
            alt = other / path.relative_to(folder)
            if alt.is_file():
                hint = f" (it is in {alt.parent}, the other release folder: check --hcv2-split new|old)"
        out.append(f"sample {job.group!r} ({split} split): {what} not found: looked for {path.name} "
                   f"in {path.parent}{hint}")
    return out


def load_sample(job: Job) -> tuple[str, dict[str, np.ndarray], np.ndarray]:
    """(group, the sample's arrays, labels (H, W) integer) of one sample, checked. The arrays: ``image``
    (H, W, C) float32, or for ``fmt`` pca ``scores`` (H, W, D), ``coefficients`` (D, C), ``means`` (C,)."""
    n_bands = get_spec(job.dataset).n_bands
    if job.dataset == "hyko2":
        mat = load_mat(job.cube, [HYKO2_IMAGE_KEY, HYKO2_LABEL_KEY])
        image, labels = mat[HYKO2_IMAGE_KEY], as_label_ids(mat[HYKO2_LABEL_KEY], job.cube)
        _check(f"{job.cube}", image, labels, n_bands, f"'{HYKO2_IMAGE_KEY}' cube")
    elif job.dataset == "hsidrive":
        assert job.labels is not None
        cube = load_mat(job.cube, [HSIDRIVE_KEY])[HSIDRIVE_KEY]
        if cube.ndim != 3 or cube.shape[0] != n_bands:
            raise PrepareError(f"{job.cube}: '{HSIDRIVE_KEY}' must be (bands, H, W) with {n_bands} bands, "
                               f"got shape {cube.shape}; is it a file of the right dataset?")
        image = np.transpose(cube, (1, 2, 0))
        labels = load_png_labels(job.labels)
        _check(f"{job.cube} and {job.labels}", image, labels, n_bands, "cube")
    else:
        assert job.labels is not None
        header = read_header(job.cube)
        if header.bands != n_bands:
            raise PrepareError(f"{job.cube}: has {header.bands} bands, HCV2 has {n_bands}; is it an HCV2 file?")
        if min(header.height, header.width) < 2:
            raise PrepareError(f"{job.cube}: {header.height} x {header.width} pixels; halving needs at least 2 x 2")
        labels_full = load_png_labels(job.labels)
        if tuple(labels_full.shape) != (header.height, header.width):
            raise PrepareError(f"{job.cube} and {job.labels}: shape mismatch: the cube is {header.height} x "
                               f"{header.width} pixels but its labels are {labels_full.shape[0]} x "
                               f"{labels_full.shape[1]}")
        rows = opencv_nn_indices(header.height, HCV2_SCALE)
        cols = opencv_nn_indices(header.width, HCV2_SCALE)
        labels = resize_nearest(labels_full, HCV2_SCALE)
        if job.fmt == "pca":  # decoding is per pixel: the kept pixels' scores are the halved cube's
            scores, coeffs, means, _ = read_pca(job.cube, rows, cols)
            for what, arr in (("scores", scores), ("coefficients", coeffs), ("means", means)):
                _check_finite(job.cube, arr, what)
            return job.group, {"scores": scores, "coefficients": coeffs, "means": means}, np.ascontiguousarray(labels)
        image, _ = decode_hsd(job.cube, rows, cols)
    image = np.ascontiguousarray(image, dtype=np.float32)
    _check_finite(job.cube, image, "cube")
    return job.group, {"image": image}, np.ascontiguousarray(labels)


def _check_finite(path: Path, arr: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise PrepareError(f"{path}: the {what} holds {int((~np.isfinite(arr)).sum())} NaN/inf values; "
                           "the file is corrupt: extract it from the release again")


def _check(where: str, image: np.ndarray, labels: np.ndarray, n_bands: int, what: str) -> None:
    if image.ndim != 3 or image.shape[2] != n_bands:
        raise PrepareError(f"{where}: the {what} must be (H, W, {n_bands}), got shape {image.shape}; "
                           "is it a file of the right dataset?")
    if labels.ndim != 2:
        raise PrepareError(f"{where}: labels must be 2-D (H, W), got shape {labels.shape}")
    if tuple(labels.shape) != tuple(image.shape[:2]):
        raise PrepareError(f"{where}: shape mismatch: the {what} is {image.shape[0]} x {image.shape[1]} pixels "
                           f"but the labels are {labels.shape[0]} x {labels.shape[1]}")
