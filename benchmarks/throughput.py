"""Training throughput and peak memory of the study's models at each dataset's real image size.

Why: the budget of a study (trials x epochs x images) is set by how many images
per second a trial trains; peak memory decides how many trials share a node or
GPU. Models: RU-Net (full width 64 and small 16) on raw bands, HyperSL-RU-Net
(the full RU-Net on 64 = ``cpu`` or 256 = ``small`` HyperSL feature channels)
and HyperSL-FC (BatchNorm1d + Linear, one AdamW step per 8,192-pixel sub-batch).

Freeze depth k > 0 rows: ``crossmodality`` (DINOv2 ViT-S, **random init**, which
costs the same as the released weights: pseudo-RGB bridge -> ViT -> linear head,
k = 0 frozen and k = 4 last blocks trainable, at the real image size) and
HyperSL-FC / HyperSL-RU-Net at k = 1 (the per-pixel HyperSL transformer, random
init, runs inside the training step: ``study.models.hypersl_partial``). A k = 1 step is
one FC sub-batch of 8,192 pixels, or one random ``CROP``² crop per image for the
RU-Net (the trainables' defaults); on CPU in ``--quick`` mode the pixel count is
shrunk (from a 64-pixel calibration step) so that one step takes about
``K1_TARGET_S`` seconds, which leaves pixels/s unchanged (the per-pixel
transformer is linear in the pixel count). ``slowdown_vs_k0`` = pixels/s of the
k = 0 row of the same model and dataset / pixels/s of the row.

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
#: CPU --quick: seconds one k = 1 step is shrunk to; the calibration step uses K1_PROBE pixels
K1_TARGET_S, K1_PROBE = 1.0, 64


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


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int,
                 warmup: int, device: str) -> float:
    """Median seconds of ``steps`` (forward + cross-entropy + backward + AdamW) steps after ``warmup`` steps."""
    amp = device.startswith("cuda")
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
    return float(np.median(times))


def runet_steps(width: str | int, channels: int, n_classes: int, hw: tuple[int, int], batch: int, steps: int,
                warmup: int, device: str) -> dict[str, Any]:
    """Time ``steps`` RU-Net training steps after ``warmup`` steps; returns seconds/step and peak memory."""
    from study.models.runet import build_runet

    with peak_memory(device) as mem:
        torch.manual_seed(0)
        model = build_runet(channels, n_classes, width=width).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(batch, channels, *hw, device=device)
        y = torch.randint(0, n_classes, (batch, *hw), device=device)
        s = _train_steps(model, opt, x, y, steps, warmup, device)
    return {"s_per_step": s, **mem}


def vit_flops(size: str, hw: tuple[int, int], k: int) -> tuple[float, int]:
    """(training FLOPs per image, tokens) of the ViT trunk at freeze depth ``k``: every block forward, the last
    ``k`` also backward (2x forward); blocks = ``depth x (24 N D^2 + 4 N^2 D)`` over N = 1 + patch tokens."""
    from study.models.vit import SIZES

    cfg = SIZES[size]
    n = 1 + -(-hw[0] // cfg.patch) * -(-hw[1] // cfg.patch)
    per_block = 24.0 * n * cfg.dim**2 + 4.0 * n * n * cfg.dim
    return per_block * (cfg.depth + 2 * k), n


def vit_steps(size: str, k: int, spec: Any, hw: tuple[int, int], batch: int, steps: int, warmup: int,
              device: str) -> dict[str, Any]:
    """crossmodality: pseudo-RGB bridge -> DINOv2 ViT (random init) -> linear head, last ``k`` blocks trainable."""
    from study.models.freezing import param_groups, set_trainable_depth
    from study.models.rgb_bridge import PseudoRGB, choose_bands
    from study.models.vit import build_vit
    from study.models.vit_seg import LinearHead, ViTSegmenter

    with peak_memory(device) as mem:
        torch.manual_seed(0)
        vit = build_vit(size)
        bridge = PseudoRGB(choose_bands(spec), torch.ones(3), torch.zeros(3))
        model = ViTSegmenter(bridge, vit, LinearHead(vit.cfg.dim, spec.n_classes))
        set_trainable_depth(model.vit, k)
        model.to(device)
        opt = torch.optim.AdamW(param_groups(model, 1e-3, 0.01, backbone=model.vit, backbone_lr=1e-4))
        x = torch.randn(batch, spec.n_bands, *hw, device=device)
        y = torch.randint(0, spec.n_classes, (batch, *hw), device=device)
        s = _train_steps(model, opt, x, y, steps, warmup, device)
    return {"s_per_step": s, **mem}


def _unfrozen_backbone(size: str, k: int, spec: Any, device: str) -> Any:
    """HyperSL of ``size`` (random init), last ``k`` groups trainable, chunk-mode BN with one statistics row."""
    from study.models.hypersl import SIZES, HyperSL
    from study.models.hypersl_partial import PartialHyperSL, chunk_stats

    hypersl = HyperSL(SIZES[size])
    backbone = PartialHyperSL(hypersl, k, spec.wavelength_array(), "chunk").to(device)
    backbone.stats = chunk_stats(hypersl, torch.randn(256, spec.n_bands, device=device))[None]  # every id is 0
    return backbone


def k1_steps(head: str, size: str, k: int, spec: Any, batch: int, steps: int, warmup: int, device: str,
             shrink: bool, cap_s: float) -> dict[str, Any]:
    """HyperSL k > 0 training steps: FC on one sub-batch of pixels, or RU-Net on ``batch`` square crops.

    The first warm-up step runs on ``K1_PROBE`` pixels (an 8x8 crop for the RU-Net) and calibrates: with
    ``shrink`` the step is then sized to about ``K1_TARGET_S`` s (at most the real size), else the real size
    runs unless its estimate exceeds ``cap_s`` (then ``skipped`` is set with the estimate).
    """
    from study.models.freezing import param_groups
    from study.models.heads import PixelFC
    from study.models.hypersl_partial import GRAD_CHUNK, BackbonePixelFC, BackboneRUNet
    from study.models.runet import build_runet
    from study.train.raw_spectra import CROP

    with peak_memory(device) as mem:
        torch.manual_seed(0)
        backbone = _unfrozen_backbone(size, k, spec, device)
        if head == "fc":
            top: nn.Module = PixelFC(backbone.dim, spec.n_classes)
            model: nn.Module = BackbonePixelFC(backbone, top).to(device)
        else:
            top = build_runet(backbone.dim, spec.n_classes, width="full")
            model = BackboneRUNet(backbone, top).to(device)
        opt = torch.optim.AdamW(param_groups(model, 1e-3, 0.01, backbone=backbone, backbone_lr=1e-4))

        def data(side: int) -> tuple[torch.Tensor, torch.Tensor]:
            """FC: ``side`` pixels; RU-Net: ``batch`` crops of side x side (last channel: chunk id 0)."""
            if head == "fc":
                x = torch.cat([torch.randn(side, spec.n_bands), torch.zeros(side, 1)], dim=1)
                return x.to(device), torch.randint(0, spec.n_classes, (side,), device=device)
            x = torch.cat([torch.randn(batch, spec.n_bands, side, side), torch.zeros(batch, 1, side, side)], dim=1)
            return x.to(device), torch.randint(0, spec.n_classes, (batch, side, side), device=device)

        probe = K1_PROBE if head == "fc" else int(K1_PROBE**0.5)
        full = SUB_BATCH if head == "fc" else CROP
        px = (lambda side: side) if head == "fc" else (lambda side: batch * side * side)
        t_probe = _train_steps(model, opt, *data(probe), 1, 0, device)
        rate = px(probe) / t_probe  # pixels/s of the probe step (includes first-call costs: an underestimate)
        side, skipped = full, None
        if shrink:
            want = rate * K1_TARGET_S
            side = (int(want) // 64 * 64 if head == "fc" else int((want / batch) ** 0.5) // 8 * 8)
            side = max(probe, min(full, side))
        elif (warmup - 1 + steps) * px(full) / rate > cap_s:
            skipped = (warmup - 1 + steps) * px(full) / rate
        res: dict[str, Any] = {"side": side, "full": side == full, "skipped_est_s": skipped}
        if skipped is None:
            res["s_per_step"] = _train_steps(model, opt, *data(side), steps, max(0, warmup - 1), device)
            res["pixels"] = px(side)
            res["checkpointed"] = px(side) > GRAD_CHUNK
    return {**res, **mem}


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


def run(quick: bool, save: bool = True) -> dict[str, Any]:
    started, info = time.perf_counter(), machine_info()
    device = "cuda" if cuda_available() else "cpu"
    rows = measure(quick, device)
    cols = ["model", "dataset", "image", "batch", "dtype", "s_per_step", "images_s", "pixels_s", "slowdown_vs_k0",
            "gflop_per_step", "gflop_s", "rss_before_mb", "peak_rss_mb", "peak_cuda_mb", "note"]
    print_table(f"training throughput on {device} ({info['device']}, {info['torch_threads']} threads)", rows, cols)
    if device == "cpu":
        print("\n== GPU section (bf16 autocast, HS3-Bench batch sizes): skipped: no GPU")
    measured = [r for r in rows if r.get("pixels_s")]
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
