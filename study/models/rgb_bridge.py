"""Bridges from a C-band cube to the 3-channel, ImageNet-normalised input an RGB foundation model expects.

Two bridges, chosen per trial (``config["bridge"]``):

- ``pseudo-rgb``: pick one band for each of R, G, B and scale each channel with
  a robust min-max fitted on the **training subset only** (1st/99th percentile ->
  [0, 1]; val/test never inform it), then apply ImageNet's mean/std as DINOv2
  was trained with. Fixed: nothing in it learns.
- ``learned``: a 1x1 convolution C -> 3, initialised to exactly the pseudo-RGB
  mapping above (one-hot band weights times the scale, the offsets as bias), so
  training starts from the pseudo-RGB image and may mix in the other bands.

Band choice (``config["rgb_bands"]``): ``wavelength`` (default) takes the band
whose centre is nearest to 650 / 550 / 450 nm, the usual round centres of an RGB
camera's red, green and blue; ``hs3bench`` takes HS3-Bench's own pseudo-RGB
indices from ``hyperseg: scripts/dataset_conversion/conv2rgb.py``
(``docs/reference.md`` §R6). For HyKo2 (468-643 nm) both give
[14, 7, 0]; HSI-Drive starts at 535 nm, so its "blue" is the bluest band it has.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from study.data.specs import DatasetSpec
from study.models.precision import full_precision

#: Target centre wavelengths (nm) of the red, green and blue channels.
RGB_NM: tuple[float, float, float] = (650.0, 550.0, 450.0)
#: HS3-Bench's pseudo-RGB band indices (R, G, B) per dataset (docs/reference.md §R6).
HS3BENCH_RGB: dict[str, tuple[int, int, int]] = {"hyko2": (14, 7, 0), "hsidrive": (5, 2, 0), "hcv2": (62, 18, 0)}
#: ImageNet statistics DINOv2 normalises with (timm ``IMAGENET_DEFAULT_MEAN`` / ``_STD``).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
BAND_CHOICES = ("wavelength", "hs3bench")
BRIDGES = ("pseudo-rgb", "learned")
MAX_FIT_PIXELS = 1_000_000  # per band: percentiles of a regular pixel subsample are stable and fast


def choose_bands(spec: DatasetSpec, method: str = "wavelength",
                 wavelengths: np.ndarray | None = None) -> tuple[int, int, int]:
    """Band indices (R, G, B) of ``spec``'s cube; ``wavelengths`` overrides the spec's centres (real files)."""
    if method == "hs3bench":
        if spec.name not in HS3BENCH_RGB:
            raise ValueError(f"no HS3-Bench pseudo-RGB bands for {spec.name!r}; use rgb_bands='wavelength'")
        return HS3BENCH_RGB[spec.name]
    if method != "wavelength":
        raise ValueError(f"unknown rgb_bands {method!r}; valid: {', '.join(BAND_CHOICES)}")
    wl = np.asarray(spec.wavelengths if wavelengths is None else wavelengths, dtype=np.float64)
    r, g, b = (int(np.argmin(np.abs(wl - nm))) for nm in RGB_NM)
    return r, g, b


def fit_scaling(images: np.ndarray, bands: tuple[int, ...], lo_q: float = 1.0,
                hi_q: float = 99.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (low, high) percentiles of the training images (N, H, W, C): the robust min-max.

    A constant band (high == low) gets high = low + 1 so scaling never divides by zero.
    """
    flat = images.reshape(-1, images.shape[-1])
    step = max(1, flat.shape[0] // MAX_FIT_PIXELS)
    sample = np.asarray(flat[::step][:, list(bands)], dtype=np.float64)
    lo, hi = np.percentile(sample, lo_q, axis=0), np.percentile(sample, hi_q, axis=0)
    hi = np.where(hi - lo > 1e-12, hi, lo + 1.0)
    return lo.astype(np.float32), hi.astype(np.float32)


def affine_of(lo: np.ndarray, hi: np.ndarray) -> tuple[Tensor, Tensor]:
    """(scale, offset), each (3,), with out = x * scale + offset == ((x - lo) / (hi - lo) - mean) / std."""
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    scale = 1.0 / ((hi - lo) * std)
    offset = (-lo / (hi - lo) - mean) / std
    return torch.tensor(scale, dtype=torch.float32), torch.tensor(offset, dtype=torch.float32)


class PseudoRGB(nn.Module):
    """(B, C, H, W) -> (B, 3, H, W): three chosen bands, scaled and ImageNet-normalised (no parameters)."""

    def __init__(self, bands: tuple[int, int, int], scale: Tensor, offset: Tensor) -> None:
        super().__init__()
        self.register_buffer("bands", torch.tensor(bands, dtype=torch.long))
        self.register_buffer("scale", scale.reshape(1, 3, 1, 1).clone())
        self.register_buffer("offset", offset.reshape(1, 3, 1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.bands) * self.scale + self.offset


class LearnedProjection(nn.Module):
    """(B, C, H, W) -> (B, 3, H, W) by a trainable 1x1 convolution, initialised to equal :class:`PseudoRGB`."""

    def __init__(self, n_bands: int, bands: tuple[int, int, int], scale: Tensor, offset: Tensor) -> None:
        super().__init__()
        self.proj = nn.Conv2d(n_bands, 3, kernel_size=1)
        with torch.no_grad():
            self.proj.weight.zero_()
            for c, band in enumerate(bands):
                self.proj.weight[c, band, 0, 0] = scale[c]
            self.proj.bias.copy_(offset)

    def no_weight_decay(self) -> set[str]:
        """timm's hook (:mod:`study.models.freezing`): the pseudo-RGB initialisation is the prior to keep, not 0."""
        return {"proj.weight"}

    def forward(self, x: Tensor) -> Tensor:
        """In fp32 outside the trial's autocast: it reads raw cubes (a bf16 1x1 conv of raw counts rounds them)."""
        with full_precision(x.device):
            return self.proj(x.float())


def build_bridge(kind: str, images: np.ndarray, spec: DatasetSpec, bands_method: str = "wavelength",
                 wavelengths: np.ndarray | None = None) -> nn.Module:
    """The bridge of one trial, its scaling fitted on ``images`` (the training subset, (N, H, W, C))."""
    if kind not in BRIDGES:
        raise ValueError(f"unknown bridge {kind!r}; valid: {', '.join(BRIDGES)}")
    bands = choose_bands(spec, bands_method, wavelengths)
    if max(bands) >= images.shape[-1]:
        raise ValueError(f"bands {bands} do not exist in a cube of {images.shape[-1]} bands")
    scale, offset = affine_of(*fit_scaling(images, bands))
    if kind == "pseudo-rgb":
        return PseudoRGB(bands, scale, offset)
    return LearnedProjection(int(images.shape[-1]), bands, scale, offset)
