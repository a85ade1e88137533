"""``--features``: per dataset, whether a study's k = 0 trials read exported features or compute them.

Decided once per study and dataset, before Ray starts, from the study's feature kind's registry entry: a
kind whose ``BackboneKind.in_trial`` names how its trials compute the features themselves can do either,
any other kind only reads its export. The choice does not key the study (the features agree within fp32
rounding), so rows record it (``features_mode``) and the run header prints it with the cost model's numbers
(:mod:`study.features.cost`). Imports torch only when a study has a feature strategy.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from study.config import StudyConfig
from study.data.h5reader import H5Split
from study.data.specs import DatasetSpec
from study.errors import ConfigError
from study.strategies import BACKBONES


class Backbone(Protocol):
    """What is read of a resolved backbone (``study.orchestration.inputs.ResolvedBackbone``)."""

    kind: str
    path: Path | None
    sha: str | None


@dataclass(frozen=True)
class InTrialFeatures:
    """What a backbone kind's ``in_trial`` function says about computing its k = 0 features in the trial."""

    dim: int  # feature width D
    flops_per_pixel: float  # the frozen backbone's forward
    #: constants of such a trial (``features = "compute"`` and what the trainable needs to make the features the
    #: cache would hold); paths and hashes, never arrays
    trial_config: dict[str, Any]


@dataclass(frozen=True)
class FeaturePlan:
    """Where one dataset's k = 0 trials get their features: ``cache`` or ``compute``."""

    mode: str
    line: str  # the run header's line: the choice, why, and the cost model's numbers
    trial_config: dict[str, Any] = field(default_factory=dict)  # added to every trial config of compute cells


def trial_device(cfg: StudyConfig) -> str:
    """Where the study's trials will run: ``cpu``, or a GPU's name (this machine's, else the one Ray's
    ``accelerator_type`` resource names, else ``GPU``), following ``--gpus``."""
    if cfg.runtime.gpus == "off":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    ray = sys.modules.get("ray")  # a cluster was joined before the inputs were checked (study.run)
    if ray is not None and ray.is_initialized():
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) > 0 or cfg.runtime.gpus == "on":
            names = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
            return names[0] if names else "GPU"
        return "cpu"
    return "GPU" if cfg.runtime.gpus == "on" else "cpu"


def plan_features(cfg: StudyConfig, spec: DatasetSpec, data_root: Path, splits: dict[str, H5Split],
                  backbone: Backbone) -> FeaturePlan:
    """``--features`` for one dataset: the mode as given, or under ``auto`` the cheaper by the cost model over
    all training images and the validation split (an epoch) on :func:`trial_device`."""
    from study.features.cost import DTYPE_BYTES, FeatureCost, choose_features, flop_rate  # torch: when used

    kind = BACKBONES[backbone.kind]
    mode = cfg.runtime.features
    if kind.in_trial is None:
        if mode == "compute":
            raise ConfigError(f"--features compute: the {kind.name} backbone kind's trials cannot compute its "
                              "features themselves (its BACKBONES entry has no in_trial); use --features cache "
                              "or auto")
        return FeaturePlan("cache", f"features of {spec.name}: cache (the {kind.name} kind has no in-trial path)")
    info: InTrialFeatures = kind.load_in_trial()(cfg, spec, data_root, backbone)
    epoch = (splits["train"], splits["val"])
    pixels = sum(h * w for split in epoch for h, w in split.shapes)
    raw_bytes = sum(Path(split.path).stat().st_size for split in epoch) / max(1, pixels)
    device = trial_device(cfg)
    cost = FeatureCost(pixels, info.dim * DTYPE_BYTES[cfg.options.feature_dtype], raw_bytes,
                       info.flops_per_pixel, device, flop_rate(device))
    chosen = choose_features(mode, cost)
    why = "--features auto: the cheaper" if mode == "auto" else f"--features {mode}"
    return FeaturePlan(chosen, f"features of {spec.name}: {chosen} ({why}; {cost.describe()})",
                       info.trial_config if chosen == "compute" else {})
