"""Per-trial data supply by placement (``--data-placement``) against what the model consumes on an H100.

``python -m benchmarks.loader --json`` writes one training split per dataset shape (HyKo2 254 x 510 x 15 and
HSI-Drive 216 x 409 x 25 float32 cubes, HCV2 711 x 944 x 128 as the release's PCA scores, D = 6, float16: how
``study.prepare hcv2 --format pca --storage-dtype float16`` keeps it), image sides times ``--scale``, and for
each placement (``stream``, ``memory``, ``device``) runs ``--epochs`` shuffled epochs of ``--batch`` images as a
trial does: the placement's streams, then ``loop.to_tensors`` (the copy to the device and the channel-first
permute). It prints one row per dataset x placement:

- ``supply_img_s``: images per second delivered to the model over epochs 2.. (epoch 1 starts workers, writes the
  node copy, warms the page cache); ``device`` on the CUDA device when there is one, else on CPU tensors;
- ``demand_img_s_h100``: a full-width RU-Net training step (forward x 3, ``torch.utils.flop_counter`` on the
  meta device) at 40 % of an H100's dense bf16 peak (989 TFLOP/s), at the image size measured; ``ratio`` =
  supply / demand (target >= 3);
- ``disk_bytes_per_epoch``: bytes the iterating thread and the loader workers read per epoch after the first
  (the ``rchar`` of ``/proc/<pid>/task/<tid>/io`` and of the workers' ``/proc/<pid>/io``: every ``read()``, from
  files or pipes, less this benchmark's own reads of ``/proc``; other threads and processes that were there
  before, such as a test session's Ray, are not the loader's);
- ``h2d_bytes_per_epoch``: bytes a CUDA trial copies from host to device per epoch after the first: the host
  batches handed to the model, and for HCV2 the stored scores, coefficients and means its device decodes
  (the trial's ``decode_device`` path, run on the CPU here). On a CPU the device *is* the host, so ``device``
  counts nothing and the others count what would cross.

Reads come from the page cache (the files were just written): the upper bound of a local disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

H100_BF16_DENSE = 989e12
MFU = 0.40
#: dataset -> ((H, W) of its HS3-Bench images, how the benchmark stores them)
SHAPES: dict[str, tuple[tuple[int, int], str]] = {"hyko2": ((254, 510), "cube"), "hsidrive": ((216, 409), "cube"),
                                                  "hcv2": ((711, 944), "pca")}
PLACEMENTS = ("stream", "memory", "device")
PCA_D = 6


def write_split(folder: Path, dataset: str, n: int, scale: float, seed: int = 0) -> Any:
    """``<dataset>_train.h5`` of ``n`` images at ``scale`` of the real size; its SplitRef."""
    import h5py

    from study.data.bundle import split_ref
    from study.data.h5reader import H5Split
    from study.data.specs import get_spec
    from study.data.storage import storage_attrs, to_storage

    spec = get_spec(dataset)
    (h0, w0), fmt = SHAPES[dataset]
    h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    rng = np.random.default_rng(seed)
    raw_ids = np.array([spec.raw_label_of(c) for c in range(spec.n_classes)], dtype=np.uint8)
    path = folder / spec.file_name("train")
    with h5py.File(path, "w") as fh:
        fh.attrs["wavelengths"] = spec.wavelength_array()
        for k, v in storage_attrs(fmt, "float16" if fmt == "pca" else "float32").items():
            fh.attrs[k] = v
        for i in range(n):
            g = fh.create_group(f"img{i:04d}")
            if fmt == "pca":
                g["scores"] = to_storage(rng.normal(size=(h, w, PCA_D)).astype(np.float32), "float16")
                g["coefficients"] = rng.normal(size=(PCA_D, spec.n_bands)).astype(np.float32)
                g["means"] = (100 + 100 * rng.random(spec.n_bands)).astype(np.float32)
            else:
                g["image"] = rng.random((h, w, spec.n_bands), dtype=np.float32)
            g["labels"] = raw_ids[rng.integers(0, raw_ids.size, size=(h, w))]
    return split_ref(H5Split(path, spec, check_values=False))


def demand_img_s(n_bands: int, n_classes: int, hw: tuple[int, int]) -> float:
    """Full-width RU-Net training images/s on an H100 at 40 % of dense bf16 peak (FLOPs counted on ``meta``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from study.models.runet import build_runet

    with torch.device("meta"):
        model = build_runet(n_bands, n_classes, width="full")
        x = torch.empty(1, n_bands, *hw)
    with FlopCounterMode(display=False) as fc:
        model(x)
    return MFU * H100_BF16_DENSE / (3.0 * fc.get_total_flops())


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (loader workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def read_chars(others: frozenset[int] = frozenset()) -> tuple[int, int]:
    """(rchar of this thread and of this process's descendants except ``others``, bytes this call itself read
    from /proc). This thread, not the process: another thread of it (Ray's core worker in a test session, a
    logging thread) reads pipes and sockets that are no data; ``others``: processes that were there before the
    streams opened (Ray's own), so only the loader's workers count besides the thread that iterates."""
    total = own = 0
    pids = [p for p in _tree(os.getpid()) if p != os.getpid() and p not in others]
    for path in [Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/io"),
                 *(Path(f"/proc/{p}/io") for p in pids)]:
        try:
            text = path.read_text()
        except OSError:
            continue
        own += len(text.encode()) if path.parts[3] == "task" else 0
        total += next(int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("rchar:"))
    return total, own


def measure(split: Any, placement: str, device: torch.device, batch: int, epochs: int, workers: int,
            ) -> dict[str, Any]:
    """One placement over ``split``: images/s, disk and host->device bytes per epoch after the first."""
    import study.data.stream as stream_module
    from study.data.placement import open_streams
    from study.data.stream import LoaderSettings
    from study.train.loop import epoch_plan, to_tensors

    pca = getattr(split, "storage_format", "cube") == "pca"
    settings = LoaderSettings(workers=workers if placement == "stream" else 0, prefetch=2,
                              pin_memory=device.type == "cuda", decode_device=str(device) if pca else None)
    crossing = device.type == "cuda" or placement != "device"
    h2d = [0]

    def host(t: torch.Tensor) -> int:
        return t.numel() * t.element_size() if crossing and t.device.type == "cpu" else 0

    real_to_device: Callable[..., torch.Tensor] = stream_module.to_device

    def counting(x: torch.Tensor, dev: torch.device) -> torch.Tensor:
        h2d[0] += host(x)  # decode_batch's inputs: the stored scores, coefficients and means
        return real_to_device(x, dev)

    rng = np.random.default_rng(0)
    others = frozenset(_tree(os.getpid()))  # processes not of this benchmark's making (a test's Ray)
    streams = open_streams(split, split, split, settings, placement, device, train_batch=batch)
    stream_module.to_device = counting
    try:
        times, disk = [], 0
        for epoch in range(epochs):
            plan = epoch_plan(len(split), batch, rng)
            h2d[0] = 0 if epoch == 1 else h2d[0]
            before, own = read_chars(others)
            t0 = time.perf_counter()
            for images, labels in streams.train.batches(plan):
                if epoch >= 1:
                    h2d[0] += host(labels) + (0 if pca else host(images))  # decoded images are the device's
                x, _ = to_tensors(images, labels, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            after, _ = read_chars(others)
            if epoch >= 1:
                disk += after - before - own
    finally:
        stream_module.to_device = real_to_device
        streams.close()
    measured = max(1, epochs - 1)
    return {"supply_img_s": round(len(split) * measured / sum(times[1:]), 2) if epochs > 1 else None,
            "disk_bytes_per_epoch": int(disk / measured), "h2d_bytes_per_epoch": int(h2d[0] / measured),
            "first_epoch_s": round(times[0], 3)}


def rows(datasets: list[str], scale: float, images: int, batch: int, epochs: int, workers: int,
         device: torch.device, work: Path) -> list[dict[str, Any]]:
    """Every dataset x placement row (see the module docstring)."""
    from study.data.shared_copy import DIR_ENV, sweep
    from study.data.specs import get_spec

    out = []
    copies = Path(tempfile.mkdtemp(prefix="hsistudy-bench-copies-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                                   else None))
    previous = os.environ.get(DIR_ENV)
    os.environ[DIR_ENV] = str(copies)
    try:
        for dataset in datasets:
            spec = get_spec(dataset)
            folder = work / dataset
            folder.mkdir(parents=True, exist_ok=True)
            split = write_split(folder, dataset, images, scale)
            hw = split.shapes[0]
            demand = demand_img_s(spec.n_bands, spec.n_classes, hw)
            stored = f"pca float16 D={PCA_D}" if split.storage_format == "pca" else "cube float32"
            for placement in PLACEMENTS:
                row: dict[str, Any] = {"dataset": dataset, "placement": placement}
                row.update(measure(split, placement, device, min(batch, images), epochs, workers))
                row.update(demand_img_s_h100=round(demand, 1),
                           ratio=None if row["supply_img_s"] is None else round(row["supply_img_s"] / demand, 3),
                           image=f"{hw[0]}x{hw[1]}x{spec.n_bands}", scale=scale, stored=stored, images=images,
                           batch=min(batch, images), device=str(device),
                           workers=workers if placement == "stream" else 0)
                out.append(row)
            sweep(copies, idle_s=0)
    finally:
        shutil.rmtree(copies, ignore_errors=True)
        if previous is None:
            os.environ.pop(DIR_ENV, None)
        else:
            os.environ[DIR_ENV] = previous
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list (else a table)")
    p.add_argument("--datasets", default=",".join(SHAPES), help="comma list of hyko2, hsidrive, hcv2")
    p.add_argument("--scale", type=float, default=1.0, help="factor on the images' height and width (default 1)")
    p.add_argument("--images", type=int, default=16, help="training images per split (default 16)")
    p.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per placement; the first is not timed (default 3)")
    p.add_argument("--workers", type=int, default=None,
                   help="stream's loader workers (default: this machine's CPUs - 1, at most 8)")
    p.add_argument("--work", type=Path, default=None, help="folder for the split files (default: a temp folder)")
    args = p.parse_args(argv)
    if args.epochs < 2 or args.images < 1 or not args.scale > 0:
        p.error("--epochs must be >= 2, --images >= 1 and --scale > 0")
    workers = args.workers if args.workers is not None else min(8, max(0, (os.cpu_count() or 1) - 1))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)  # a trial's compute thread; loader workers run beside it
    work = args.work or Path(tempfile.mkdtemp(prefix="hsistudy-loader-"))
    try:
        out = rows([d.strip() for d in args.datasets.split(",") if d.strip()], args.scale, args.images, args.batch,
                   args.epochs, workers, device, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        keys = ("dataset", "placement", "image", "supply_img_s", "demand_img_s_h100", "ratio", "disk_bytes_per_epoch",
                "h2d_bytes_per_epoch")
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in out:
            print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
