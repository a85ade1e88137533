"""Sharded HyperSL feature export: contiguous image shards, one part file each, assembled atomically.

Why: HCV2 has 1,330 images of 711x944x128; the small encoder costs about
1.8 GFLOP per pixel, ~1.2 PFLOP per image, so one GPU needs over an hour for the
data set and one process on a CPU weeks. Each shard (a contiguous run of a
split's samples in sorted-name order) is exported by itself, by a Ray task on
any node (one GPU each where the cluster has GPUs) or here one after another,
into ``.<split file>.parts/part-<i>-of-<n>.h5``. A finished part is kept, so an
interrupted export resumes with the missing shards only. When all parts are
there they are copied group by group into a temporary file that is renamed to
the split file, which is then exactly what :func:`study.features.export.export_split`
writes (same groups, same attributes): readers and staging see one file.

BatchNorm semantics do not change: each image is exported by itself
(:func:`study.features.export.export_image`), raster order, the paper's chunk sizes.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import torch

from study.errors import HsiStudyError
from study.features.export import FEATURE_VERSION, Progress, default_chunk, export_images, feature_attrs, temp_path
from study.progress import SIGNAL_POLL_S, reinstall_signals

#: root attributes of a part that must equal the requested settings for the part to be reused
_SETTING_KEYS = ("checkpoint_hash", "bn_mode", "chunk_size", "dtype", "feature_version", "source_stat")


def shard_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous, near-equal ``[start, stop)`` ranges covering ``range(n)`` (no empty one)."""
    k = max(1, min(int(shards), n))
    bounds = [i * n // k for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


def parts_dir(out_path: Path) -> Path:
    return out_path.with_name(f".{out_path.name}.parts")


def part_path(out_path: Path, i: int, n: int) -> Path:
    return parts_dir(out_path) / f"part-{i:05d}-of-{n:05d}.h5"


def _wanted(settings: dict[str, Any], source_stat: str) -> dict[str, Any]:
    return {"checkpoint_hash": settings["ckpt_hash"], "bn_mode": settings["bn_mode"],
            "chunk_size": settings["chunk_size"], "dtype": settings["dtype"], "feature_version": FEATURE_VERSION,
            "source_stat": source_stat}


def part_is_done(path: Path, names: list[str], settings: dict[str, Any], source_stat: str) -> bool:
    """A complete part of exactly these samples, made with these settings from this source version."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as fh:
            attrs = dict(fh.attrs)
            stored = sorted(fh)
    except OSError:
        return False
    want = _wanted(settings, source_stat)
    same = all(attrs.get(k) == want[k] for k in _SETTING_KEYS)
    return bool(attrs.get("complete")) and same and attrs.get("autocast", "off") == settings["autocast"] and \
        stored == sorted(names)


def export_part(backbone: str | Path, data_root: str | Path, dataset: str, split: str, names: list[str],
                part: str | Path, settings: dict[str, Any], device: str | None = None,
                model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Export the samples ``names`` of one split into the part file ``part`` (temp file + rename).

    Runs inside a Ray task (``device`` None: CUDA when Ray gave the task a GPU) or in the
    driver with an already loaded ``model``. Returns what it did, for the progress line.
    """
    from study.data.datasets import open_split
    from study.data.specs import get_spec
    from study.models.checkpoints import load_hypersl
    from study.train.devices import pick_device

    t0 = time.perf_counter()
    root, part = Path(data_root), Path(part)
    if not root.is_dir() or not part.parent.parent.is_dir():
        missing = root if not root.is_dir() else part.parent.parent
        raise HsiStudyError(f"{missing} does not exist on node {socket.gethostname()}: a cluster feature export "
                            "needs the data root and the feature cache on storage every node mounts at the same path")
    part.parent.mkdir(exist_ok=True)
    dev = device or pick_device().type  # in a Ray task: CUDA only with a GPU of its own (num_gpus=0 -> CPU)
    if model is None:
        model = load_hypersl(backbone).to(dev)
    src = open_split(root, get_spec(dataset), split)
    tmp = temp_path(part)
    try:
        with h5py.File(tmp, "w") as fh:
            dim = export_images(model, src, names, fh, bn_mode=settings["bn_mode"], chunk=settings["chunk_size"],
                                dtype=settings["dtype"], device=dev, autocast=settings["autocast"],
                                on_chunk=settings.get("on_chunk"))
            fh.attrs.update(feature_attrs(src, ckpt_hash=settings["ckpt_hash"], bn_mode=settings["bn_mode"],
                                          chunk=settings["chunk_size"], dtype=settings["dtype"],
                                          autocast=settings["autocast"], dim=dim, dataset=dataset, split=split))
        os.replace(tmp, part)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    pixels = _pixels(src, names)
    return {"part": str(part), "images": len(names), "pixels": pixels, "seconds": time.perf_counter() - t0,
            "device": dev, "node": socket.gethostname()}


def _pixels(src: Any, names: list[str]) -> int:
    shape = dict(zip(src.names, src.shapes, strict=True))
    return sum(shape[n][0] * shape[n][1] for n in names)


def assemble(parts: list[Path], out_path: Path, names: list[str]) -> Path:
    """Copy every part's groups into one file (temp + rename), with the parts' common root attributes."""
    tmp = temp_path(out_path)
    try:
        with h5py.File(tmp, "w") as dst:
            attrs: dict[str, Any] = {}
            for part in parts:
                with h5py.File(part, "r") as src:
                    attrs = attrs or dict(src.attrs)
                    for name in sorted(src):
                        src.copy(src[name], dst, name=name)
            if sorted(dst) != sorted(names):
                raise HsiStudyError(f"{out_path}: the parts hold {len(dst)} samples, the split {len(names)}")
            dst.attrs.update(attrs)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(parts_dir(out_path), ignore_errors=True)
    return out_path


def default_shards(n_images: int, cluster: bool) -> int:
    """Four shards per GPU of the cluster (or per CPU without GPUs): balance, and small resume steps."""
    if not cluster:
        return 1
    import ray

    res = ray.cluster_resources()
    workers = int(res.get("GPU", 0)) or int(res.get("CPU", 1))
    return max(1, min(n_images, 4 * workers))


def _run_on_cluster(jobs: list[tuple[int, list[str], Path]], call: dict[str, Any], label: str,
                    progress: bool) -> None:
    """One Ray task per missing part (1 GPU each where the cluster has GPUs); waits for all, reports each."""
    import ray

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(export_part)
    pending = {task.remote(names=names, part=str(part), **call): i for i, names, part in jobs}
    errors, done = [], 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=SIGNAL_POLL_S)  # wakes for Ctrl+C / SIGTERM
        if not ready:
            continue
        i = pending.pop(ready[0])
        try:
            info = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - one failed shard must not hide the others' progress
            errors.append(f"shard {i}: {str(exc).strip().splitlines()[-1]}")
            continue
        done += 1
        if progress:
            print(f"[hsistudy] features {label}: shard {i} done on {info['node']} ({info['device']}): "
                  f"{info['images']} images, {info['pixels'] / max(info['seconds'], 1e-9):,.0f} px/s; "
                  f"{done}/{len(jobs)} missing shards finished", file=sys.stderr, flush=True)
    if errors:
        raise HsiStudyError(f"features {label}: {len(errors)} of {len(jobs)} shards failed (finished shards are "
                            f"kept; run again to resume): " + "; ".join(errors[:3]))


def export_split_sharded(backbone: str | Path, data_root: str | Path, dataset: str, split: str,
                         out_path: str | Path, *, ckpt_hash: str, bn_mode: str = "chunk", chunk_size: int | None = None,
                         dtype: str = "float16", autocast: str = "off", shards: int | None = None,
                         cluster: bool = False, device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Export a split as contiguous image shards (parts reused when finished), then assemble ``out_path``.

    ``cluster``: one Ray task per missing shard (``ray.init()`` if not connected;
    ``device`` is then each node's: CUDA where it has it); else here, on ``device``.
    """
    from study.data.datasets import open_split
    from study.data.specs import get_spec
    from study.models.checkpoints import load_hypersl

    out_path = Path(out_path)
    src = open_split(data_root, get_spec(dataset), split)
    names = list(src.names)
    if cluster:
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
            reinstall_signals()  # ray.init replaced our SIGTERM handler with its own (exit 1, no hint)
    n = shards if shards is not None else default_shards(len(names), cluster)
    ranges = shard_ranges(len(names), n)
    settings = {"ckpt_hash": ckpt_hash, "bn_mode": bn_mode, "autocast": autocast, "dtype": dtype,
                "chunk_size": default_chunk(dataset) if chunk_size is None else chunk_size}
    stat = f"{src.path.stat().st_size}:{src.path.stat().st_mtime_ns}"
    parts = [part_path(out_path, i, len(ranges)) for i in range(len(ranges))]
    parts[0].parent.mkdir(parents=True, exist_ok=True)
    jobs = [(i, names[a:b], parts[i]) for i, (a, b) in enumerate(ranges)
            if not part_is_done(parts[i], names[a:b], settings, stat)]
    label = f"{dataset}/{split}"
    if progress:
        print(f"[hsistudy] features {label}: {len(ranges)} shards, {len(ranges) - len(jobs)} already done, "
              f"{len(jobs)} to export{' on the Ray cluster' if cluster else ''}", file=sys.stderr, flush=True)
    call = {"backbone": str(backbone), "data_root": str(Path(data_root).absolute()), "dataset": dataset,
            "split": split, "settings": settings}
    if cluster and jobs:
        _run_on_cluster(jobs, call, label, progress)
    elif jobs:
        model = load_hypersl(backbone).to(device)
        bar = Progress(label, sum(_pixels(src, ns) for _, ns, _ in jobs), progress)
        for _i, part_names, part in jobs:
            export_part(model=model, device=str(device), names=part_names, part=part,
                        **{**call, "settings": {**settings, "on_chunk": bar.update}})
    return assemble(parts, out_path, names)

