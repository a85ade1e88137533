"""The rows of ``python -m benchmarks.throughput``: one per model x dataset, measured or skipped over the cap.

Which models (``MODELS``, ``VIT_MODELS``, ``K1_MODELS``), the row of each at each dataset's real image
size (the timing itself is :mod:`benchmarks.throughput_steps`), the skip rows with their time
estimates, and ``slowdown_vs_k0`` of the k > 0 rows. Not a benchmark by itself.
"""

from __future__ import annotations

from typing import Any

from benchmarks.throughput_steps import (
    SUB_BATCH,
    conv_flops_per_pixel,
    k1_steps,
    pixel_fc_steps,
    runet_steps,
    vit_flops,
    vit_steps,
)

DATASETS = ("hyko2", "hsidrive", "hcv2")
#: (label, RU-Net width or "fc", input channels: None = the dataset's raw bands, else HyperSL feature width D)
MODELS: tuple[tuple[str, str, int | None], ...] = (
    ("runet-small", "small", None), ("runet-full", "full", None),
    ("hypersl-runet-64", "full", 64), ("hypersl-runet-256", "full", 256),
    ("hypersl-fc-64", "fc", 64), ("hypersl-fc-256", "fc", 256),
)
#: crossmodality rows: (label, ViT size, freeze depth k in ViT blocks)
VIT_MODELS: tuple[tuple[str, str, int], ...] = (("vit-s-k0", "small", 0), ("vit-s-k4", "small", 4))
#: HyperSL k > 0 rows: (label, head "fc" | "runet", HyperSL size, k); D = 64 (cpu) / 256 (small)
K1_MODELS: tuple[tuple[str, str, str, int], ...] = (
    ("hypersl-fc-64-k1", "fc", "cpu", 1), ("hypersl-fc-256-k1", "fc", "small", 1),
    ("hypersl-runet-64-k1", "runet", "cpu", 1), ("hypersl-runet-256-k1", "runet", "small", 1),
)
#: the k = 0 row each k > 0 row is compared with
K0_OF = {"vit-s-k4": "vit-s-k0", "hypersl-fc-64-k1": "hypersl-fc-64", "hypersl-fc-256-k1": "hypersl-fc-256",
         "hypersl-runet-64-k1": "hypersl-runet-64", "hypersl-runet-256-k1": "hypersl-runet-256"}


def measure(quick: bool, device: str, datasets: tuple[str, ...] = DATASETS, cap_s: float | None = None,
            size_override: tuple[int, int] | None = None,
            models: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows of the throughput table (``size_override`` and ``models`` shrink the run, for tests)."""
    from study.data.specs import get_spec
    from study.models.runet import build_runet

    on_gpu = device.startswith("cuda")
    steps, warmup = (10, 3) if on_gpu else ((1, 1) if quick else (3, 1))
    cap = cap_s if cap_s is not None else (120.0 if on_gpu else (30.0 if quick else 300.0))
    rates: dict[str, float] = {}  # measured FLOP/s per model; a model not measured yet uses the best seen
    rows = []
    for label, width, feat in MODELS:
        if models is not None and label not in models:
            continue
        for name in datasets:
            spec = get_spec(name)
            hw = size_override or spec.image_size
            channels = feat or spec.n_bands
            batch = spec.batch_size if on_gpu else 1
            row = _base_row(label, name, f"{hw[0]}x{hw[1]}x{channels}", batch, device)
            px = hw[0] * hw[1]
            if width == "fc":
                res = pixel_fc_steps(channels, spec.n_classes, px * batch, warmup, device)
                row.update(note=f"{res['sub_batches']} sub-batches of {SUB_BATCH} px")
            else:
                flops = 3 * conv_flops_per_pixel(build_runet(channels, spec.n_classes, width=width), channels) * px
                rate = rates.get(label, max(rates.values(), default=40e9))  # 40 GFLOP/s: design.md §6 CPU figure
                est = (steps + warmup) * flops * batch / rate
                row["gflop_per_step"] = round(flops * batch / 1e9, 1)
                if est > cap:
                    _skip_row(row, est, rows)
                    continue
                res = runet_steps(width, channels, spec.n_classes, hw, batch, steps, warmup, device)
                rates[label] = flops * batch / res["s_per_step"]
                row["gflop_s"] = round(rates[label] / 1e9, 1)
            row.update(s_per_step=round(res["s_per_step"], 3), images_s=round(batch / res["s_per_step"], 3),
                       pixels_s=round(batch * px / res["s_per_step"]), rss_before_mb=res["rss_before_mb"],
                       peak_rss_mb=res["peak_rss_mb"],
                       peak_cuda_mb=res["peak_cuda_mb"])
            rows.append(row)
            print(f"  {label} {name}: {row['images_s']} images/s", flush=True)
    rows += measure_vit(device, steps, warmup, cap, datasets, size_override, models)
    rows += measure_k1(quick, device, steps, warmup, cap, datasets, models)
    add_slowdowns(rows)
    return rows


def _base_row(label: str, name: str, image: str, batch: int, device: str) -> dict[str, Any]:
    return {"model": label, "dataset": name, "image": image, "batch": batch, "device": device,
            "dtype": "bf16-autocast" if device.startswith("cuda") else "fp32"}


def _skip_row(row: dict[str, Any], est_s: float, rows: list[dict[str, Any]]) -> None:
    """Record (and print) a configuration left out because its estimated time exceeds the cap."""
    row.update(note=f"skipped: too slow on {row['device'].upper()} (est. {est_s:.0f} s)")
    rows.append(row)
    print(f"  {row['model']} {row['dataset']}: {row['note']}", flush=True)


def _finish_row(row: dict[str, Any], res: dict[str, Any], batch: int, px: int) -> None:
    row.update(s_per_step=round(res["s_per_step"], 3), images_s=round(batch / res["s_per_step"], 3),
               pixels_s=round(px / res["s_per_step"]), rss_before_mb=res["rss_before_mb"],
               peak_rss_mb=res["peak_rss_mb"], peak_cuda_mb=res["peak_cuda_mb"])
    print(f"  {row['model']} {row['dataset']}: {row['pixels_s']} pixels/s", flush=True)


def measure_vit(device: str, steps: int, warmup: int, cap: float, datasets: tuple[str, ...],
                size_override: tuple[int, int] | None, models: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """crossmodality rows (ViT, random init) at each dataset's real image size; skipped over the cap."""
    from study.data.specs import get_spec

    on_gpu, rows, rate = device.startswith("cuda"), [], 40e9  # 40 GFLOP/s until the first ViT row is measured
    for label, size, k in VIT_MODELS:
        if models is not None and label not in models:
            continue
        for name in datasets:
            spec = get_spec(name)
            hw = size_override or spec.image_size
            batch = spec.batch_size if on_gpu else 1
            row = _base_row(label, name, f"{hw[0]}x{hw[1]}x{spec.n_bands}", batch, device)
            flops, tokens = vit_flops(size, hw, k)
            row["gflop_per_step"] = round(flops * batch / 1e9, 1)
            est = (steps + warmup) * flops * batch / rate
            if est > cap:
                _skip_row(row, est, rows)
                continue
            res = vit_steps(size, k, spec, hw, batch, steps, warmup, device)
            rate = flops * batch / res["s_per_step"]
            row.update(gflop_s=round(rate / 1e9, 1), note=f"ViT-{size[0].upper()} random init, {tokens} tokens, "
                       f"pseudo-RGB + linear head, k = {k}")
            _finish_row(row, res, batch, batch * hw[0] * hw[1])
            rows.append(row)
    return rows


def measure_k1(quick: bool, device: str, steps: int, warmup: int, cap: float, datasets: tuple[str, ...],
               models: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """HyperSL k > 0 rows: one FC sub-batch / one batch of RU-Net crops per step (shrunk on CPU --quick)."""
    from benchmarks.feature_export import flops_per_pixel
    from study.data.specs import get_spec
    from study.models.hypersl import SIZES

    on_gpu, rows = device.startswith("cuda"), []
    for label, head, size, k in K1_MODELS:
        if models is not None and label not in models:
            continue
        cfg = SIZES[size]
        for name in datasets:
            spec = get_spec(name)
            batch = spec.batch_size if on_gpu and head == "runet" else 1
            shrink = quick and not on_gpu
            res = k1_steps(head, size, k, spec, batch, steps, warmup, device, shrink, cap)
            side = res["side"]
            shape = f"{side} px" if head == "fc" else f"crop {side}x{side}"
            row = _base_row(label, name, f"{shape}x{spec.n_bands}->{cfg.dim}", batch, device)
            fpp = flops_per_pixel(spec.n_bands, cfg.dim, cfg.encoder_depth) + 2 * flops_per_pixel(
                spec.n_bands, cfg.dim, k)
            px = side if head == "fc" else batch * side * side
            row["gflop_per_step"] = round(fpp * px / 1e9, 1)  # transformer only (RU-Net convs not counted)
            if res["skipped_est_s"] is not None:
                _skip_row(row, res["skipped_est_s"], rows)
                continue
            notes = [f"HyperSL-{size} random init, k = {k}"]
            if not res["full"]:
                notes.append(f"shrunk from {'8192 px' if head == 'fc' else '128x128 crops'} (CPU --quick)")
            if res["checkpointed"]:
                notes.append("grad-checkpointed chunks")
            row.update(gflop_s=round(fpp * px / res["s_per_step"] / 1e9, 1), note="; ".join(notes))
            _finish_row(row, res, batch, px)
            row["images_s"] = None  # a step is a crop / a sub-batch, not an image: compare pixels/s
            rows.append(row)
    return rows


def add_slowdowns(rows: list[dict[str, Any]]) -> None:
    """``slowdown_vs_k0`` on every k > 0 row whose k = 0 row (same model, dataset) was measured."""
    k0 = {(r["model"], r["dataset"]): r.get("pixels_s") for r in rows}
    for r in rows:
        base = k0.get((K0_OF.get(r["model"], ""), r["dataset"]))
        if r.get("pixels_s") and base:
            r["slowdown_vs_k0"] = round(base / r["pixels_s"], 1)
