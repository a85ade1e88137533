"""Per-pixel HyperSL feature export and the feature cache every cross-domain trial reads.

Mirrors the cross-domain paper's export (``shared/reference/benchmark.md`` §4.2)
exactly: each image is flattened to H·W spectra in raster order, fed **raw** (no
normalisation) in consecutive chunks of 5,000 (HSI-Drive, HCV2) or 50,000
(HyKo2) pixels, mask ratio 0, fp32 compute; the output replaces ``image`` with
(H, W, D) features and copies ``labels`` unchanged, one ``<dataset>_<split>.h5``
per split (HS3-Bench layout).

BatchNorm: the paper never called ``eval()``, so the stem's BatchNorms used
each chunk's own batch statistics (a chunk-level input normalisation that
absorbs the raw-scale mismatch). ``bn_mode="chunk"`` reproduces that without
touching the stored running statistics (``track_running_stats`` is switched off
for the export); ``bn_mode="running"`` is plain eval mode. In chunk mode the
features depend on the chunk size, which is therefore part of the cache key.

Why a cache: the per-pixel transformer is the expensive part of a study
(design.md §6). A frozen backbone's features are computed once per (checkpoint
hash, dataset source, split, bn mode, chunk size, dtype) and every trial reuses
them; files are written under a temporary name and renamed, and a file lock
makes concurrent Ray workers compute a split only once.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from study.errors import HsiStudyError
from study.models.hypersl import BN_MODES

#: Paper chunk sizes (pixels per BatchNorm batch) per dataset; others default to 5,000.
DEFAULT_CHUNKS: dict[str, int] = {"hsidrive": 5000, "hcv2": 5000, "hyko2": 50000}
DTYPES: dict[str, type[np.floating]] = {"float16": np.float16, "float32": np.float32}
#: Bump when the export changes what a given (checkpoint, data, settings) produces.
FEATURE_VERSION = 1


def default_chunk(dataset: str) -> int:
    return DEFAULT_CHUNKS.get(dataset, 5000)


def _check_settings(bn_mode: str, chunk_size: int, dtype: str) -> None:
    if bn_mode not in BN_MODES:
        raise HsiStudyError(f"bn mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise HsiStudyError(f"chunk size must be a positive integer, got {chunk_size!r}")
    if dtype not in DTYPES:
        raise HsiStudyError(f"feature dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


@contextmanager
def bn_context(model: nn.Module, bn_mode: str) -> Iterator[nn.Module]:
    """Eval mode, except that in ``chunk`` mode BatchNorms normalise with the batch's own statistics.

    Running statistics and ``num_batches_tracked`` are left untouched; the
    module's training flags are restored on exit.
    """
    modes = {m: (m.training, getattr(m, "track_running_stats", None)) for m in model.modules()}
    model.eval()
    if bn_mode == "chunk":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False
    try:
        yield model
    finally:
        for m, (training, track) in modes.items():
            m.training = training
            if track is not None:
                m.track_running_stats = track


def export_image(model: nn.Module, image: np.ndarray, wavelengths: np.ndarray, *, bn_mode: str = "chunk",
                 chunk_size: int = 5000, dtype: str = "float32", device: str | torch.device = "cpu",
                 on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """Features (H, W, D) of one raw image (H, W, C): raster-order chunks, no normalisation.

    ``model`` must expose ``features(spectra (N, C), wavelengths (C,)) -> (N, D)``
    (HyperSL) and already sit on ``device``.
    """
    _check_settings(bn_mode, chunk_size, dtype)
    if image.ndim != 3 or image.shape[-1] != len(wavelengths):
        raise HsiStudyError(f"image of shape {image.shape} does not match {len(wavelengths)} wavelengths")
    h, w, c = image.shape
    flat = np.ascontiguousarray(image, dtype=np.float32).reshape(h * w, c)
    wl = torch.as_tensor(np.asarray(wavelengths, dtype=np.float32), device=device)
    out: np.ndarray | None = None
    with torch.inference_mode(), bn_context(model, bn_mode):
        for start in range(0, h * w, chunk_size):
            x = torch.from_numpy(flat[start : start + chunk_size]).to(device)
            z = model.features(x, wl).float().cpu().numpy()
            if out is None:
                out = np.empty((h * w, z.shape[1]), dtype=DTYPES[dtype])
            out[start : start + z.shape[0]] = z
            if on_chunk is not None:
                on_chunk(z.shape[0])
    assert out is not None
    if not np.all(np.isfinite(out)):
        hint = " (float16 overflow: use --dtype float32)" if dtype == "float16" else ""
        raise HsiStudyError(f"non-finite features{hint}; check the input values and the backbone")
    return out.reshape(h, w, -1)


class Progress:
    """Plain stderr progress lines (at most every ``every_s`` seconds), readable in Ray and CI logs."""

    def __init__(self, label: str, total_pixels: int, enabled: bool = True, every_s: float = 10.0) -> None:
        self.label, self.total, self.enabled, self.every = label, max(1, total_pixels), enabled, every_s
        self.done, self.t0 = 0, time.perf_counter()
        self.last = self.t0

    def update(self, pixels: int) -> None:
        self.done += pixels
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.every or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            print(f"[hsistudy] features {self.label}: {100 * self.done / self.total:5.1f}% "
                  f"({self.done:,}/{self.total:,} px, {rate:,.0f} px/s, ETA {eta:.0f} s)", file=sys.stderr, flush=True)


def export_split(model: nn.Module, data_root: str | Path, dataset: str, split: str, out_path: str | Path, *,
                 ckpt_hash: str = "", bn_mode: str = "chunk", chunk_size: int | None = None,
                 dtype: str = "float16", device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Write ``out_path``: every sample of ``<data_root>/<dataset>_<split>.h5`` with ``image`` -> features."""
    from study.data.h5reader import open_split
    from study.data.specs import get_spec

    chunk = default_chunk(dataset) if chunk_size is None else chunk_size
    _check_settings(bn_mode, chunk, dtype)
    spec = get_spec(dataset)
    src = open_split(data_root, spec, split)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    bar = Progress(f"{dataset}/{split}", sum(h * w for h, w in src.shapes), progress)
    try:
        with h5py.File(src.path, "r") as raw, h5py.File(tmp, "w") as fh:
            for name in src.names:
                image, _ = src.read(name)  # float32 (H, W, C), values checked; labels copied raw below
                feats = export_image(model, image, src.wavelengths, bn_mode=bn_mode, chunk_size=chunk, dtype=dtype,
                                     device=device, on_chunk=bar.update)
                grp = fh.create_group(name)
                grp.create_dataset("image", data=feats)
                grp.create_dataset("labels", data=raw[name]["labels"][()])
            fh.attrs.update({
                "checkpoint_hash": ckpt_hash, "bn_mode": bn_mode, "chunk_size": chunk, "dtype": dtype,
                "feature_dim": int(feats.shape[-1]), "source_file": str(src.path), "source_stat": _stat(src.path),
                "source_wavelengths": src.wavelengths, "dataset": dataset, "split": split,
                "feature_version": FEATURE_VERSION, "complete": True,
            })
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


# ---------------------------------------------------------------- cache
def _stat(path: Path) -> str:
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def source_id(data_root: str | Path) -> str:
    """10 hex digits naming a data folder (resolved path): synthetic and real data never share features."""
    return hashlib.sha256(str(Path(data_root).resolve()).encode()).hexdigest()[:10]


def feature_cache_path(cache_dir: str | Path, ckpt_hash: str, dataset: str, split: str, bn_mode: str, chunk: int,
                       dtype: str, source: str = "") -> Path:
    """``<cache>/features/<ckpt>/<dataset>[-<source>]-<bn>-c<chunk>-<dtype>/<dataset>_<split>.h5``.

    The folder is itself an HS3-Bench data root (one file per split).
    """
    _check_settings(bn_mode, chunk, dtype)
    tag = f"{dataset}-{source}" if source else dataset
    return Path(cache_dir) / "features" / ckpt_hash / f"{tag}-{bn_mode}-c{chunk}-{dtype}" / f"{dataset}_{split}.h5"


def _is_current(path: Path, source_file: Path) -> bool:
    """A finished cache file made from the current version of its source file."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as fh:
            attrs = dict(fh.attrs)
    except OSError:
        return False
    return bool(attrs.get("complete")) and attrs.get("feature_version") == FEATURE_VERSION and \
        source_file.is_file() and attrs.get("source_stat") == _stat(source_file)


def ensure_features(cache_dir: str | Path, backbone: str | Path, data_root: str | Path, dataset: str,
                    splits: tuple[str, ...] | list[str] | None = None, *, bn_mode: str = "chunk",
                    chunk_size: int | None = None, dtype: str = "float16", device: str | torch.device = "cpu",
                    progress: bool = True) -> Path:
    """Folder holding ``<dataset>_<split>.h5`` feature files, computing each missing split once.

    Reused when the file exists, is complete and its source file is unchanged
    (size + mtime); otherwise (re)computed under a per-file lock.
    """
    from study.data.specs import get_spec
    from study.filelock import file_lock
    from study.models.checkpoints import checkpoint_hash, load_hypersl

    spec = get_spec(dataset)
    chunk = default_chunk(dataset) if chunk_size is None else chunk_size
    ckpt = checkpoint_hash(backbone)
    model: nn.Module | None = None
    folder = None
    for split in splits or spec.splits:
        path = feature_cache_path(cache_dir, ckpt, dataset, split, bn_mode, chunk, dtype, source_id(data_root))
        folder = path.parent
        source_file = Path(data_root) / spec.file_name(split)
        if _is_current(path, source_file):
            continue
        with file_lock(path.with_name(f".{path.name}.lock")):
            if _is_current(path, source_file):
                continue
            if model is None:
                model = load_hypersl(backbone).to(device)
            export_split(model, data_root, dataset, split, path, ckpt_hash=ckpt, bn_mode=bn_mode, chunk_size=chunk,
                         dtype=dtype, device=device, progress=progress)
    assert folder is not None
    return folder


EXAMPLES = """\
examples:
  python -m study.features --backbone default --dataset hyko2 --out /tmp/feats
      features of the embedded synthetic HyKo2-like data with the cached sanity-pretrained `cpu` backbone
  python -m study.features --backbone 5_base_mask95_checkpoint.pt --data /data/hs3bench/hsidrive \\
      --dataset hsidrive --out /data/hs3bench/hsidrive/hypersl --dtype float32 --device cuda
      the paper's export (train-mode BN per 5,000-pixel chunk) with the released weights
  python -m study.features --backbone ckpt.pt --data ROOT --dataset hyko2 --out DIR --bn-mode running --splits test
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.features", epilog=EXAMPLES,
                                description="Export per-pixel HyperSL features in the HS3-Bench HDF5 layout.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="HyperSL checkpoint (.pt released layout or .safetensors), or "
                   "'default' for the cached sanity-pretrained cpu backbone")
    p.add_argument("--data", type=Path, default=None, help="folder with <dataset>_{train,val,test}.h5 "
                   "(default: the embedded synthetic data)")
    p.add_argument("--dataset", required=True, help="hyko2, hsidrive or hcv2")
    p.add_argument("--out", type=Path, required=True, help="output folder for <dataset>_<split>.h5")
    p.add_argument("--bn-mode", default="chunk", choices=BN_MODES,
                   help="chunk: train-mode BN statistics per chunk (paper); running: eval mode (default chunk)")
    p.add_argument("--chunk-size", type=int, default=None, help="pixels per chunk (default 5000; hyko2 50000)")
    p.add_argument("--dtype", default="float16", choices=tuple(DTYPES), help="stored dtype (default float16)")
    p.add_argument("--splits", default=None, help="comma list of splits (default train,val,test)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from study.data.specs import get_spec
        from study.models.checkpoints import checkpoint_hash, load_hypersl

        spec = get_spec(args.dataset)
        if args.threads is not None:
            torch.set_num_threads(max(1, args.threads))
        if args.backbone == "default":
            from study.pretrain import ensure_default_backbone

            backbone = ensure_default_backbone(progress=not args.quiet)
        else:
            backbone = Path(args.backbone)
        data = args.data
        if data is None:
            from study.data.generator import ensure_default_dataset

            data = ensure_default_dataset(spec, progress=not args.quiet)
        splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else list(spec.splits)
        for s in splits:
            spec.file_name(s)  # ValueError for an unknown split
        model = load_hypersl(backbone).to(args.device)
        ckpt = checkpoint_hash(backbone)
        for split in splits:
            out = export_split(model, data, args.dataset, split, args.out / spec.file_name(split), ckpt_hash=ckpt,
                               bn_mode=args.bn_mode, chunk_size=args.chunk_size, dtype=args.dtype,
                               device=args.device, progress=not args.quiet)
            print(out)
        return 0
    except (HsiStudyError, ValueError, OSError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
