"""StudyConfig: every setting of a study, in four groups, validated once at the boundary.

- :class:`DataSettings`: which data set, which images, which labelled fractions;
- :class:`Budget`: what every cell gets (trials, epochs, seeds, ASHA, patience), so arms are compared fairly;
- :class:`ModelOptions`: model sizes and the settings only some strategies read (backbones, export);
- :class:`Runtime`: where and how a study runs (results location, cluster, GPUs): never part of an id.

Presets (``--smoke``, ``--demo``) fill in whatever the user did not say; explicit
flags always win. Validation runs before Ray starts, so a bad budget costs
milliseconds, not a cluster spin-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from study.config.presets import (
    DEFAULT_FRACTIONS,
    DEFAULT_SEARCH_BATCH,
    PAPER_MODIFIED,
    PAPER_RECIPE,
    PROTOCOLS,
)
from study.data.specs import SPECS
from study.data.synthetic.generator import GeneratorConfig
from study.errors import ConfigError
from study.hashing import json_digest
from study.hub import check_hub_ref, is_hub_ref
from study.store import check_results_text
from study.strategies import BACKBONES, STRATEGIES, get_strategy, strategy_settings

VIT_SIZES = ("tiny", "small", "base", "large")  # study.models.vit.SIZES (not imported: no torch here)
RUNET_WIDTHS = ("full", "small", "tiny")  # study.models.runet's named widths (not imported: no torch here)
FEATURE_MODES = ("cache", "compute", "auto")  # study.features.cost.FEATURE_MODES (not imported: no torch here)
#: Settings added after studies were already being run: left out of ids while at their default, so
#: re-running an older command still finds its results folder and finished cells.
_ADDED_LATER: dict[str, Any] = {"rgb_weights": None, "allow_random_init": False, "vit_size": None,
                                 "max_freeze_depth": None, "tune_seed": 0, "protocol": "tuned", "deviations": "",
                                 "deterministic": False, "search_batch": None}


def _at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


@dataclass(frozen=True)
class DataSettings:
    """Which data a study measures on: the data set, its files (or the synthetic default), the subsets."""

    datasets: tuple[str, ...] = ("hyko2",)  # one study may cover several: one store, one report
    data_root: Path | None = None  # real HS3-Bench files of every dataset; None: the embedded synthetic default
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    subset_seed: int = 0
    synthetic: GeneratorConfig = field(default_factory=GeneratorConfig)

    def validate(self) -> None:
        if not self.datasets:
            raise ConfigError(f"--dataset is empty; give one or more of {', '.join(SPECS)}, or all")
        for name in self.datasets:
            if name not in SPECS:
                raise ConfigError(f"unknown dataset {name!r}; valid datasets: all, {', '.join(sorted(SPECS))}")
        if not self.fractions:
            raise ConfigError("--fractions is empty; give e.g. 0.1,0.5,1.0")
        for f in self.fractions:
            if not 0.0 < f <= 1.0:
                raise ConfigError(f"every fraction must satisfy 0 < f <= 1, got {f}")
        if self.subset_seed < 0:
            raise ConfigError(f"--subset-seed must be >= 0, got {self.subset_seed}")
        if self.data_root is not None and not Path(self.data_root).is_dir():
            raise ConfigError(f"--data-root {self.data_root} is not a directory (expected <dataset>_<split>.h5 files)")


@dataclass(frozen=True)
class Budget:
    """The budget every cell gets, so strategies are compared fairly (tuning, final seeds, stopping)."""

    trials: int = 16
    epochs: int = 100  # max epochs per trial, ASHA's max_t
    seeds: int = 3  # final re-training seeds of the chosen configuration
    grace_period: int = 10
    reduction_factor: int = 2
    patience: int | None = 30
    batch_size: int | None = None  # None: the dataset's HS3-Bench batch size, capped at the subset size
    max_concurrent: int | None = None
    max_failures: int = 3
    tune_seed: int = 0  # the searcher's seed
    #: search and early stopping follow trial order and results only, never timing (study/search/deterministic.py)
    deterministic: bool = False
    search_batch: int | None = None  # --deterministic: trials proposed per wave (None: max_concurrent, else 4)

    @property
    def proposal_batch(self) -> int:
        """Trials per proposal wave of a deterministic search: fixed by flags, never by free cluster slots."""
        return self.search_batch or self.max_concurrent or DEFAULT_SEARCH_BATCH

    def validate(self) -> None:
        for name in ("trials", "epochs", "seeds", "grace_period"):
            _at_least(name, getattr(self, name), 1)
        if self.grace_period > self.epochs:
            raise ConfigError(
                f"grace_period <= epochs must hold, got (grace_period={self.grace_period}, epochs={self.epochs}); "
                "lower --grace-period or raise --epochs")
        _at_least("reduction_factor", self.reduction_factor, 2)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("max_concurrent", self.max_concurrent, 1)
        _at_least("search_batch", self.search_batch, 1)
        if self.search_batch is not None and not self.deterministic:
            raise ConfigError("--search-batch sets the proposal waves of --deterministic; add --deterministic")
        _at_least("max_failures", self.max_failures, 0)
        _at_least("patience", self.patience, 1)


@dataclass(frozen=True)
class ModelOptions:
    """Model sizes and the settings only some strategies read (their registry entries list which)."""

    width: str | int | None = None  # RU-Net width name or int; None: "full" on real data, "small" on synthetic
    #: HyperSL checkpoint for the feature strategies (a path, or ``hf://OWNER/REPO/FILE[@REV]`` text: study.hub);
    #: None: the locally pretrained default (cached)
    backbone: Path | str | None = None
    bn_mode: str = "chunk"  # "chunk" (paper: train-mode BN statistics per pixel chunk) or "running"
    feature_dtype: str = "float16"
    #: DINOv2 weights file (timm / DINOv2 hub / Hugging Face layout; a path or ``hf://`` text); None: look in the
    #: HF hub cache
    rgb_weights: Path | str | None = None
    allow_random_init: bool = False  # an RGB ViT without pretrained weights (otherwise the study refuses)
    #: RGB ViT size; None: the weights' size, else tiny under --smoke/--demo and small otherwise
    vit_size: str | None = None
    #: cap on the searched freeze depth k (trainable backbone groups/blocks); None: each search space's own range
    max_freeze_depth: int | None = None

    def validate(self) -> None:
        if isinstance(self.width, bool) or (isinstance(self.width, int) and self.width < 1) or (
                isinstance(self.width, str) and self.width not in RUNET_WIDTHS):
            raise ConfigError(f"--width must be one of {', '.join(RUNET_WIDTHS)} or an integer >= 1 (base channels), "
                              f"got {self.width!r}")
        if self.bn_mode not in ("chunk", "running"):
            raise ConfigError(f"--bn-mode must be chunk or running, got {self.bn_mode!r}")
        if self.feature_dtype not in ("float16", "float32"):
            raise ConfigError(f"--feature-dtype must be float16 or float32, got {self.feature_dtype!r}")
        for flag, value in (("--backbone", self.backbone), ("--rgb-weights", self.rgb_weights)):
            if is_hub_ref(value):  # resolved (cache, else download) once per study by the kind's provider
                check_hub_ref(str(value), flag)
        if self.backbone is not None and not is_hub_ref(self.backbone) and not Path(self.backbone).is_file():
            raise ConfigError(f"--backbone {self.backbone} is not a file (expected a HyperSL checkpoint .pt/.pth "
                              "or .safetensors, or hf://OWNER/REPO/FILE)")
        if self.rgb_weights is not None and not is_hub_ref(self.rgb_weights) and not Path(self.rgb_weights).is_file():
            raise ConfigError(f"--rgb-weights {self.rgb_weights} is not a file (expected DINOv2 ViT weights, "
                              ".safetensors or .pth)")
        if self.max_freeze_depth is not None and self.max_freeze_depth < 0:
            raise ConfigError(f"--max-freeze-depth must be >= 0 (0 = frozen backbones), got {self.max_freeze_depth}")
        if self.vit_size is not None and self.vit_size not in VIT_SIZES:
            raise ConfigError(f"--vit-size must be one of {', '.join(VIT_SIZES)}, got {self.vit_size!r}")


#: ``--data-placement`` values (study.data.placement.PLACEMENTS; config imports no torch)
DATA_PLACEMENTS = ("auto", "device", "memory", "stream")


@dataclass(frozen=True)
class Runtime:
    """Where and how a study runs, not what it measures (results, cache, cluster: not part of any id)."""

    results: Path | str = Path("results")  # a folder, or an object-store URI as text (see study/store/location.py)
    cache_dir: Path | None = None
    address: str | None = None
    num_cpus: int | None = None
    #: GPU requests per trial: "auto" (if the cluster has GPUs when the study starts), "on" (always: on an
    #: autoscaling cluster this makes Ray start GPU workers), "off" (CPU only)
    gpus: str = "auto"
    #: where k = 0 trials of feature strategies get the frozen backbone's features (``--features``): "cache"
    #: (the export), "compute" (in the trial, no feature files) or "auto" (the cheaper: study.features.cost)
    features: str = "auto"
    dashboard: bool = False  # a local Ray's dashboard, bound to dashboard_host (localhost unless told otherwise)
    dashboard_host: str = "127.0.0.1"
    #: cells in flight at once (each its own Tuner in a driver thread); None: every pending cell
    max_concurrent_cells: int | None = None
    #: copy a study's input files once per node to this fast local folder before its first trial there
    stage_data: Path | None = None
    compile: bool = False  # torch.compile the model in every trial (opt-in: it pays only for long GPU runs)
    #: host memory of prefetched batches per trial's loader (None: ``study.data.stream.LOADER_MEMORY``)
    loader_memory_gib: float | None = None
    #: experiment trackers fed by Ray Tune's logger callbacks (``--log-to``: mlflow, tensorboard, wandb)
    log_to: tuple[str, ...] = ()
    #: where a trial's splits live (``study.data.placement``): auto, device, memory, stream (same results whichever)
    data_placement: str = "auto"

    def validate(self) -> None:
        from study.config.file import check_trackers, parse_log_to

        check_trackers(parse_log_to(self.log_to))  # a missing package: one line naming its extra, before Ray
        _at_least("max_concurrent_cells", self.max_concurrent_cells, 1)
        _at_least("num_cpus", self.num_cpus, 1)
        if self.loader_memory_gib is not None and not self.loader_memory_gib > 0:
            raise ConfigError(f"--loader-memory-gib must be > 0 GiB, got {self.loader_memory_gib}")
        check_results_text(self.results)  # URI syntax only; reaching the store is checked before training
        if self.gpus not in ("auto", "on", "off"):
            raise ConfigError(f"--gpus must be auto, on or off, got {self.gpus!r}")
        if self.features not in FEATURE_MODES:
            raise ConfigError(f"--features must be one of {', '.join(FEATURE_MODES)}, got {self.features!r}; "
                              "auto picks the cheaper of reading exported features and computing them")
        if self.data_placement not in DATA_PLACEMENTS:
            raise ConfigError(f"--data-placement must be one of {', '.join(DATA_PLACEMENTS)}, got "
                              f"{self.data_placement!r}; fix: auto (default) picks the fastest that fits")


#: the four groups of a StudyConfig by attribute name (build_config files a flat setting into its group)
SETTING_GROUPS = {"data": DataSettings, "budget": Budget, "options": ModelOptions, "runtime": Runtime}
#: Runtime settings left out of ids. gpus and the dashboard settings stay in them, as they always were, so that
#: ids (and finished cells) of existing stores stay valid.
_PLACEMENT = frozenset({"results", "cache_dir", "address", "num_cpus", "max_concurrent_cells", "stage_data",
                        "compile", "log_to", "loader_memory_gib", "data_placement"})

#: --features changes where k = 0 features come from, not what they are (equal within fp32 rounding): not in ids
#: either; rows record it (``features_mode``)
_PLACEMENT |= {"features"}


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: which strategies, on which data, with what budget, where it runs."""

    strategies: tuple[str, ...]
    data: DataSettings = field(default_factory=DataSettings)
    budget: Budget = field(default_factory=Budget)
    options: ModelOptions = field(default_factory=ModelOptions)
    runtime: Runtime = field(default_factory=Runtime)
    preset: str = "full"
    #: "tuned": Optuna + ASHA per cell, starting from the published recipe; "paper": the recipe only, verbatim
    protocol: str = "tuned"
    #: ``--config`` search-space overrides: strategy -> hyperparameter -> spec (study/config/file.py). Not in
    #: ``settings()``: a changed space keys its strategy's cells (orchestration.plan.cell_id), never the study id
    search_spaces: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict, hash=False)
    #: ``--allow-deviations``: a paper study may contradict the recipe (:attr:`deviations`); its rows then say
    #: ``protocol = paper-modified``. Not a setting: the deviations themselves key the study
    allow_deviations: bool = False

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ConfigError("no strategy given; valid: all, " + ", ".join(STRATEGIES))
        for s in self.strategies:
            try:
                get_strategy(s)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.protocol == "paper":
            missing = [s for s in self.strategies if get_strategy(s).recipe is None]
            if missing:
                raise ConfigError(f"--protocol paper: {', '.join(missing)} has no published recipe to reproduce; "
                                  "run it with the tuned protocol (the default) or leave it out of --strategy")
            if any(self.search_spaces.get(s) for s in self.strategies):
                raise ConfigError("--protocol paper searches nothing, so [search_space.*] overrides in --config "
                                  "cannot apply; drop them or use the tuned protocol")
        for group in (self.data, self.budget, self.options, self.runtime):
            group.validate()
        if self.deviations and not self.allow_deviations:
            raise ConfigError(self._deviation_message())

    @property
    def deviations(self) -> tuple[str, ...]:
        """``--protocol paper`` only: every setting that contradicts the recipe, as ``name=value``
        (``epochs=3``, ``width=tiny``, ``backbone=sanity``), in :data:`PAPER_RECIPE`'s order; () otherwise."""
        if self.protocol != "paper":
            return ()
        have = {**asdict(self.budget), **asdict(self.options), "width": self.model_width}
        out = [f"{k}={have[k]}" for k, want in PAPER_RECIPE.items() if have[k] != want]
        for name in self.backbone_kinds():  # a kind whose default weights are not the ones the recipe used
            kind = BACKBONES[name]
            if kind.paper_weights is not None and getattr(self.options, kind.weights_setting) is None:
                out.append(f"{kind.weights_setting}={kind.default_name}")
        return tuple(out)

    @property
    def protocol_label(self) -> str:
        """What rows, the header and the report call this study's protocol: ``paper-modified`` for a paper study
        with deviations, else the protocol itself."""
        return PAPER_MODIFIED if self.deviations else self.protocol

    def _deviation_message(self) -> str:
        """The one line refusing a paper study's deviations: the default weights first (where the right ones
        are), else every contradicting flag."""
        for name in self.backbone_kinds():
            kind = BACKBONES[name]
            if f"{kind.weights_setting}={kind.default_name}" in self.deviations:
                users = ", ".join(s for s in self.strategies if get_strategy(s).backbone == name)
                flag = "--" + kind.weights_setting.replace("_", "-")
                return (f"--protocol paper: {users} would run on the {kind.default_name} {name} backbone, not the "
                        f"weights the paper used; pass {flag} with them ({kind.paper_weights}), or add "
                        f"--allow-deviations (rows then say protocol = {PAPER_MODIFIED})")
        flags = [f"--{d.partition('=')[0].replace('_', '-')} {d.partition('=')[2]}" for d in self.deviations]
        recipe = ", ".join(f"{d.partition('=')[0]} = {PAPER_RECIPE[d.partition('=')[0]]}" for d in self.deviations)
        preset = f" (the --{self.preset} preset sets its own budget)" if self.preset != "full" else ""
        return (f"--protocol paper trains the published recipe verbatim ({recipe}); {' and '.join(flags)} "
                f"contradict{'s' if len(flags) == 1 else ''} it{preset}: drop {'it' if len(flags) == 1 else 'them'}, "
                f"or add --allow-deviations (rows then say protocol = {PAPER_MODIFIED}) or use the tuned protocol")

    @property
    def subset_method(self) -> str:
        """How training subsets are drawn: the benchmark's seed-42 prefix under the paper protocol."""
        return "paper" if self.protocol == "paper" else "cover"

    @property
    def needs_features(self) -> bool:
        """Whether any chosen strategy trains on a frozen backbone's exported features (``inputs="features"``)."""
        return any(get_strategy(s).inputs == "features" for s in self.strategies)

    def backbone_kinds(self) -> list[str]:
        """The pretrained backbones the chosen strategies load (registry ``backbone`` fields), in order."""
        return list(dict.fromkeys(k for s in self.strategies if (k := get_strategy(s).backbone)))

    @property
    def rgb_default_size(self) -> str:
        """RGB ViT size when neither --vit-size nor a weights file says: tiny on CPU presets."""
        return self.options.vit_size or ("tiny" if self.preset in ("smoke", "demo") else "small")

    @property
    def vit_label(self) -> str:
        return self.options.vit_size or f"size from the weights, else {self.rgb_default_size}"

    @property
    def model_width(self) -> str | int:
        """RU-Net width: as given, else full on real data and under ``--protocol paper`` (the recipe's), small
        on the synthetic default."""
        if self.options.width is not None:
            return self.options.width
        return "full" if self.data.data_root is not None or self.protocol == "paper" else "small"

    def settings(self) -> dict[str, Any]:
        """Every setting as one flat JSON-able dict (written to study.json, and hashed into the ids)."""
        d: dict[str, Any] = {"strategies": list(self.strategies), "preset": self.preset, "protocol": self.protocol}
        for name in SETTING_GROUPS:
            d.update(asdict(getattr(self, name)))
        for k in ("results", "data_root", "cache_dir", "backbone", "rgb_weights", "stage_data"):
            d[k] = str(d[k]) if d[k] else None
        d["fractions"] = list(self.data.fractions)
        # one dataset is written as a name, as it always was (so ids of one-dataset studies stay as they were)
        datasets = d.pop("datasets")
        d["dataset"] = datasets[0] if len(datasets) == 1 else list(datasets)
        d["model_width"] = self.model_width
        d["deviations"] = ";".join(self.deviations)  # keys the study: a modified paper study has a store of its own
        return d

    def _id_settings(self, dataset: str | None = None) -> dict[str, Any]:
        """Settings that identify results; ``dataset``: as a one-dataset study of that dataset would have them
        (a cell of a several-dataset study has the id of the same cell run alone)."""
        settings = self.settings()
        if dataset is not None:
            settings["dataset"] = dataset
        return {k: v for k, v in settings.items()
                if k not in _PLACEMENT and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}

    @property
    def datasets_label(self) -> str:
        return "+".join(self.data.datasets)

    @property
    def study_id(self) -> str:
        """Stable id of the protocol every strategy shares (data, fractions, budget, ...): not of the strategy
        list, the strategy-specific settings (registry ``settings``) or the runtime placement."""
        not_shared = strategy_settings() | {"strategies"}
        shared = {k: v for k, v in self._id_settings().items() if k not in not_shared}
        return f"{self.datasets_label}-{json_digest(shared, 10)}"

    def strategy_key(self, strategy: str, dataset: str | None = None) -> str:
        """10 hex digits over the shared protocol plus the settings ``strategy`` reads: the tail of its cell ids
        (on ``dataset``: the key a one-dataset study of it would give)."""
        mine, not_shared = set(get_strategy(strategy).settings), strategy_settings() | {"strategies"}
        settings = self._id_settings(dataset or self.data.datasets[0])
        return json_digest({k: v for k, v in settings.items() if k not in not_shared or k in mine}, 10)

    @property
    def legacy_study_id(self) -> str:
        """The study id of earlier versions (every setting, the strategy list included): only to recognise
        cells that stores written by them already finished."""
        return f"{self.datasets_label}-{json_digest(self._id_settings(), 10)}"
