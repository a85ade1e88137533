"""``--features cache|compute|auto``: read a frozen backbone's k = 0 features from the cache, or compute them in
the trial, whichever an epoch costs less.

A k = 0 trial of a feature strategy needs the backbone's per-pixel features of its training images and of the
validation split every epoch. ``cache`` reads them from the exported feature files (``study.features``);
``compute`` runs the frozen backbone in the trial on the raw spectra (``study.train.freeze_depth``), with no
feature files at all. Both give the same features within fp32 rounding, so the choice is a matter of cost,
decided here by one small model whose numbers the run header prints (:meth:`FeatureCost.describe`):

- **cache**: an epoch reads ``pixels x D x feature-dtype bytes`` at :data:`READ_BYTES_PER_S`;
- **compute**: it reads the raw files instead (their bytes per pixel, measured off the files) and spends the
  backbone's forward FLOPs per pixel (counted with ``torch.utils.flop_counter``) at the device's rate:
  :data:`FLOP_SHARE` of the GPU's dense IEEE-fp32 peak (the frozen backbone runs in IEEE fp32, never TF32 or
  bf16: ``study.models.precision``), or :data:`CPU_FLOPS_PER_S` for one CPU trial thread.

Reading and computing are added, not overlapped (a CPU trial reads in its own process): the model leans
towards the cache. The pixel count scales both sides alike, so the choice depends on bytes against FLOPs per
pixel, not on the data set's size; measured and estimated figures: docs/performance.md §12.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ``--features`` values; ``auto`` asks :func:`choose_features`.
FEATURE_MODES: tuple[str, ...] = ("cache", "compute", "auto")
#: Share of a GPU's peak a well-fed forward sustains (the convention of docs/performance.md §8).
FLOP_SHARE = 0.4
#: Dense peaks (TFLOP/s) by the GPU's name as CUDA or Ray report it, first match wins: (IEEE fp32 without
#: tensor cores, bf16 tensor cores). The decision uses fp32, what the frozen backbone runs in; bf16 is the
#: convention performance.md §8 quotes, printed for comparison. T4 has no bf16: its fp16 figure.
GPU_PEAKS_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H100 PCIe", 51.0, 756.0), ("H100 NVL", 60.0, 835.0), ("H100", 67.0, 989.0), ("H200", 67.0, 989.0),
    ("A100", 19.5, 312.0), ("A10G", 31.2, 125.0), ("L40S", 91.6, 362.0), ("L4", 30.3, 121.0), ("T4", 8.1, 65.0),
)
#: A GPU not in the table (a cluster that does not say which): an A10G's figures, the smallest common one.
UNKNOWN_GPU = "A10G"
#: One CPU trial thread, fp32 HyperSL forward: the upper end of what performance.md §3 measured on this
#: project's 2-core EPYC box at low load (22-79 GFLOP/s; 3-12 under a load of 14). A generous figure on
#: purpose: the cache still wins by three orders of magnitude on a CPU.
CPU_FLOPS_PER_S = 80e9
#: Bytes per second a trial's loader reads a feature or raw file at. Measured on this project's 2-core box from
#: the page cache: h5py alone 1.0 GB/s, the trials' reader 0.12 GB/s (its float16 -> float32 conversion in numpy
#: is the bottleneck, per core; performance.md §12); a GPU trial reads with up to 8 loader workers, and a local
#: NVMe disk gives 2-3 GB/s: 1 GB/s stands for both. Slower storage (NFS, EFS) favours compute.
READ_BYTES_PER_S = 1e9
#: Bytes per stored feature value by ``--feature-dtype``.
DTYPE_BYTES = {"float16": 2, "float32": 4}


def gpu_peaks(name: str) -> tuple[str, float, float]:
    """(table name, fp32 peak, bf16 peak) in FLOP/s of the GPU called ``name`` (:data:`UNKNOWN_GPU` if unknown)."""
    known = next((p for p in GPU_PEAKS_TFLOPS if p[0].lower() in name.lower()), None)
    key, fp32, bf16 = known or next(p for p in GPU_PEAKS_TFLOPS if p[0] == UNKNOWN_GPU)
    return key, fp32 * 1e12, bf16 * 1e12


def flop_rate(device: str) -> float:
    """FLOP/s a frozen backbone's fp32 forward sustains on ``device`` (``cpu`` or a GPU's name)."""
    if device == "cpu":
        return CPU_FLOPS_PER_S
    return FLOP_SHARE * gpu_peaks(device)[1]


@dataclass(frozen=True)
class FeatureCost:
    """One epoch's k = 0 features of one data set (all training images and the validation split), read from
    the cache or computed in the trial: the cost model's inputs and its two estimates."""

    pixels: int
    feature_bytes: float  # per pixel: D x the feature dtype's bytes
    raw_bytes: float  # per pixel of the raw files compute reads instead
    flops: float  # per pixel: the backbone's forward
    device: str  # "cpu" or the GPU's name
    flop_rate: float  # FLOP/s
    read_rate: float = READ_BYTES_PER_S

    @property
    def cache_s(self) -> float:
        """Seconds an epoch spends reading cached features."""
        return self.pixels * self.feature_bytes / self.read_rate

    @property
    def compute_s(self) -> float:
        """Seconds an epoch spends reading raw spectra and running the backbone on them."""
        return self.pixels * (self.raw_bytes / self.read_rate + self.flops / self.flop_rate)

    @property
    def cheaper(self) -> str:
        """``cache`` or ``compute``, whichever the model says an epoch costs less (a tie: the cache)."""
        return "compute" if self.compute_s < self.cache_s else "cache"

    def describe(self) -> str:
        """The numbers behind the choice, for the run header."""
        gb = 1e9
        return (f"an epoch of {self.pixels / 1e6:.3g} M px reads {self.pixels * self.feature_bytes / gb:.3g} GB of "
                f"features ({_secs(self.cache_s)} at {self.read_rate / gb:.3g} GB/s), or reads "
                f"{self.pixels * self.raw_bytes / gb:.3g} GB of raw spectra and computes "
                f"{self.pixels * self.flops / 1e12:.3g} TFLOP ({_secs(self.compute_s)} at "
                f"{self.flop_rate / 1e12:.3g} TFLOP/s fp32 on {self.device})")


def _secs(s: float) -> str:
    return f"{s:.3g} s" if s < 600 else f"{s / 3600:.3g} h"


def choose_features(mode: str, cost: FeatureCost | None) -> str:
    """What a study's k = 0 trials do: ``mode`` itself unless it is ``auto``, then the cheaper by ``cost``
    (None, a backbone that cannot compute in the trial: the cache)."""
    if mode not in FEATURE_MODES:
        raise ValueError(f"features mode must be one of {', '.join(FEATURE_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    return "cache" if cost is None else cost.cheaper


def forward_flops(model: Any, wavelengths: Any, pixels: int = 8) -> float:
    """FLOPs per pixel of ``model.features(spectra, wavelengths)`` (HyperSL's export forward), counted by
    ``torch.utils.flop_counter`` on ``pixels`` spectra of a meta-device copy (no arithmetic runs; the
    per-pixel transformer and stem make the count linear in pixels)."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).eval().to("meta")
    wl = torch.as_tensor(wavelengths, dtype=torch.float32).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta.features(torch.zeros(pixels, wl.shape[-1], device="meta"), wl)
    return counter.get_total_flops() / pixels
