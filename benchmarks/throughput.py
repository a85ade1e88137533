"""Training throughput and peak memory of the study's models at each dataset's real image size.

Why: the budget of a study (trials x epochs x images) is set by how many images
per second a trial trains; peak memory decides how many trials share a node or
GPU. Models: RU-Net (full width 64 and small 16) on raw bands, HyperSL-RU-Net
(the full RU-Net on 64 = ``cpu`` or 256 = ``small`` HyperSL feature channels)
and HyperSL-FC (BatchNorm1d + Linear, one AdamW step per 8,192-pixel sub-batch).

One optimizer step = forward + backward + AdamW on one batch (CPU: batch 1; GPU:
the dataset's HS3-Bench batch size under bf16 autocast). A configuration whose
estimated time exceeds the per-configuration cap is skipped and says so, with
the estimate from its counted conv FLOPs and the rate measured just before.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._common import (
    cuda_available,
    finish,
    machine_info,
    peak_memory,
    print_table,
    standard_main,
    target,
)

SUB_BATCH = 8192
DATASETS = ("hyko2", "hsidrive", "hcv2")
#: (label, RU-Net width or "fc", input channels: None = the dataset's raw bands, else HyperSL feature width D)
MODELS: tuple[tuple[str, str, int | None], ...] = (
    ("runet-small", "small", None), ("runet-full", "full", None),
    ("hypersl-runet-64", "full", 64), ("hypersl-runet-256", "full", 256),
    ("hypersl-fc-64", "fc", 64), ("hypersl-fc-256", "fc", 256),
)


def conv_flops_per_pixel(model: nn.Module, channels: int, probe: int = 64) -> float:
    """Forward FLOPs (2 x MACs of every conv) per input pixel, counted with hooks on a probe image.

    Convs dominate RU-Net and their cost is linear in the pixel count, so this
    scales to any image size; it is used for the skip estimates and GFLOP/s.
    """
    total = [0.0]

    def hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += 2.0 * out.numel() * (m.in_channels // m.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, probe, probe))
    finally:
        for h in handles:
            h.remove()
        model.train()
    return total[0] / (probe * probe)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def runet_steps(width: str | int, channels: int, n_classes: int, hw: tuple[int, int], batch: int, steps: int,
                warmup: int, device: str) -> dict[str, Any]:
    """Time ``steps`` RU-Net training steps after ``warmup`` steps; returns seconds/step and peak memory."""
    from study.models.runet import build_runet

    amp = device.startswith("cuda")
    with peak_memory(device) as mem:
        torch.manual_seed(0)
        model = build_runet(channels, n_classes, width=width).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(batch, channels, *hw, device=device)
        y = torch.randint(0, n_classes, (batch, *hw), device=device)
        times = []
        for i in range(warmup + steps):
            _sync(device)
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return {"s_per_step": float(np.median(times)), **mem}


def pixel_fc_steps(dim: int, n_classes: int, pixels: int, warmup: int, device: str) -> dict[str, Any]:
    """HyperSL-FC on one image's ``pixels`` features: one AdamW step per 8,192-pixel sub-batch."""
    from study.models.heads import PixelFC

    amp = device.startswith("cuda")
    with peak_memory(device) as mem:
        torch.manual_seed(0)
        model = PixelFC(dim, n_classes).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(pixels, dim, device=device)
        y = torch.randint(0, n_classes, (pixels,), device=device)
        starts = list(range(0, pixels - 1, SUB_BATCH))

        def image_pass() -> None:
            for s in starts:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    loss = nn.functional.cross_entropy(model(x[s : s + SUB_BATCH]), y[s : s + SUB_BATCH])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        for _ in range(warmup):
            image_pass()
        _sync(device)
        t0 = time.perf_counter()
        image_pass()
        _sync(device)
    return {"s_per_step": time.perf_counter() - t0, "sub_batches": len(starts), **mem}


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
            row: dict[str, Any] = {"model": label, "dataset": name, "image": f"{hw[0]}x{hw[1]}x{channels}",
                                   "batch": batch, "device": device, "dtype": "bf16-autocast" if on_gpu else "fp32"}
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
                    row.update(note=f"skipped: too slow on {device.upper()} (est. {est:.0f} s)")
                    rows.append(row)
                    print(f"  {label} {name}: {row['note']}", flush=True)
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
    return rows


def run(quick: bool, save: bool = True) -> dict[str, Any]:
    started, info = time.perf_counter(), machine_info()
    device = "cuda" if cuda_available() else "cpu"
    rows = measure(quick, device)
    cols = ["model", "dataset", "image", "batch", "dtype", "s_per_step", "images_s", "pixels_s", "gflop_per_step",
            "gflop_s", "rss_before_mb", "peak_rss_mb", "peak_cuda_mb", "note"]
    print_table(f"training throughput on {device} ({info['device']}, {info['torch_threads']} threads)", rows, cols)
    if device == "cpu":
        print("\n== GPU section (bf16 autocast, HS3-Bench batch sizes): skipped: no GPU")
    measured = [r for r in rows if r.get("images_s")]
    targets = [target(f"training throughput + peak memory on {device}", f"{len(measured)} of {len(rows)} "
                      "configurations measured", "report", None,
                      "" if len(measured) == len(rows) else "the rest skipped with their time estimates")]
    if device == "cpu":
        targets.append(target("training throughput on GPU (bf16 autocast)", "-", "report on a GPU", None,
                              "not measurable here: no GPU"))
    return finish("throughput", {"quick": quick, "device": device, "rows": rows, "targets": targets},
                  save, started, info)


def main(argv: list[str] | None = None) -> int:
    return standard_main("throughput", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
