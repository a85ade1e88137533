"""The crossmodality segmenter: cube -> RGB bridge -> DINOv2 ViT patch tokens -> light head -> full-size logits.

Shapes: cube (B, C, H, W) -> bridge (B, 3, H, W) -> padded to multiples of the
patch p (bottom/right, zeros = the ImageNet mean colour after normalisation) ->
tokens (B, D, H'/p, W'/p) -> head -> logits upsampled bilinearly to the padded
size and cropped back to (B, K, H, W), so every labelled pixel gets a
prediction and token (i, j) stays aligned with pixels [p*i, p*(i+1)).

Freeze depth k counts ViT blocks from the top: 0 = backbone frozen, k = the last
k blocks and the final norm train (at ``backbone_lr``), k = depth + 1 also
trains the stem (patch embedding, class token, positions). The frozen prefix runs
without autograd whenever nothing before it needs gradients (a fixed bridge):
frozen work costs one forward pass and no activation memory.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from study.models.vit import VisionTransformer

HEADS = ("linear", "decoder")


class LinearHead(nn.Module):
    """BatchNorm + 1x1 conv on the patch tokens (DINOv2's linear segmentation probe): (B, D, h, w) -> (B, K, h, w)."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.cls = nn.Conv2d(dim, n_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.cls(self.bn(x))


class DecoderHead(nn.Module):
    """A small progressive decoder: 1x1 reduce, two (x2 upsample, 3x3 conv, BN, GELU) stages, 1x1 classify.

    Output (B, K, 4h, 4w): sharper boundaries than the linear probe for ~0.3 M parameters at D = 384.
    """

    def __init__(self, dim: int, n_classes: int, width: int = 128) -> None:
        super().__init__()
        half = width // 2
        self.reduce = nn.Sequential(nn.Conv2d(dim, width, 1, bias=False), nn.BatchNorm2d(width), nn.GELU())
        self.up1 = nn.Sequential(nn.Conv2d(width, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.GELU())
        self.up2 = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.GELU())
        self.cls = nn.Conv2d(half, n_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        x = self.up1(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.up2(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return self.cls(x)


def build_head(kind: str, dim: int, n_classes: int) -> nn.Module:
    if kind == "linear":
        return LinearHead(dim, n_classes)
    if kind == "decoder":
        return DecoderHead(dim, n_classes)
    raise ValueError(f"unknown head {kind!r}; valid: {', '.join(HEADS)}")


class ViTSegmenter(nn.Module):
    """bridge -> pad -> ViT -> head -> upsample -> crop: (B, C, H, W) cube to (B, K, H, W) logits."""

    def __init__(self, bridge: nn.Module, vit: VisionTransformer, head: nn.Module) -> None:
        super().__init__()
        self.bridge, self.vit, self.head = bridge, vit, head
        self.no_grad_blocks = 0  # leading ViT blocks (with the stem) run without autograd; set by set_freeze_depth

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        p = self.vit.cfg.patch
        rgb = F.pad(self.bridge(x), (0, (-w) % p, 0, (-h) % p))
        logits = self.head(self.vit(rgb, split=self.no_grad_blocks))
        logits = F.interpolate(logits, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


def set_freeze_depth(model: ViTSegmenter, k: int) -> None:
    """Train the head (and a learned bridge) plus the last ``k`` ViT blocks and final norm; freeze the rest."""
    depth = len(model.vit.blocks)
    if not 0 <= k <= depth + 1:
        raise ValueError(f"0 <= freeze_depth <= depth + 1 must hold, got (freeze_depth={k}, depth={depth})")
    model.vit.requires_grad_(k > depth)  # k = depth + 1: everything, stem included
    if 0 < k <= depth:
        for blk in model.vit.blocks[depth - k:]:
            blk.requires_grad_(True)
        model.vit.norm.requires_grad_(True)
    model.head.requires_grad_(True)
    model.bridge.requires_grad_(True)
    bridge_learns = any(p.requires_grad for p in model.bridge.parameters())
    # gradients must flow through the whole frozen ViT to a learned bridge: then autograd runs everywhere
    model.no_grad_blocks = 0 if bridge_learns or k > depth else depth - k


_NO_DECAY_NAMES = ("pos_embed", "cls_token")


def param_groups(model: ViTSegmenter, head_lr: float, backbone_lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: head (+ bridge) at ``head_lr``, unfrozen ViT parts at ``backbone_lr``.

    Weight decay skips norms, biases, LayerScale gammas, position/class tokens
    (timm's ``no_weight_decay`` convention) and the learned bridge, whose
    pseudo-RGB initialisation is the prior we want to keep, not zero.
    """
    groups: list[dict] = []

    def add(named: list[tuple[str, nn.Parameter]], lr: float, decay: bool) -> None:
        train = [(n, p) for n, p in named if p.requires_grad]
        decays = [decay and p.ndim > 1 and n.split(".")[-1] not in _NO_DECAY_NAMES for n, p in train]
        dec = [p for (_, p), d in zip(train, decays, strict=True) if d]
        rest = [p for (_, p), d in zip(train, decays, strict=True) if not d]
        groups.extend(g for g in ({"params": dec, "lr": lr, "weight_decay": weight_decay},
                                  {"params": rest, "lr": lr, "weight_decay": 0.0}) if g["params"])

    add(list(model.head.named_parameters()), head_lr, decay=True)
    add(list(model.bridge.named_parameters()), head_lr, decay=False)
    add(list(model.vit.named_parameters()), backbone_lr, decay=True)
    return groups
