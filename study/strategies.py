"""STRATEGIES: the one registry of transfer strategies (name -> Strategy).

The name is spelt the same everywhere: CLI flag, module names, Parquet column.
Trainables, search spaces and a backbone kind's provider and feature exporter
(BACKBONES) are referenced by import path and loaded lazily, so the
analysis/report side can list strategies without importing torch or Ray.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BackboneKind:
    """A kind of pretrained backbone the driver resolves once per study for every strategy that uses it.

    A new kind is this entry alone: its provider (and, for a kind whose strategies read ``inputs="features"``,
    its exporter) are referenced by import path and loaded lazily, like a strategy's trainable.
    """

    name: str
    #: the StudyConfig setting naming its weights file (None there = the kind's default weights)
    weights_setting: str
    #: "module:function" ``(cfg, echo) -> ResolvedBackbone`` (study.orchestration.inputs): finds, checks and
    #: hashes the weights once per study, before Ray starts, and names the constants its trials get
    provider: str
    #: "module:function" ``(cfg, spec, data_root, backbone, echo) -> Path``: the folder of per-pixel feature
    #: files of one dataset (HS3-Bench layout, ``<dataset>_<split>.h5`` per split), made at most once and
    #: cached, which the kind's ``inputs="features"`` strategies train on. None: no strategy reads its features
    exporter: str | None = None
    #: the report's banner when strategies ran on the default weights; ``{strategies}`` and ``{hashes}`` are
    #: filled in. None: the default needs no warning (e.g. released weights found in a hub cache).
    default_note: str | None = None
    #: where the weights the published recipes used are released, when the kind's default weights are not them:
    #: ``--protocol paper`` then refuses the default, naming the flag and this place (a deviation
    #: ``<weights_setting>=<default_name>`` under ``--allow-deviations``). None: the default is no deviation
    paper_weights: str | None = None
    default_name: str = "default"  # what the default weights are called in that refusal and the deviation
    #: "module:function" ``(cfg, spec, data_root, backbone) -> InTrialFeatures`` (study.orchestration.features_mode)
    #: for a feature kind whose trials can also compute their k = 0 features themselves, from the raw spectra
    #: (``--features compute``, or ``auto`` when the cost model says so): the features' width, the forward's
    #: FLOPs per pixel and the constants such trials get. None: its strategies always read the export
    in_trial: str | None = None

    def load_provider(self) -> Callable[..., Any]:
        return load_object(self.provider)

    def load_exporter(self) -> Callable[..., Any]:
        """The kind's feature exporter (a ValueError where the kind has none)."""
        if self.exporter is None:
            raise ValueError(f"backbone kind {self.name!r} exports no features (BACKBONES entry without exporter)")
        return load_object(self.exporter)

    def load_in_trial(self) -> Callable[..., Any]:
        """The kind's ``in_trial`` function (a ValueError where its trials cannot compute their features)."""
        if self.in_trial is None:
            raise ValueError(f"backbone kind {self.name!r} computes no features in the trial (no in_trial entry)")
        return load_object(self.in_trial)


#: backbone kind (``Strategy.backbone``) -> its entry, cheapest first: providers run in this order, so a
#: missing weights file of a cheap kind stops the study before an expensive kind's default pretraining
BACKBONES: dict[str, BackboneKind] = {
    "rgb-vit": BackboneKind("rgb-vit", "rgb_weights", provider="study.orchestration.inputs:resolve_rgb_vit"),
    "hypersl": BackboneKind(
        "hypersl", "backbone",
        provider="study.orchestration.inputs:resolve_hypersl",
        exporter="study.orchestration.inputs:export_hypersl_features",
        in_trial="study.orchestration.inputs:hypersl_in_trial",
        default_note="<b>Locally pretrained HyperSL.</b> {strategies} used the small sanity backbone pretrained "
                     "on this machine (hash {hashes}; <code>python -m study.pretrain</code>), not the released "
                     "HyperSL weights. On Indian Pines it does not beat a random initialisation "
                     "(<code>python -m benchmarks.indian_pines_fc</code>), so these curves are no evidence of "
                     "transfer: pass <code>--backbone PATH</code> for results that speak for HyperSL itself.",
        paper_weights="the released HyperSL checkpoint 5_base_mask95_checkpoint.pt, from HyperSL's Hugging Face "
                      "repository WeilKon/HyperSL (--backbone hf://WeilKon/HyperSL/5_base_mask95_checkpoint.pt) or "
                      "the cross-domain-hsi repository's model-weights download (README, Reproduction)",
        default_name="sanity",
    ),
}


@dataclass(frozen=True)
class Strategy:
    """One arm of the study: everything any other module needs to know about it, in one place.

    The driver, CLI, config, report and plots read these fields and never a
    strategy's name, so a new strategy is this entry + its trainable + its
    search space (``tests/test_new_strategy.py`` proves it).
    """

    name: str
    description: str
    trainable: str  # "module:function"
    search_space: str  # "module:ATTRIBUTE" (a dict of Optuna distributions)
    model_name: str
    #: "module:ATTRIBUTE": the published recipe (a dict; ``{dataset: value}`` entries depend on the dataset).
    #: ``--protocol paper`` trains it verbatim; tuned cells try it first. None: no published recipe.
    recipe: str | None = None
    #: what its trials read: "raw" cubes, or "features" of its frozen ``backbone``, exported once per study and
    #: split by that kind's ``BackboneKind.exporter`` (HyperSL: study.features) and shared by every trial
    inputs: str = "raw"
    #: pretrained weights its trials load (a :data:`BACKBONES` key), resolved and hashed once per study
    backbone: str | None = None
    #: StudyConfig settings only this strategy reads: they key its cells, not the study (so strategies run
    #: one at a time share a study and its finished cells)
    settings: tuple[str, ...] = ()
    #: the model as the run header names it: a format string over StudyConfig attributes
    header: str = ""
    color: str = "#7f7f7f"  # its line colour in every report figure
    baseline: bool = False  # the arm the report compares the others with (exactly one strategy)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 1.0  # used only when the cluster has GPUs
    #: how many times its network downsamples an image (RU-Net: 16, four 2x poolings; a ViT: its patch size);
    #: an image smaller than that in H or W trains mostly on zero padding (a warning before training)
    downsampling: int = 1
    #: training time per pixel relative to other strategies, used only to start the longest cells first
    #: (study.orchestration.driver); None: its GPU share stands in for how heavy its model is
    relative_cost: float | None = None

    def load_trainable(self) -> Callable[..., Any]:
        """The trainable function this strategy's trials run (imported here, not when the registry is)."""
        return load_object(self.trainable)

    def load_search_space(self) -> dict[str, Any]:
        return dict(load_object(self.search_space))

    def load_recipe(self, dataset: str) -> dict[str, Any] | None:
        """The published recipe for ``dataset`` (per-dataset entries resolved), or None."""
        if self.recipe is None:
            return None
        return {k: (v[dataset] if isinstance(v, dict) else v) for k, v in load_object(self.recipe).items()}

    def resources(self, have_gpus: bool, cpus_per_gpu: float | None = None) -> dict[str, float]:
        """Per-trial resource request for Ray (GPU share only when the cluster has GPUs).

        The per-resource rule: a GPU trial also gets its share of the GPU node's CPUs, ``cpus_per_gpu`` (node
        CPUs / GPUs) x its GPU share, rounded down, never fewer than ``cpus_per_trial``: its loader workers
        read, collate and pin while it trains (a g5.12xlarge: 12 CPUs per 1-GPU trial, 3 per 0.25 share,
        where 1 CPU left 44 of 48 idle). A CPU trial gets ``cpus_per_trial``."""
        res = {"cpu": self.cpus_per_trial}
        if have_gpus and self.gpus_per_trial > 0:
            res["gpu"] = self.gpus_per_trial
            if cpus_per_gpu:
                res["cpu"] = max(self.cpus_per_trial, float(int(cpus_per_gpu * self.gpus_per_trial)))
        return res

    def describe_model(self, cfg: Any) -> str:
        """The header's note on the model this strategy trains under ``cfg`` (a StudyConfig)."""
        return self.header.format(cfg=cfg) if self.header else ""


def load_object(path: str) -> Any:
    """What a ``"module:attr"`` import path names, imported on first use: how the registry (and a trial
    replaying or running ``Strategy.trainable``) loads trainables, search spaces and recipes."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


_HYPERSL_SETTINGS = ("backbone", "bn_mode", "feature_dtype", "max_freeze_depth")

STRATEGIES: dict[str, Strategy] = {
    "indomain": Strategy(
        name="indomain",
        description="RU-Net trained from scratch on the raw cube (HS3-Bench baseline)",
        trainable="trainables.indomain:train_indomain",
        search_space="search_spaces.indomain:SPACE",
        recipe="search_spaces.indomain:PAPER",
        model_name="runet",
        header="RU-Net width {cfg.model_width}",
        color="#1f77b4",
        baseline=True,
        downsampling=16,
    ),
    "crossdomain": Strategy(
        name="crossdomain",
        description="HyperSL-RU-Net: HyperSL per-pixel features (frozen, or last k layers tuned) replace the "
                    "spectrum as RU-Net input",
        trainable="trainables.crossdomain:train_crossdomain",
        search_space="search_spaces.crossdomain:SPACE",
        recipe="search_spaces.crossdomain:PAPER",
        model_name="hypersl-runet",
        inputs="features",
        backbone="hypersl",
        settings=_HYPERSL_SETTINGS,
        header="RU-Net width {cfg.model_width} on HyperSL features",
        color="#d62728",
        downsampling=16,
    ),
    "crossdomain-fc": Strategy(
        name="crossdomain-fc",
        description="HyperSL-FC: BatchNorm1d + Linear on per-pixel HyperSL features (frozen, or last k layers tuned)",
        trainable="trainables.crossdomain_fc:train_crossdomain_fc",
        search_space="search_spaces.crossdomain_fc:SPACE",
        recipe="search_spaces.crossdomain_fc:PAPER",
        model_name="hypersl-fc",
        inputs="features",
        backbone="hypersl",
        settings=_HYPERSL_SETTINGS,
        header="HyperSL-FC head",
        color="#ff7f0e",
        gpus_per_trial=0.25,  # a tiny head: four trials share a GPU
    ),
    "crossmodality": Strategy(
        name="crossmodality",
        description="DINOv2 RGB ViT on a pseudo-RGB / learned 1x1 bridge of the cube, light segmentation head",
        trainable="trainables.crossmodality:train_crossmodality",
        search_space="search_spaces.crossmodality:SPACE",
        model_name="dinov2-vit",
        backbone="rgb-vit",
        settings=("rgb_weights", "allow_random_init", "vit_size", "max_freeze_depth"),
        header="ViT {cfg.vit_label}",
        color="#2ca02c",
        downsampling=14,  # DINOv2's patch
        # half a GPU: ViT-S/B with a frozen or shallowly unfrozen backbone needs a few GB and is bound by the
        # input pipeline at batch 4-16, so two trials share a device; use 1.0 for ViT-L with deep unfreezing
        gpus_per_trial=0.5,
    ),
    "indomain-fc": Strategy(
        name="indomain-fc",
        description="per-pixel BatchNorm1d + Linear on raw spectra (the fair baseline for HyperSL-FC)",
        trainable="trainables.indomain_fc:train_indomain_fc",
        search_space="search_spaces.indomain_fc:SPACE",
        recipe="search_spaces.indomain_fc:PAPER",
        model_name="fc",
        header="per-pixel FC head",
        color="#9467bd",
        gpus_per_trial=0.25,
    ),
}


def get_strategy(name: str) -> Strategy:
    """Look a strategy up; unknown names raise a ValueError listing the valid ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}") from None


def parse_strategies(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list -> validated strategy names (order kept, duplicates dropped)."""
    if text.strip() == "all":
        return tuple(STRATEGIES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--strategy is empty; valid strategies: all, {', '.join(sorted(STRATEGIES))}")
    for n in names:
        get_strategy(n)
    return tuple(dict.fromkeys(names))


def baseline_strategy() -> str:
    """The strategy the report compares the others with (the registry entry marked ``baseline``)."""
    return next((s.name for s in STRATEGIES.values() if s.baseline), next(iter(STRATEGIES)))


def strategy_settings() -> frozenset[str]:
    """Every setting some strategy reads on its own (none of them is part of the study id)."""
    return frozenset(k for s in STRATEGIES.values() for k in s.settings)
