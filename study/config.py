"""StudyConfig: every setting of a study, validated once at the boundary.

Presets (``--smoke``, ``--demo``) fill in whatever the user did not say;
explicit flags always win. Validation runs before Ray starts, so a bad budget
costs milliseconds, not a cluster spin-up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from study.data.generator import GeneratorConfig
from study.data.specs import SPECS
from study.errors import ConfigError
from study.storage import check_results_text
from study.strategies import STRATEGIES

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
VIT_SIZES = ("tiny", "small", "base", "large")  # study.models.vit.SIZES (not imported: no torch here)
#: Settings added after studies were already being run: left out of the study id while at their default,
#: so re-running an older command still finds its results folder and finished cells.
_ADDED_LATER: dict[str, Any] = {"rgb_weights": None, "allow_random_init": False, "vit_size": None,
                                 "max_freeze_depth": None}
#: Settings that only some strategies read. They enter the id of those strategies' cells
#: (:meth:`StudyConfig.strategy_key`), not the study id, and the strategy list is not part of the study id
#: either: running strategies one at a time, or adding one to a finished study, lands in the same study
#: (and default results folder) and keeps every finished cell.
_FEATURE_SETTINGS = ("backbone", "bn_mode", "feature_dtype", "max_freeze_depth")
STRATEGY_SETTINGS: dict[str, tuple[str, ...]] = {
    "indomain": (), "indomain-fc": (), "crossdomain": _FEATURE_SETTINGS, "crossdomain-fc": _FEATURE_SETTINGS,
    "crossmodality": ("rgb_weights", "allow_random_init", "vit_size", "max_freeze_depth"),
}
_NOT_SHARED = frozenset(k for keys in STRATEGY_SETTINGS.values() for k in keys) | {"strategies"}
#: Runtime placement: where and how a study runs, not what it measures (never part of an id).
_PLACEMENT = ("results", "cache_dir", "address", "num_cpus")

#: What ``--smoke`` / ``--demo`` / nothing fill in for settings the user left out.
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(fractions=DEFAULT_FRACTIONS, trials=16, epochs=100, seeds=3, grace_period=10, width=None),
    "demo": dict(
        fractions=(0.1, 0.25, 1.0), trials=4, epochs=30, seeds=2, grace_period=5, width="small", batch_size=4,
        synthetic=GeneratorConfig(height=64, width=128, n_train=40, n_val=12, n_test=16),
        # a per-pixel transformer in every training step (k > 0) costs minutes per epoch on a laptop CPU
        max_freeze_depth=0,
    ),
    "smoke": dict(
        fractions=(0.5, 1.0), trials=2, epochs=2, seeds=1, grace_period=1, width="tiny",
        synthetic=GeneratorConfig(height=32, width=48, n_train=6, n_val=3, n_test=3), max_freeze_depth=0,
    ),
}


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: which cells, what budget per cell, where data and results live."""

    strategies: tuple[str, ...]
    dataset: str
    results: Path | str  # a local folder, or an object-store URI as text (s3://bucket/prefix; see study/storage.py)
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    trials: int = 16
    epochs: int = 100
    seeds: int = 3
    subset_seed: int = 0
    grace_period: int = 10
    reduction_factor: int = 2
    patience: int | None = 30
    width: str | None = None  # RU-Net width name or int; None: "full" on real data, "small" on synthetic
    batch_size: int | None = None  # None: the dataset's HS3-Bench batch size, capped at the subset size
    data_root: Path | None = None
    cache_dir: Path | None = None
    synthetic: GeneratorConfig = field(default_factory=GeneratorConfig)
    address: str | None = None
    num_cpus: int | None = None
    max_concurrent: int | None = None
    max_failures: int = 3
    #: HyperSL checkpoint for the feature strategies; None: the locally pretrained default (cached)
    backbone: Path | None = None
    bn_mode: str = "chunk"  # "chunk" (paper: train-mode BN statistics per pixel chunk) or "running"
    feature_dtype: str = "float16"
    #: GPU requests per trial: "auto" (if the cluster has GPUs when the study starts), "on" (always: on an
    #: autoscaling cluster this makes Ray start GPU workers), "off" (CPU only)
    gpus: str = "auto"
    #: crossmodality: DINOv2 weights file (timm / DINOv2 hub / Hugging Face layout); None: look in the HF hub cache
    rgb_weights: Path | None = None
    allow_random_init: bool = False  # crossmodality without pretrained weights (otherwise the study refuses)
    #: crossmodality ViT size (tiny/small/base/large); None: the weights' size, else tiny under --smoke/--demo
    #: (CPU-sized, no released weights) and small otherwise
    vit_size: str | None = None
    #: cap on the searched freeze depth k (trainable backbone groups/blocks); None: each search space's own range
    max_freeze_depth: int | None = None
    dashboard: bool = False  # a local Ray's dashboard, bound to dashboard_host (localhost unless told otherwise)
    dashboard_host: str = "127.0.0.1"
    preset: str = "full"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the rule and the values that break it."""
        if not self.strategies:
            raise ConfigError("no strategy given; valid: all, " + ", ".join(STRATEGIES))
        for s in self.strategies:
            if s not in STRATEGIES:
                raise ConfigError(f"unknown strategy {s!r}; valid strategies: all, {', '.join(sorted(STRATEGIES))}")
        if self.dataset not in SPECS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(sorted(SPECS))}")
        if not self.fractions:
            raise ConfigError("--fractions is empty; give e.g. 0.1,0.5,1.0")
        for f in self.fractions:
            if not 0.0 < f <= 1.0:
                raise ConfigError(f"every fraction must satisfy 0 < f <= 1, got {f}")
        for name in ("trials", "epochs", "seeds", "grace_period"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.grace_period > self.epochs:
            raise ConfigError(
                f"grace_period <= epochs must hold, got (grace_period={self.grace_period}, epochs={self.epochs}); "
                "lower --grace-period or raise --epochs"
            )
        if self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor must be >= 2, got {self.reduction_factor}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_results_text(self.results)  # URI syntax only; reaching the store is checked before training
        if self.gpus not in ("auto", "on", "off"):
            raise ConfigError(f"--gpus must be auto, on or off, got {self.gpus!r}")
        if self.bn_mode not in ("chunk", "running"):
            raise ConfigError(f"--bn-mode must be chunk or running, got {self.bn_mode!r}")
        if self.feature_dtype not in ("float16", "float32"):
            raise ConfigError(f"--feature-dtype must be float16 or float32, got {self.feature_dtype!r}")
        if self.backbone is not None and not Path(self.backbone).is_file():
            raise ConfigError(f"--backbone {self.backbone} is not a file (expected a HyperSL checkpoint .pt/.pth "
                              "or .safetensors)")
        if self.rgb_weights is not None and not Path(self.rgb_weights).is_file():
            raise ConfigError(f"--rgb-weights {self.rgb_weights} is not a file (expected DINOv2 ViT weights, "
                              ".safetensors or .pth)")
        if self.max_freeze_depth is not None and self.max_freeze_depth < 0:
            raise ConfigError(f"--max-freeze-depth must be >= 0 (0 = frozen backbones), got {self.max_freeze_depth}")
        if self.vit_size is not None and self.vit_size not in VIT_SIZES:
            raise ConfigError(f"--vit-size must be one of {', '.join(VIT_SIZES)}, got {self.vit_size!r}")
        if self.data_root is not None and not Path(self.data_root).is_dir():
            raise ConfigError(f"--data-root {self.data_root} is not a directory (expected <dataset>_<split>.h5 files)")

    @property
    def needs_features(self) -> bool:
        """Whether any chosen strategy trains on frozen HyperSL features."""
        return any(STRATEGIES[s].inputs == "features" for s in self.strategies)

    @property
    def rgb_default_size(self) -> str:
        """crossmodality ViT size when neither --vit-size nor a weights file says: tiny on CPU presets."""
        return self.vit_size or ("tiny" if self.preset in ("smoke", "demo") else "small")

    @property
    def model_width(self) -> str:
        if self.width is not None:
            return self.width
        return "full" if self.data_root is not None else "small"

    def settings(self) -> dict[str, Any]:
        """JSON-able settings (written to study.json, and hashed into the study id)."""
        d = asdict(self)
        d["results"] = str(self.results)
        d["data_root"] = str(self.data_root) if self.data_root else None
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        d["backbone"] = str(self.backbone) if self.backbone else None
        d["rgb_weights"] = str(self.rgb_weights) if self.rgb_weights else None
        d["model_width"] = self.model_width
        return d

    def _id_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.settings().items()
                if k not in _PLACEMENT and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}

    @staticmethod
    def _digest(settings: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]

    @property
    def study_id(self) -> str:
        """Stable id of the protocol every strategy shares (data, fractions, budget, ...): not of the strategy
        list, the strategy-specific settings (:data:`STRATEGY_SETTINGS`) or the runtime placement."""
        return f"{self.dataset}-{self._digest({k: v for k, v in self._id_settings().items() if k not in _NOT_SHARED})}"

    def strategy_key(self, strategy: str) -> str:
        """10 hex digits over the shared protocol plus the settings ``strategy`` reads: the tail of its cell ids."""
        mine = set(STRATEGY_SETTINGS[strategy])
        return self._digest({k: v for k, v in self._id_settings().items() if k not in _NOT_SHARED or k in mine})

    @property
    def legacy_study_id(self) -> str:
        """The study id of earlier versions (every setting, the strategy list included): only to recognise
        cells that stores written by them already finished."""
        return f"{self.dataset}-{self._digest(self._id_settings())}"


def build_config(preset: str, **given: Any) -> StudyConfig:
    """Combine a preset with the settings the user gave explicitly (None = not given)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    values = {k: v for k, v in PRESETS[preset].items()}
    values.update({k: v for k, v in given.items() if v is not None})
    values["preset"] = preset
    return StudyConfig(**values)


def with_overrides(cfg: StudyConfig, **changes: Any) -> StudyConfig:
    return replace(cfg, **changes)
