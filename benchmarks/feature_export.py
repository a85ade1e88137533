"""HyperSL per-pixel feature export: pixels/s vs chunk size, fp32 vs bf16, BatchNorm chunk vs running mode.

Why: the frozen transformer is the expensive part of every cross-domain study
(design.md §6); the export runs once per (backbone, data) and its speed decides
whether a study is hours or days. Rates are converted to achieved GFLOP/s with

    FLOPs per pixel ≈ depth x (24·L·D² + 4·L²·D),  L = bands + 1 tokens (global token), D = width

(the transformer layers only; the conv stem is left out), and on a GPU to the
fraction of the device's dense bf16 peak. Target (GPU): >= 40 % of dense bf16
peak for HCV2-sized spectra (128 bands). Every measurement goes through
``study.features.export.export_image``, the function the feature cache uses.

``--precision`` compares bf16 autocast with fp32 on the same images (synthetic
HyKo2-like cubes at three value scales, chunk-mode BN): max abs / relative error,
cosine similarity per pixel, and the downstream effect (a HyperSL-FC head trained
on each feature set with the same seed and batches, val mIoU). Two bf16 variants:
``bf16`` (ours: transformer in bf16, stem + BatchNorm in fp32) and ``bf16-all``
(everything under autocast, the naive way).
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


#: value scales of the precision check: (multiplier, offset) applied to the synthetic [0, 1] cubes
SCALES: dict[str, tuple[float, float]] = {"reflectance 0-1": (1.0, 0.0), "HSI-Drive-like 0-4": (4.0, 0.0),
                                          "raw counts 2000 + 0-1000": (1000.0, 2000.0)}


def precision_errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """How far ``got`` (N, D) is from ``ref``: max abs, max abs / max |ref|, mean rel, per-pixel cosine."""
    a, b = ref.reshape(-1, ref.shape[-1]).astype(np.float64), got.reshape(-1, got.shape[-1]).astype(np.float64)
    diff = np.abs(a - b)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {"max_abs_err": float(diff.max()), "max_rel_err": float(diff.max() / np.abs(a).max()),
            "mean_rel_err": float(diff.mean() / np.abs(a).mean()), "cos_min": float(cos.min()),
            "cos_mean": float(cos.mean())}


def _naive_bf16(model: Any, image: np.ndarray, wl: np.ndarray, chunk: int, device: str) -> np.ndarray:
    """Every layer under bf16 autocast (stem and its chunk BatchNorm included), per chunk."""
    from study.features import bn_context

    flat = torch.from_numpy(image.reshape(-1, image.shape[-1]))
    w = torch.from_numpy(wl).to(device)
    with torch.inference_mode(), bn_context(model, "chunk"), torch.autocast(device, dtype=torch.bfloat16):
        out = [model.features(flat[s : s + chunk].to(device), w).float().cpu() for s in range(0, len(flat), chunk)]
    return torch.cat(out).numpy().reshape(*image.shape[:2], -1)


def fc_val_miou(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], n_classes: int,
                ignore: int, steps: int, seed: int = 0, lr: float = 1e-2) -> float:
    """HyperSL-FC (BatchNorm1d + Linear, AdamW, 8,192-pixel steps) on per-pixel features; val mIoU."""
    x = torch.from_numpy(train[0].reshape(-1, train[0].shape[-1]).astype(np.float32))
    y = torch.from_numpy(train[1].reshape(-1))
    keep = y != ignore
    x, y = x[keep], y[keep]
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(x.shape[1]), torch.nn.Linear(x.shape[1], n_classes))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (8192,), generator=gen)
        loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    xv = torch.from_numpy(val[0].reshape(-1, val[0].shape[-1]).astype(np.float32))
    yv = val[1].reshape(-1)
    with torch.inference_mode():
        pred = head(xv).argmax(1).numpy()
    ious = []
    for c in range(n_classes):
        if c == ignore:
            continue
        t, p_ = yv == c, (pred == c) & (yv != ignore)
        if t.any():
            ious.append((t & p_).sum() / (t | p_).sum())
    return float(np.mean(ious))


def compare_precision(size: str = "cpu", device: str = "cpu", hw: tuple[int, int] = (48, 64),
                      images: tuple[int, int] = (6, 3), head_steps: int = 200,
                      backbone: str | None = None) -> list[dict[str, Any]]:
    """bf16 vs fp32 features on synthetic HyKo2-like cubes at each of :data:`SCALES` (see the module doc)."""
    import tempfile

    from study.data.datasets import open_split
    from study.data.specs import get_spec
    from study.data.synthetic.generator import GeneratorConfig, generate_dataset
    from study.features import export_image
    from study.models.hypersl import build_hypersl

    spec = get_spec("hyko2")
    if backbone:
        from study.models.checkpoints import load_hypersl

        model = load_hypersl(backbone).to(device)
    else:
        torch.manual_seed(0)
        model = build_hypersl(size).to(device)
    chunk = 5000  # HSI-Drive/HCV2's chunk (HyKo2's 50,000 would be one chunk per small synthetic image)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_dataset(spec, Path(tmp), GeneratorConfig(height=hw[0], width=hw[1], n_train=images[0],
                                                                 n_val=images[1], n_test=1, seed=7))
        data = {s: [open_split(root, spec, s).read(i) for i in range(n)] for s, n in zip(("train", "val"), images,
                                                                                          strict=True)}
        for scale, (mul, off) in SCALES.items():
            feats: dict[str, dict[str, list[np.ndarray]]] = {}
            for variant in ("fp32", "bf16", "bf16-all"):
                feats[variant] = {}
                for split, samples in data.items():
                    out = []
                    for image, _ in samples:
                        raw = (image * mul + off).astype(np.float32)
                        if variant == "bf16-all":
                            out.append(_naive_bf16(model, raw, spec.wavelength_array(), chunk, device))
                        else:
                            out.append(export_image(model, raw, spec.wavelength_array(), chunk_size=chunk,
                                                    device=device, autocast="off" if variant == "fp32" else "bf16"))
                    feats[variant][split] = out
            labels = {split: np.stack([lab for _, lab in samples]) for split, samples in data.items()}
            for variant, fs in feats.items():
                row: dict[str, Any] = {"backbone": backbone or f"{size} (random init)", "scale": scale,
                                       "variant": variant}
                if variant != "fp32":
                    row.update({k: round(v, 6) for k, v in precision_errors(
                        np.stack(feats["fp32"]["train"] + feats["fp32"]["val"]),
                        np.stack(fs["train"] + fs["val"])).items()})
                row["fc_val_miou"] = round(fc_val_miou((np.stack(fs["train"]), labels["train"]),
                                                       (np.stack(fs["val"]), labels["val"]), spec.n_classes,
                                                       spec.ignore_index, head_steps), 4)
                rows.append(row)
                print(f"  {scale} {variant}: {row}", flush=True)
    return rows


def run_precision(size: str, backbone: str | None, save: bool) -> dict[str, Any]:
    """``--precision``: the bf16-vs-fp32 table (CPU bf16 autocast computes the same bf16 products)."""
    started, info = time.perf_counter(), machine_info()
    device = "cuda" if cuda_available() else "cpu"
    rows = compare_precision(size, device, backbone=backbone)
    print_table(f"bf16 autocast vs fp32 features on {info['device']}", rows,
                ["backbone", "scale", "variant", "max_abs_err", "max_rel_err", "mean_rel_err", "cos_min",
                 "cos_mean", "fc_val_miou"])
    return finish("feature_export_precision", {"device": device, "rows": rows, "targets": []}, save, started, info)


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
    import argparse

    from benchmarks._common import apply_threads

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--precision", action="store_true")
    p.add_argument("--size", default="cpu")
    p.add_argument("--backbone", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-save", action="store_true")
    args, rest = p.parse_known_args(argv)
    if args.precision:  # python -m benchmarks.feature_export --precision [--size small | --backbone CKPT]
        apply_threads(args.threads)
        run_precision(args.size, args.backbone, save=not args.no_save)
        return 0
    return standard_main("feature_export", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
