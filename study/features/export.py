"""Per-pixel HyperSL feature export and the feature cache every cross-domain trial reads.

Mirrors the cross-domain paper's export (``docs/reference.md`` §R17)
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

At scale (design.md §8): images stream through one at a time (the next one is
read and the last one written by a helper thread while the backbone runs), the
transformer runs on several BatchNorm chunks at once, or on part of one, as many pixels as the device's
free memory holds (:func:`pass_pixels`; the stem still normalises each whole chunk by itself, and the
transformer is per pixel, so the features are the paper's for any pass size),
``autocast="bf16"`` is an opt-in with its own cache key (measured against fp32
in docs/performance.md), and :mod:`study.features.shards` spreads a split over
Ray tasks, one contiguous image shard each.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from study.errors import HsiStudyError
from study.models.hypersl import BN_MODES
from study.models.precision import ieee_fp32
from study.progress import result_of

#: Paper chunk sizes (pixels per BatchNorm batch) per dataset; others default to 5,000.
DEFAULT_CHUNKS: dict[str, int] = {"hsidrive": 5000, "hcv2": 5000, "hyko2": 50000}
DTYPES: dict[str, type[np.floating]] = {"float16": np.float16, "float32": np.float32}
#: Bump when the export changes what a given (checkpoint, data, settings) produces.
FEATURE_VERSION = 1
#: Compute precision of the backbone: ``off`` = fp32 (the paper's), ``bf16`` = bf16 autocast (own cache key).
AUTOCAST_MODES: tuple[str, ...] = ("off", "bf16")
#: The default everywhere (CLI, ensure_features): fp32. Why: docs/performance.md "Feature export".
DEFAULT_AUTOCAST = "off"
#: Most pixels per transformer pass on a GPU: big passes keep it busy; what fits its free memory decides below.
GPU_COMPUTE_PIXELS = 65536
#: Peak device memory of one transformer pass over one fp32 activation (pixels x tokens x dim x 4 B), per
#: compute precision: a pre-LN block in inference holds its input, the LN output and the MLP's 4 x D hidden
#: layer twice (fc1, GELU) at its peak, ~11 activations in fp32, ~7 under bf16 autocast (the residual stays
#: fp32). Estimated from the block's tensors; the ``gpu`` test measures it (``tests/test_gpu_node.py``).
PASS_PEAK_FACTOR: dict[str, float] = {"off": 11.0, "bf16": 7.0}
#: Share of the device's free memory one pass may use: the rest holds the stem of a chunk, the image's output
#: and the caching allocator's fragmentation.
PASS_MEMORY_SHARE = 0.6


def default_chunk(dataset: str) -> int:
    return DEFAULT_CHUNKS.get(dataset, 5000)


def check_settings(bn_mode: str, chunk_size: int, dtype: str, autocast: str = "off") -> None:
    if autocast not in AUTOCAST_MODES:
        raise HsiStudyError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {autocast!r}")
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


def autocast_context(device: str | torch.device, autocast: str) -> Any:
    """bf16 autocast on ``device`` (CUDA or CPU) for ``autocast="bf16"``, else nothing (fp32)."""
    if autocast == "off":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def free_device_memory(device: str | torch.device) -> int:
    """Bytes a pass may allocate on a CUDA ``device``: the driver's free memory plus what this process's caching
    allocator holds unused (``torch.cuda.mem_get_info`` does not count it as free)."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    free, _total = torch.cuda.mem_get_info(index)
    return int(free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))


def pass_pixels(n_tokens: int, dim: int, chunk_size: int, device: str | torch.device, autocast: str = "off",
                compute_pixels: int | None = None, free_bytes: int | None = None) -> int:
    """Pixels per transformer pass: ``compute_pixels`` if given; one BN chunk on a CPU; on a GPU as many as
    :data:`PASS_MEMORY_SHARE` of its free memory holds at :data:`PASS_PEAK_FACTOR` x ``n_tokens x dim x 4`` bytes
    per pixel (at most :data:`GPU_COMPUTE_PIXELS`). A pass of at least one chunk is rounded down to whole chunks;
    a smaller one runs on part of a chunk whose tokens stay alive meanwhile (counted against the budget).

    HCV2 with HyperSL-small (129 tokens, D = 256) in fp32: 1.45 MB per pixel, so 5,000 pixels on a 24 GB
    A10G, 35,000 on an 80 GB H100 (not the 65,000 that needed ~94 GB before)."""
    if compute_pixels is not None:
        want = int(compute_pixels)
    elif torch.device(device).type != "cuda":
        want = chunk_size
    else:
        activation = n_tokens * dim * 4
        budget = PASS_MEMORY_SHARE * (free_device_memory(device) if free_bytes is None else free_bytes)
        want = int(budget // (activation * PASS_PEAK_FACTOR[autocast]))
        if want < chunk_size:  # part of one chunk: that chunk's tokens (one activation) are held meanwhile
            want = int(max(0.0, budget - chunk_size * activation) // (activation * PASS_PEAK_FACTOR[autocast]))
        want = min(want, GPU_COMPUTE_PIXELS)
    want = max(1, want)
    return want if want < chunk_size else want // chunk_size * chunk_size


def _tokens(model: nn.Module, x: torch.Tensor, wl: torch.Tensor, chunk_size: int, bn_mode: str) -> torch.Tensor:
    """Stem tokens of ``x`` (whole BN chunks): per chunk in ``chunk`` mode (its BN statistics are its own)."""
    step = chunk_size if bn_mode == "chunk" else x.shape[0]
    return torch.cat([model.tokens(x[s : s + step], wl)[0] for s in range(0, x.shape[0], step)])


def _features(model: nn.Module, x: torch.Tensor, wl: torch.Tensor, chunk_size: int, bn_mode: str,
              autocast: str, device: str | torch.device, step: int) -> Iterator[torch.Tensor]:
    """Features of ``x`` (one or several whole BN chunks), ``step`` pixels at a time: the stem per chunk (its BN
    statistics are the chunk's own in ``chunk`` mode), the transformer on ``step`` pixels at once (per pixel,
    so how the pixels are grouped changes nothing).

    bf16 autocast covers the transformer only: the stem stays fp32 because its BatchNorm subtracts the
    chunk mean from conv outputs of raw values, and a bf16 conv output of raw counts (e.g. 3000 +- 50)
    loses the small differences that remain (docs/performance.md "Feature export").
    """
    if not all(hasattr(model, a) for a in ("tokens", "run_blocks", "aggregate")):
        with autocast_context(device, autocast):
            for s in range(0, x.shape[0], step):
                yield model.features(x[s : s + step], wl).float()
        return
    h = _tokens(model, x, wl, chunk_size, bn_mode)
    for s in range(0, h.shape[0], step):
        with autocast_context(device, autocast):
            yield model.aggregate(model.run_blocks(h[s : s + step])[0]).float()


def export_image(model: nn.Module, image: np.ndarray, wavelengths: np.ndarray, *, bn_mode: str = "chunk",
                 chunk_size: int = 5000, dtype: str = "float32", device: str | torch.device = "cpu",
                 autocast: str = "off", compute_pixels: int | None = None,
                 on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """Features (H, W, D) of one raw image (H, W, C): raster-order chunks, no normalisation.

    ``model`` must expose ``features(spectra (N, C), wavelengths (C,)) -> (N, D)``
    (HyperSL) and already sit on ``device``. Features stay on the device until the
    image is done (one copy back, no sync per chunk). ``compute_pixels`` forces the pass size
    (:func:`pass_pixels`; tests, benchmarks); the features do not depend on it.
    """
    check_settings(bn_mode, chunk_size, dtype, autocast)
    if image.ndim != 3 or image.shape[-1] != len(wavelengths):
        raise HsiStudyError(f"image of shape {image.shape} does not match {len(wavelengths)} wavelengths")
    h, w, c = image.shape
    flat = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32).reshape(h * w, c))
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        flat = flat.pin_memory()
    wl = torch.as_tensor(np.asarray(wavelengths, dtype=np.float32), device=device)
    dim = int(getattr(model, "dim", 0) or 1)
    step = pass_pixels(c + 1, dim, chunk_size, device, autocast, compute_pixels)  # c band tokens + the global one
    span = max(step, chunk_size)  # pixels moved to the device at once: whole chunks
    out: torch.Tensor | None = None
    done = 0
    with torch.inference_mode(), bn_context(model, bn_mode), ieee_fp32(device):  # no TF32: CPU and GPU caches agree
        for start in range(0, h * w, span):
            x = flat[start : start + span].to(device, non_blocking=True)
            for z in _features(model, x, wl, chunk_size, bn_mode, autocast, device, step):
                if out is None:
                    out = torch.empty((h * w, z.shape[1]), dtype=getattr(torch, dtype), device=device)
                out[done : done + z.shape[0]] = z
                done += z.shape[0]
                if on_chunk is not None:
                    on_chunk(z.shape[0])
    assert out is not None
    if not bool(torch.isfinite(out).all()):
        hint = " (float16 overflow: use --dtype float32)" if dtype == "float16" else ""
        raise HsiStudyError(f"non-finite features{hint}; check the input values and the backbone")
    return out.cpu().numpy().reshape(h, w, -1)


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


def export_images(model: nn.Module, src: Any, names: list[str], fh: h5py.File, *, bn_mode: str, chunk: int,
                  dtype: str, device: str | torch.device, autocast: str = "off",
                  on_chunk: Callable[[int], None] | None = None) -> int:
    """Write one group per sample of ``names`` (features + raw labels) into ``fh``; returns the feature width.

    One image at a time: a helper thread reads the next image and writes the last
    one's features while the backbone runs, so a split never sits in memory and the
    device does not wait for the disk. ``src`` is the source :class:`H5Split`.
    """
    dim = 0

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        image, _ = src.read(name)  # float32 (H, W, C), values checked
        with h5py.File(src.path, "r") as raw:
            return image, raw[name]["labels"][()]  # labels copied raw (unmapped ids, own dtype)

    def write(name: str, feats: np.ndarray, labels: np.ndarray) -> None:
        grp = fh.create_group(name)
        grp.create_dataset("image", data=feats)
        grp.create_dataset("labels", data=labels)

    with ThreadPoolExecutor(1, thread_name_prefix="features-io") as io:
        nxt = io.submit(read, names[0]) if names else None
        written = None
        for i, name in enumerate(names):
            assert nxt is not None
            image, labels = result_of(nxt)  # wakes for Ctrl+C / SIGTERM
            nxt = io.submit(read, names[i + 1]) if i + 1 < len(names) else None
            feats = export_image(model, image, src.wavelengths, bn_mode=bn_mode, chunk_size=chunk, dtype=dtype,
                                 device=device, autocast=autocast, on_chunk=on_chunk)
            del image
            dim = int(feats.shape[-1])
            if written is not None:
                result_of(written)
            written = io.submit(write, name, feats, labels)
        if written is not None:
            result_of(written)
    return dim


def feature_attrs(src: Any, *, ckpt_hash: str, bn_mode: str, chunk: int, dtype: str, autocast: str, dim: int,
                  dataset: str, split: str) -> dict[str, Any]:
    """Root attributes of a finished feature file (what :func:`is_current` and the reader check)."""
    attrs: dict[str, Any] = {
        "checkpoint_hash": ckpt_hash, "bn_mode": bn_mode, "chunk_size": chunk, "dtype": dtype,
        "feature_dim": dim, "source_file": str(src.path), "source_stat": source_stat(src.path),
        "source_wavelengths": src.wavelengths, "dataset": dataset, "split": split,
        "feature_version": FEATURE_VERSION, "complete": True,
    }
    if autocast != "off":  # fp32 files keep exactly the attributes they always had
        attrs["autocast"] = autocast
    return attrs


def temp_path(path: Path) -> Path:
    """A unique hidden sibling of ``path`` to write into before ``os.replace``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def export_split(model: nn.Module, data_root: str | Path, dataset: str, split: str, out_path: str | Path, *,
                 ckpt_hash: str = "", bn_mode: str = "chunk", chunk_size: int | None = None,
                 dtype: str = "float16", device: str | torch.device = "cpu", autocast: str = "off",
                 progress: bool = True) -> Path:
    """Write ``out_path``: every sample of ``<data_root>/<dataset>_<split>.h5`` with ``image`` -> features."""
    from study.data.datasets import open_split
    from study.data.specs import get_spec

    chunk = default_chunk(dataset) if chunk_size is None else chunk_size
    check_settings(bn_mode, chunk, dtype, autocast)
    src = open_split(data_root, get_spec(dataset), split)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out_path)
    bar = Progress(f"{dataset}/{split}", sum(h * w for h, w in src.shapes), progress)
    try:
        with h5py.File(tmp, "w") as fh:
            dim = export_images(model, src, list(src.names), fh, bn_mode=bn_mode, chunk=chunk, dtype=dtype,
                                device=device, autocast=autocast, on_chunk=bar.update)
            fh.attrs.update(feature_attrs(src, ckpt_hash=ckpt_hash, bn_mode=bn_mode, chunk=chunk, dtype=dtype,
                                          autocast=autocast, dim=dim, dataset=dataset, split=split))
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


# ---------------------------------------------------------------- cache


def source_stat(path: Path) -> str:
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"
