"""A DINOv2-architecture Vision Transformer with exactly timm's module and state-dict names.

Why our own module instead of ``timm.create_model("vit_small_patch14_dinov2")``:
timm imports torchvision, and the PyPI torchvision wheel does not import beside
the pinned CPU torch of this project ("operator torchvision::nms does not
exist"). So the built-in module below is what runs here, on every machine. It
reproduces timm's ``VisionTransformer`` as configured by
``vit_{small,base,large}_patch14_dinov2`` (``timm/models/vision_transformer.py``):
patch 14, LayerScale with init 1e-5, qkv bias, LayerNorm eps 1e-6, a class token
whose position is part of ``pos_embed`` (518 x 518 input -> 37 x 37 + 1 tokens),
pre-norm blocks, exact GELU and a final ``norm``. Parameter names are timm's
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.norm1``,
``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.ls1.gamma``,
``blocks.N.norm2``, ``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``,
``blocks.N.ls2.gamma``, ``norm``), so a timm state dict loads strictly and a
state dict of ours loads into timm (``tests/test_vit.py`` compares our forward
with timm's own, saved by ``scripts/make_vit_reference.py``). The facebookresearch DINOv2 hub layout uses the
same names plus ``mask_token``; conversion lives in :mod:`study.models.vit_weights`.

Inputs of any size that is a multiple of the patch size are accepted: the
position embedding is resampled bicubically (antialiased, in float32) to the
input's token grid, as timm does with ``dynamic_img_size=True``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.models.freezing import LayerGroup
from study.models.hypersl import Mlp  # timm's Mlp (fc1 -> exact GELU -> fc2), shared by both backbones


@dataclass(frozen=True)
class ViTConfig:
    """Shape of one DINOv2-style ViT; ``img_size`` fixes the stored position grid (518 // 14 = 37)."""

    dim: int
    depth: int
    heads: int
    patch: int = 14
    mlp_ratio: float = 4.0
    img_size: int = 518
    init_values: float = 1e-5
    eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.img_size // self.patch

    def as_dict(self) -> dict:
        return asdict(self)


#: Named sizes. small/base/large are timm's ``vit_*_patch14_dinov2``; ``tiny`` is ours, for tests and
#: CPU smoke runs only (no released weights exist for it).
SIZES: dict[str, ViTConfig] = {
    "tiny": ViTConfig(dim=64, depth=4, heads=2),
    "small": ViTConfig(dim=384, depth=12, heads=6),
    "base": ViTConfig(dim=768, depth=12, heads=12),
    "large": ViTConfig(dim=1024, depth=24, heads=16),
}
#: timm model names of the sizes that have released DINOv2 weights.
TIMM_NAMES: dict[str, str] = {
    "small": "vit_small_patch14_dinov2", "base": "vit_base_patch14_dinov2", "large": "vit_large_patch14_dinov2",
}


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> (B, H/p, W/p, D) patch tokens; H and W must be multiples of p."""

    def __init__(self, patch: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm ``Attention``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim % heads == 0 must hold, got (dim={dim}, heads={heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # fused kernel: the memory of (N, N) maps is not kept
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """Per-channel residual scale (CaiT/DINOv2); ``gamma`` starts at ``init_values`` (1e-5)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.ls1 = LayerScale(cfg.dim, cfg.init_values)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio))
        self.ls2 = LayerScale(cfg.dim, cfg.init_values)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def resample_pos_embed(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """(1, 1 + G*G, D) -> (1, 1 + h*w, D): the patch part resampled bicubically, the class position kept.

    Same arithmetic as timm's ``resample_abs_pos_embed`` (bicubic, antialias, float32).
    """
    n = pos_embed.shape[1] - 1
    old = math.isqrt(n)
    if old * old != n:
        raise ValueError(f"pos_embed holds {n} patch positions, not a square grid")
    if (old, old) == tuple(grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    dtype = patch_pos.dtype
    patch_pos = patch_pos.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", antialias=True, align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


class VisionTransformer(nn.Module):
    """DINOv2 ViT trunk (no classifier): images (B, 3, H, W) -> patch tokens (B, D, H/p, W/p).

    ``forward_tokens`` runs the trunk in two parts so a caller can run a frozen
    prefix (stem + the first blocks) without autograd and only the trainable
    suffix with it: ``forward_tokens(x, split=d)`` evaluates blocks ``[:d]``
    under ``torch.no_grad()``.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, cfg.dim))
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's default init (``init_weights_vit_timm``): what a random-init run starts from."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def layer_groups(self) -> list[LayerGroup]:
        """Ordered layer groups for freeze depth k (:mod:`study.models.freezing`): [stem], [block 0], ...,
        [last block, final norm]. k = 1 trains the last block and the norm; k = depth + 1 trains everything."""
        stem: LayerGroup = [self.patch_embed, self.cls_token, self.pos_embed]
        blocks: list[LayerGroup] = [[blk] for blk in self.blocks]
        blocks[-1].append(self.norm)
        return [stem, *blocks]

    def embed(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> tokens (B, 1 + h*w, D) with class token and resampled positions."""
        tokens = self.patch_embed(x)
        b, h, w, d = tokens.shape
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens.reshape(b, h * w, d)], dim=1)
        return tokens + resample_pos_embed(self.pos_embed, (h, w))

    def forward_tokens(self, x: Tensor, split: int = 0) -> Tensor:
        """(B, 3, H, W) -> normalised tokens (B, 1 + h*w, D); with split > 0, stem + blocks[:split] skip autograd."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and split == 0):
            t = self.embed(x)
            for blk in self.blocks[:split]:
                t = blk(t)
        for blk in self.blocks[split:]:
            t = blk(t)
        return self.norm(t)

    def forward(self, x: Tensor, split: int = 0) -> Tensor:
        """(B, 3, H, W), H and W multiples of the patch -> patch tokens as a map (B, D, H/p, W/p)."""
        p = self.cfg.patch
        h, w = x.shape[-2] // p, x.shape[-1] // p
        if (h * p, w * p) != tuple(x.shape[-2:]):
            raise ValueError(f"input {tuple(x.shape[-2:])} is not a multiple of the patch size {p}; pad it first")
        t = self.forward_tokens(x, split)[:, 1:]
        return t.transpose(1, 2).reshape(x.shape[0], -1, h, w)


def build_vit(size: str | ViTConfig = "small") -> VisionTransformer:
    """A randomly initialised ViT of a named size (``tiny``, ``small``, ``base``, ``large``) or config."""
    if isinstance(size, ViTConfig):
        return VisionTransformer(size)
    if size not in SIZES:
        raise ValueError(f"unknown ViT size {size!r}; valid sizes: {', '.join(SIZES)}")
    return VisionTransformer(SIZES[size])
