"""Data loading: HDF5 read + batch assembly throughput vs the rate at which RU-Net consumes images.

Why: "data loading must never be the bottleneck" (design.md §6). The study's
loader is in-process (1 worker, no DataLoader processes): ``make_bundle`` reads
a cell's images once with ``H5Split.load`` and every step assembles a batch with
``SplitArrays.batch`` + ``to_tensors`` + the random flip. Both paths are timed at
each dataset's real image size, against full-width RU-Net training at batch 1
measured in the same run. Target: loader >= 3x the model's demand.

Files: HyKo2 and HSI-Drive splits come from the synthetic generator (cached).
An HCV2 image takes ~50 s to render here, so its split is written in the same
layout from one rendered 89x118 image tiled to 711x944 (reading cost does not
depend on pixel values). Reads are from the page cache (the file was just
written); cold-disk reads need root to drop caches and are not measured.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from benchmarks._common import finish, machine_info, print_table, standard_main, target

#: images in the benchmark's train split per dataset (quick, full)
IMAGES = {"hyko2": (4, 16), "hsidrive": (4, 16), "hcv2": (2, 4)}


def write_tiled_split(spec: Any, folder: Path, n: int, hw: tuple[int, int], tile: tuple[int, int] = (89, 118)) -> Path:
    """``<folder>/<dataset>_train.h5`` in the HS3-Bench layout: ``n`` copies of a rendered tile, tiled to ``hw``."""
    from study.data.synthetic.generator import image_rng, render_image, sample_name

    image, labels = render_image(spec, tile[0], tile[1], image_rng(0, "train", 0))
    reps = (-(-hw[0] // tile[0]), -(-hw[1] // tile[1]))
    image = np.tile(image, (*reps, 1))[: hw[0], : hw[1]]
    labels = np.tile(labels, reps)[: hw[0], : hw[1]]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / spec.file_name("train")
    with h5py.File(path, "w") as fh:
        fh.attrs["wavelengths"] = spec.wavelength_array()
        fh.attrs["synthetic"] = True
        for i in range(n):
            g = fh.create_group(sample_name(spec, "train", i))
            g.create_dataset("image", data=image)
            g.create_dataset("labels", data=labels)
    return path


def loader_rates(path: Path, spec: Any, batch: int, passes: int = 2) -> dict[str, float]:
    """Images/s of ``H5Split.read`` (one image at a time), ``H5Split.load`` (stacked) and batch assembly."""
    from study.data.bundle import SplitArrays
    from study.data.h5reader import H5Split
    from study.train.loop import random_hflip, to_tensors

    split = H5Split(path, spec, check_values=False)
    n = len(split)
    split.read(0)  # warm the handle and the page cache
    t0 = time.perf_counter()
    for _ in range(passes):
        for i in range(n):
            split.read(i)
    read_s = (time.perf_counter() - t0) / (passes * n)
    t0 = time.perf_counter()
    images, labels = split.load()
    load_s = (time.perf_counter() - t0) / n
    arrays = SplitArrays(images, labels, tuple(split.names))
    gen = np.random.default_rng(0)
    steps, t0 = 0, time.perf_counter()
    for _ in range(passes):
        order = gen.permutation(n)
        for s in range(0, n, batch):
            x, y = to_tensors(*arrays.batch(np.sort(order[s : s + batch])), torch.device("cpu"))
            random_hflip(x, y, 0.1, gen)
            steps += len(order[s : s + batch])
    assemble_s = (time.perf_counter() - t0) / steps
    split.close()
    mb = images[0].nbytes / 2**20
    return {"read_images_s": 1 / read_s, "load_images_s": 1 / load_s, "assemble_images_s": 1 / assemble_s,
            "read_mb_s": mb / read_s, "image_mb": mb}


def model_rate(spec: Any, quick: bool, crop_px: int | None) -> tuple[float, str]:
    """Full-width RU-Net training images/s at batch 1 (1 warm-up + timed steps), optionally on a crop."""
    from benchmarks.throughput import runet_steps

    h, w = spec.image_size
    note = "measured at full size"
    if crop_px is not None and h * w > crop_px:
        scale = (crop_px / (h * w)) ** 0.5
        ch, cw = max(32, int(h * scale)), max(32, int(w * scale))
        note = f"from a {ch}x{cw} crop, scaled by pixel count (conv cost is linear in pixels)"
    else:
        ch, cw = h, w
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = runet_steps("full", spec.n_bands, spec.n_classes, (ch, cw), 1, 1 if quick else 3, 1, device)
    return (ch * cw) / (h * w) / res["s_per_step"], note


def measure(datasets: tuple[str, ...], quick: bool, workdir: Path, size_override: tuple[int, int] | None = None,
            crop_px: int | None = 200_000) -> list[dict[str, Any]]:
    """One row per dataset: loader rates, model rate, ratios (``size_override`` for tests only)."""
    from study.data.specs import get_spec
    from study.data.synthetic.generator import GeneratorConfig, ensure_default_dataset

    rows = []
    for name in datasets:
        spec = get_spec(name)
        hw = size_override or spec.image_size
        n = IMAGES.get(name, (2, 4))[0 if quick else 1]
        if name == "hcv2" or size_override is not None:
            path = write_tiled_split(spec, workdir / name, n, hw)
        else:
            root = ensure_default_dataset(spec, None, GeneratorConfig(height=hw[0], width=hw[1], n_train=n,
                                                                      n_val=1, n_test=1))
            path = root / spec.file_name("train")
        batch = min(spec.batch_size, n)
        rates = loader_rates(path, spec, batch)
        if size_override is None:
            model_s, note = model_rate(spec, quick, crop_px)
        else:
            model_s, note = float("nan"), "model not measured (test size)"
        slowest = min(rates["read_images_s"], rates["assemble_images_s"])
        rows.append({"dataset": name, "image": f"{hw[0]}x{hw[1]}x{spec.n_bands}", "images": n, "batch": batch,
                     **{k: round(v, 2) for k, v in rates.items()}, "model_images_s": round(model_s, 4),
                     "ratio_read": round(rates["read_images_s"] / model_s, 1),
                     "ratio_assemble": round(rates["assemble_images_s"] / model_s, 1),
                     "ratio": round(slowest / model_s, 1), "model_note": note})
        print(f"  {name}: loader {slowest:.1f} images/s vs model {model_s:.3f} images/s", flush=True)
    return rows


def run(quick: bool, save: bool = True) -> dict[str, Any]:
    started, info = time.perf_counter(), machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as d:
        rows = measure(("hyko2", "hsidrive", "hcv2"), quick, Path(d), crop_px=200_000 if quick else None)
    print_table("data loading (1 in-process worker, page cache) vs full-width RU-Net training at batch 1", rows,
                ["dataset", "image", "images", "image_mb", "read_images_s", "read_mb_s", "load_images_s", "batch",
                 "assemble_images_s", "model_images_s", "ratio_read", "ratio_assemble", "ratio"])
    for r in rows:
        print(f"  {r['dataset']} model rate: {r['model_note']}")
    worst = min(r["ratio"] for r in rows)
    t = target("loader vs model demand (worst dataset, 1 worker)", f"{worst}x", ">= 3x", worst >= 3.0,
               "ratio = min(HDF5 read, batch assembly) / RU-Net full training images/s; CPU model (a GPU consumes "
               "faster: re-run there)")
    return finish("data_loading", {"quick": quick, "rows": rows, "targets": [t]}, save, started, info)


def main(argv: list[str] | None = None) -> int:
    return standard_main("data_loading", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
