#!/usr/bin/env python
"""timm's DINOv2 ViT forward on fixed inputs, for tests/test_vit.py (our ViT against timm).

Why: study/models/vit.py re-implements timm's ``vit_*_patch14_dinov2`` because timm does
not import beside this project's CPU torch (its torchvision is a CUDA build). A test
that compares our ViT only with itself cannot catch a wrong block, LayerScale or
position-embedding resampling; this script saves what timm itself computes.

The model is timm's ``vit_small_patch14_dinov2`` recipe at our ``tiny`` size (dim 64,
depth 4, 2 heads) with a 98 x 98 position grid (7 x 7 patches, so the fixture stays small
and inputs of other grids exercise timm's bicubic resampling). After timm's own init
with a fixed seed, LayerScale gammas (init 1e-5), LayerNorm weights and biases, all
biases and the class token are set to random values: with their init values those
parts would hardly show in the output, so a mistake in them would pass unnoticed.

Saved: the state dict as timm names it (``safetensors.torch.save_file``, the layout
``timm/*`` hub repositories ship) and, per input, ``forward_features`` (B, 1 + h*w, D).

Run in a venv with torch 2.13 and timm (not the project's; see the fixture's PROVENANCE.md)::

    /tmp/timmvenv/bin/python scripts/make_vit_reference.py
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from timm_import import import_timm

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "vit_timm"
SEED = 29
#: (batch, height, width): a 2 x 3 grid (downsampled positions), the stored 7 x 7 grid, and 10 x 4 (mixed).
INPUTS = {"x_28x42": (2, 28, 42), "x_98x98": (1, 98, 98), "x_140x56": (1, 140, 56)}


def build(timm: ModuleType) -> torch.nn.Module:
    """timm's dinov2 ViT at our tiny size, every parameter group given non-trivial values."""
    torch.manual_seed(SEED)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=98,
                              dynamic_img_size=True, embed_dim=64, depth=4, num_heads=2)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.7 + 0.3)
            elif name == "cls_token" or name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "norm" in name:  # LayerNorm weights
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def main() -> None:
    timm = import_timm()
    from safetensors.torch import save_file

    model = build(timm)
    FIXTURE.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(FIXTURE / "vit_tiny_timm.safetensors"),
              metadata={"format": "pt"})
    gen = torch.Generator().manual_seed(SEED + 1)
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, (b, h, w) in INPUTS.items():
            x = torch.randn(b, 3, h, w, generator=gen)
            out[name] = x.numpy()
            out[f"features_{name}"] = model.forward_features(x).numpy()
    np.savez_compressed(FIXTURE / "reference.npz", **out)
    print(f"wrote {FIXTURE} (torch {torch.__version__}, timm {timm.__version__})")


if __name__ == "__main__":
    main()
