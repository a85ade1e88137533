"""RU-Net: the HS3-Bench in-domain baseline and the head of HyperSL-RU-Net.

A 4-level U-Net with bilinear upsampling (the Pytorch-UNet layout) plus the
"regularised" parts of HS3-Bench: BatchNorm after every 3×3 conv (so the convs
have no bias) and element-wise dropout on the 1/16-resolution map of the last
Down block (``docs/reference.md`` §R7). The same network runs on
raw cubes (``C_in`` = bands) and on per-pixel HyperSL features (``C_in`` = 256).

Sub-module names follow the reference code (``inc.double_conv.0.weight``,
``down4.maxpool_conv.2.double_conv...``, ``up1.conv...``, ``outc.conv``) so its
state dicts map one to one.

Size handling:
- H, W >= 32: the network is exactly the reference one. Odd sizes are handled
  inside each Up block, which zero-pads the upsampled map to its skip's size
  (711×944 -> 355×472 -> 177×236 -> 88×118 -> 44×59 and back).
- H or W < 32 (smoke tests, tiny synthetic cubes): the input is zero-padded at
  the bottom/right up to 32 and the logits are cropped back. Below 16 the fourth
  MaxPool would see a 1-pixel map and produce an empty tensor; below 32 the
  bottleneck has one pixel per image and BatchNorm cannot train at batch size 1.
  Zeros (not reflect) because reflect padding needs pad < size and fails on
  1-pixel inputs, and zeros are what the Up blocks pad with anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.models.precision import full_precision

#: Named base widths. "full" is the paper's 64 (~17.3 M parameters); "tiny" is for
#: tests and ``--smoke`` runs on CPU.
WIDTHS: dict[str, int] = {"full": 64, "small": 16, "tiny": 8}

#: Inputs smaller than this in H or W are zero-padded up to it (see module docstring).
MIN_SIZE = 32


class DoubleConv(nn.Module):
    """[3×3 conv (pad 1, no bias) -> BatchNorm -> ReLU] × 2: (B, C_in, H, W) -> (B, C_out, H, W).

    No conv bias because the following BatchNorm's shift makes it redundant
    (the reference's BN variant does the same, which the parameter count relies on).
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """MaxPool2d(2) -> Dropout(p) -> DoubleConv: (B, C_in, H, W) -> (B, C_out, H//2, W//2).

    The dropout is element-wise ``nn.Dropout`` (not Dropout2d), as in the
    reference; with p == 0 it is an identity but stays in the Sequential so the
    state-dict indices match the reference (``maxpool_conv.2`` is the DoubleConv).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
            DoubleConv(in_channels, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Bilinear ×2 upsampling -> zero-pad to the skip's size -> cat[skip, up] -> DoubleConv.

    ``x`` (B, C_in/2, h, w) from below, ``skip`` (B, C_in/2, H, W) with H in {2h, 2h+1}
    -> (B, C_out, H, W). The DoubleConv's middle width is C_in/2 (bilinear variant).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        dy = skip.shape[2] - x.shape[2]
        dx = skip.shape[3] - x.shape[3]
        # Odd skip sizes lose a row/column in MaxPool; pad it back, split as evenly as possible.
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1×1 conv with bias: (B, C, H, W) -> (B, n_classes, H, W) logits."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class RUNet(nn.Module):
    """HS3-Bench RU-Net: (B, C_in, H, W) -> logits (B, n_classes, H, W) for any H, W >= 1.

    Channels at base width w: w, 2w, 4w, 8w, 8w down; 4w, 2w, w, w up.
    ``n_classes`` includes the ignore slot (the loss/metrics drop it, not the net).
    At w = 64 the parameter count is 17,261,184 + 576·C_in + 65·n_classes.

    ``raw_input``: the input is a raw cube (the in-domain baseline), so the first conv runs in fp32 outside
    the trial's bf16 autocast (:mod:`study.models.precision`; a bf16 conv of raw counts loses the small
    differences its BatchNorm keeps). Not a weight: the state dict is the same either way.
    """

    def __init__(self, in_channels: int, n_classes: int, base_width: int = 64, dropout: float = 0.25,
                 raw_input: bool = False) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("n_classes", n_classes),
            ("base_width", base_width),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name} >= 1` must hold for RUNet, got {name}={value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`0 <= dropout < 1` must hold for RUNet, got dropout={dropout!r}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.base_width = base_width
        self.raw_input = raw_input
        w = base_width
        self.inc = DoubleConv(in_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        # bilinear variant: the bottleneck keeps 8w (= 16w / 2) channels
        self.down4 = Down(8 * w, 8 * w, dropout=dropout)
        self.up1 = Up(16 * w, 4 * w)
        self.up2 = Up(8 * w, 2 * w)
        self.up3 = Up(4 * w, w)
        self.up4 = Up(2 * w, w)
        self.outc = OutConv(w, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> logits (B, n_classes, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"RUNet expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[2], x.shape[3]
        pad_h, pad_w = max(0, MIN_SIZE - h), max(0, MIN_SIZE - w)
        if pad_h or pad_w:
            x = F.pad(x, [0, pad_w, 0, pad_h])
        x1 = self._inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up1(x5, x4)
        y = self.up2(y, x3)
        y = self.up3(y, x2)
        y = self.up4(y, x1)
        logits = self.outc(y)
        if pad_h or pad_w:
            logits = logits[:, :, :h, :w]
        return logits

    def _inc(self, x: Tensor) -> Tensor:
        """The first DoubleConv; with ``raw_input`` its first conv in fp32 (the rest under the caller's autocast)."""
        if not self.raw_input:
            return self.inc(x)
        first, *rest = self.inc.double_conv
        with full_precision(x.device):
            a = first(x.float())
        for layer in rest:
            a = layer(a)
        return a


def build_runet(in_channels: int, n_classes: int, width: str | int = "full", dropout: float = 0.25,
                raw_input: bool = False) -> RUNet:
    """RU-Net with a named (``WIDTHS``) or explicit integer base width.

    Named widths keep CLI flags and search spaces readable ("tiny" for --smoke).
    """
    if isinstance(width, str):
        if width not in WIDTHS:
            valid = ", ".join(f"{k} ({v})" for k, v in WIDTHS.items())
            raise ValueError(f"unknown RU-Net width {width!r}; valid: {valid}, or a positive integer")
        base = WIDTHS[width]
    elif isinstance(width, int) and not isinstance(width, bool) and width >= 1:
        base = width
    else:
        raise ValueError(f"RU-Net width must be one of {sorted(WIDTHS)} or a positive integer, got {width!r}")
    return RUNet(in_channels, n_classes, base_width=base, dropout=dropout, raw_input=raw_input)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameter elements (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
