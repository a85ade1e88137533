"""Timed training steps of each model in ``python -m benchmarks.throughput`` (not a benchmark by itself).

Each ``*_steps`` function builds one model (random init) on random data of the given size, runs
warm-up and timed optimizer steps (forward + cross-entropy + backward + AdamW; bf16 autocast on CUDA)
and returns seconds per step with the peak memory; ``conv_flops_per_pixel`` and ``vit_flops`` count
the FLOPs that the skip estimates and GFLOP/s columns use. :mod:`benchmarks.throughput_rows` turns
them into table rows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._common import peak_memory

SUB_BATCH = 8192
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
