"""The settings of a pretraining: every field changes the produced weights, so all of them key the cache.

Every default is HyperSL's published recipe (docs/reference.md §R12); the opt-in deviations and why
they stay off are in docs/pretraining.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from study.errors import HsiStudyError

#: Bump when the pretraining code changes what a given config produces (invalidates cached backbones).
#: 2: new config fields (min_visible, mask_input, band_subsets, sources, sensors, ip_holdout); defaults as before.
PRETRAIN_VERSION = 2
STATEMENT = (
    "This is a small-scale sanity pretraining of HyperSL on about 27 thousand real spectra (Indian Pines and "
    "earthlib's pervious library), not the released HyperSL weights (pretrained on more than 300 million "
    "EnMAP/DESIS spectra). Results obtained with it say nothing about the published backbone's quality."
)
#: Default steps per size; each ends a warm-restart cycle (10+20+40+...: lr back at its minimum).
#: `cpu` is sized for a few minutes on 2 CPU cores.
DEFAULT_STEPS: dict[str, int] = {"tiny": 30, "cpu": 630, "small": 2550, "base": 2550, "large": 2550, "huge": 2550}


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting that changes the produced weights (the cache key hashes all of them)."""

    size: str = "cpu"
    steps: int = DEFAULT_STEPS["cpu"]
    batch_size: int = 128  # spectra per source per step (HyperSL: 256 per sensor)
    seed: int = 0
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 5e-5
    eps: float = 1e-8
    grad_clip: float = 5.0
    mask_ratio: float = 0.95
    mask_input: bool = False  # also zero the masked bands before the stem (HyperSL masks after it)
    min_visible: int = 0  # keep >= this many band tokens visible per spectrum (0: the paper's floor(L(1 - r)), >= 1)
    t0: int = 10
    t_mult: int = 2
    min_bands: int = 8
    band_subsets: bool = True  # random band windows per batch (False: always the sensor's full layout)
    include_simulated: bool = True
    ip_columns: tuple[int, int] = (0, 145)
    sources: tuple[str, ...] = ("indian_pines", "earthlib")  # one batch per source per step, losses summed
    sensors: tuple[str, ...] = ("hyko2", "hsidrive", "hcv2")  # band layouts (a random one per batch)
    ip_holdout: str = ""  # Indian Pines blocks kept out (pretrain_data.indian_pines_holdout), e.g. "checker20:test"
    z_recon: float = 0.0  # weight of an auxiliary loss: reconstruct the spectrum from the feature z alone
    z_recon_mask: float = 0.0  # mask ratio of the encoder pass whose z that auxiliary loss decodes

    def validate(self) -> PretrainConfig:
        """``self`` if every field is in range, else an :class:`HsiStudyError` naming the bad one."""
        from study.models.hypersl import SIZES

        if self.size not in SIZES:
            raise HsiStudyError(f"unknown HyperSL size {self.size!r}; valid: {', '.join(SIZES)}")
        if self.steps < 1 or self.batch_size < 2:
            raise HsiStudyError(f"steps >= 1 and batch size >= 2 must hold, got {self.steps} and {self.batch_size}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise HsiStudyError(f"mask ratio must be in [0, 1), got {self.mask_ratio}")
        if not (self.z_recon >= 0.0 and math.isfinite(self.z_recon)) or not 0.0 <= self.z_recon_mask < 1.0:
            raise HsiStudyError(f"z_recon must be >= 0 and z_recon_mask in [0, 1), got {self.z_recon}, "
                                f"{self.z_recon_mask}")
        if self.min_visible < 0:
            raise HsiStudyError(f"min visible tokens must be >= 0, got {self.min_visible}")
        from study.data.pretrain_data import SENSORS, indian_pines_holdout

        unknown = set(self.sources) - {"indian_pines", "earthlib"} or set(self.sensors) - set(SENSORS)
        if unknown or not self.sources or not self.sensors:
            raise HsiStudyError(f"sources must be a non-empty subset of indian_pines, earthlib and sensors of "
                                f"{', '.join(SENSORS)}; got {self.sources}, {self.sensors}")
        if self.ip_holdout:
            indian_pines_holdout(self.ip_holdout)  # raises on a bad spec
        return self


def default_config(size: str = "cpu", smoke: bool = False, **overrides: Any) -> PretrainConfig:
    """The default settings for ``size`` (``smoke``: a few seconds, for tests and CI)."""
    base = PretrainConfig(size=size, steps=DEFAULT_STEPS.get(size, 1000))
    if smoke:
        base = replace(base, steps=8, batch_size=32)
    return replace(base, **overrides).validate()


def effective_mask_ratio(config: PretrainConfig, n_bands: int) -> float:
    """The mask ratio for a batch of ``n_bands`` bands: ``mask_ratio``, lowered so that >= ``min_visible`` stay."""
    if config.min_visible <= 0 or n_bands * (1.0 - config.mask_ratio) >= config.min_visible:
        return config.mask_ratio
    # HyperSL keeps int(L * (1 - r)) tokens; the +0.5 guards against float round-down
    return 1.0 - (config.min_visible + 0.5) / n_bands if config.min_visible < n_bands else 0.0


#: Opt-in fields left out of :func:`settings_hash` while at their defaults (the default backbone's key is unchanged).
_OPT_IN_UNHASHED_AT_DEFAULT = ("z_recon", "z_recon_mask")


def settings_hash(config: PretrainConfig) -> str:
    """12 hex digits over the config and the code version: the cache key of a pretrained backbone."""
    settings = asdict(config)
    for name in _OPT_IN_UNHASHED_AT_DEFAULT:  # fields added after version 2: default values keep old cache keys
        if settings[name] == PretrainConfig.__dataclass_fields__[name].default:
            del settings[name]
    key = json.dumps({"config": settings, "version": PRETRAIN_VERSION}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]
