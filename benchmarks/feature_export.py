"""HyperSL per-pixel feature export: pixels/s vs chunk size, fp32 vs bf16, BatchNorm chunk vs running mode.

Why: the frozen transformer is the expensive part of every cross-domain study
(design.md §6); the export runs once per (backbone, data) and its speed decides
whether a study is hours or days. Rates are converted to achieved GFLOP/s with

    FLOPs per pixel ≈ depth x (24·L·D² + 4·L²·D),  L = bands + 1 tokens (global token), D = width

(the transformer layers only; the conv stem is left out), and on a GPU to the
fraction of the device's dense bf16 peak. Target (GPU): >= 40 % of dense bf16
peak for HCV2-sized spectra (128 bands). Every measurement goes through
``study.features.export_image``, the function the feature cache uses.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import (
    cuda_available,
    finish,
    machine_info,
    print_table,
    standard_main,
    target,
)

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets; matched by substring,
#: most specific first. A10G: the A10 datasheet figure (AWS publishes none). T4 has no bf16 tensor cores:
#: its fp16 peak is listed (bf16 runs far below it).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0),
    ("A10G", 125.0), ("L4", 121.0), ("T4", 65.0),
)
BANDS = {"hyko2": 15, "hsidrive": 25, "hcv2": 128}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by name, or None when unknown (printed as unknown, never guessed)."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def flops_per_pixel(bands: int, dim: int, depth: int) -> float:
    """Transformer FLOPs per pixel (spectrum) of the HyperSL encoder, the issue's formula."""
    tokens = bands + 1
    return depth * (24.0 * tokens * dim * dim + 4.0 * tokens * tokens * dim)


def bf16_support(device: str) -> tuple[bool, str]:
    """Whether bf16 autocast runs on ``device`` (and whether the CPU has native bf16 instructions)."""
    try:
        with torch.autocast(device, dtype=torch.bfloat16):
            torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)
    except (RuntimeError, AssertionError) as exc:
        return False, f"bf16 autocast unavailable: {exc}"
    if device == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        native = "avx512_bf16" in flags or "amx_bf16" in flags
        return True, "native avx512_bf16/amx" if native else "emulated (no avx512_bf16/amx on this CPU)"
    return True, "tensor cores"


def export_rate(model: Any, bands: int, wavelengths: np.ndarray, chunk: int, pixels: int, bn_mode: str,
                bf16: bool, device: str) -> float:
    """Seconds to export ``pixels`` random spectra through ``export_image`` in chunks of ``chunk``."""
    from study.features import export_image

    rng = np.random.default_rng(0)
    image = rng.uniform(0.0, 1.0, size=(1, pixels, bands)).astype(np.float32)
    ctx = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with ctx:
        export_image(model, image, wavelengths, bn_mode=bn_mode, chunk_size=chunk, dtype="float32", device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(sizes: tuple[str, ...], datasets: tuple[str, ...], chunks: tuple[int, ...], device: str,
            min_s: float = 1.5, cap_s: float = 8.0) -> list[dict[str, Any]]:
    """Rows: every chunk size at fp32/chunk-BN, then bf16 and running-BN at the largest chunk that fits.

    A measurement exports whole chunks for at least ``min_s`` seconds (estimated);
    one whose single chunk is estimated above ``cap_s`` is skipped with its estimate.
    Estimates take twice the best rate seen so far per pixel, because on a CPU
    big chunks ran up to 2x slower per pixel than small ones (caches).
    """
    from study.data.specs import get_spec
    from study.models.hypersl import SIZES, build_hypersl

    bf16_ok, bf16_note = bf16_support(device)
    peak = peak_tflops(torch.cuda.get_device_name(0)) if device.startswith("cuda") else None
    rows: list[dict[str, Any]] = []
    for size in sizes:
        cfg = SIZES[size]
        torch.manual_seed(0)
        model = build_hypersl(size).to(device)
        for name in datasets:
            wl = get_spec(name).wavelength_array()
            bands = wl.size
            fpp = flops_per_pixel(bands, cfg.dim, cfg.encoder_depth)
            rate = 64 / export_rate(model, bands, wl, 64, 64, "chunk", False, device)  # warm-up and first estimate
            fitted = [c for c in chunks if 2 * c / rate <= cap_s]
            variants = [(c, "fp32", "chunk") for c in chunks]
            if fitted:
                variants += [(max(fitted), "bf16", "chunk"), (max(fitted), "fp32", "running")]
            for chunk, dt, bn in variants:
                row: dict[str, Any] = {"size": size, "dim": cfg.dim, "depth": cfg.encoder_depth, "bands": bands,
                                       "chunk": chunk, "dtype": dt, "bn_mode": bn, "gflop_per_px": round(fpp / 1e9, 4)}
                rows.append(row)
                if dt == "bf16" and not bf16_ok:
                    row["note"] = f"skipped: {bf16_note}"
                    continue
                if 2 * chunk / rate > cap_s:
                    row["note"] = f"skipped: too slow on {device.upper()} (est. {2 * chunk / rate:.0f} s per chunk)"
                    continue
                pixels = chunk * max(1, math.ceil(min_s * rate / chunk))
                seconds = export_rate(model, bands, wl, chunk, pixels, bn, dt == "bf16", device)
                px_s = pixels / seconds
                if dt == "fp32" and bn == "chunk":
                    rate = max(rate, px_s)
                row.update(pixels=pixels, seconds=round(seconds, 2), pixels_s=round(px_s, 1),
                           gflop_s=round(px_s * fpp / 1e9, 1),
                           peak_pct=None if peak is None else round(100 * px_s * fpp / (peak * 1e12), 1),
                           note=bf16_note if dt == "bf16" else "")
            print(f"  {size} @ {bands} bands: best {max(r.get('pixels_s', 0) for r in rows[-len(variants):])} px/s",
                  flush=True)
    return rows


def run(quick: bool, save: bool = True) -> dict[str, Any]:
    started, info = time.perf_counter(), machine_info()
    device = "cuda" if cuda_available() else "cpu"
    on_gpu = device == "cuda"
    chunks = (5000, 20000, 50000, 100000) if on_gpu else ((64, 256, 1024, 5000) if quick else (256, 1024, 5000))
    cap = 60.0 if on_gpu or not quick else 8.0
    rows = measure(("cpu", "small"), tuple(BANDS), chunks, device, min_s=1.0 if quick else 5.0, cap_s=cap)
    print_table(f"HyperSL feature export on {info['device']} ({info['torch_threads']} threads)", rows,
                ["size", "dim", "depth", "bands", "chunk", "dtype", "bn_mode", "pixels", "seconds", "pixels_s",
                 "gflop_per_px", "gflop_s", "peak_pct", "note"])
    hcv2 = [r for r in rows if r["size"] == "small" and r["bands"] == 128 and r.get("pixels_s")]
    if on_gpu:
        best = max((r["peak_pct"] or 0 for r in hcv2), default=0)
        name = torch.cuda.get_device_name(0)
        if peak_tflops(name) is None:
            t = target("HyperSL export, HCV2 spectra, fraction of dense bf16 peak", "unknown (peak of "
                       f"{name} not in the table)", ">= 40 %", None)
        else:
            t = target("HyperSL export, HCV2 spectra, fraction of dense bf16 peak", f"{best} %", ">= 40 %", best >= 40)
    else:
        best = max((r["gflop_s"] for r in hcv2), default=None)
        t = target("HyperSL export, HCV2 spectra, fraction of dense bf16 peak", f"{best} GFLOP/s on CPU",
                   ">= 40 % (GPU)", None, "not measurable here: no GPU")
    return finish("feature_export", {"quick": quick, "device": device, "rows": rows, "targets": [t]},
                  save, started, info)


def main(argv: list[str] | None = None) -> int:
    return standard_main("feature_export", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
