"""STRATEGIES: the one registry of transfer strategies (name -> Strategy).

The name is spelt the same everywhere: CLI flag, module names, Parquet column.
Trainables and search spaces are referenced by import path and loaded lazily,
so the analysis/report side can list strategies without importing torch or Ray.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Strategy:
    """One arm of the study: how it trains, what it searches, what it needs per trial."""

    name: str
    description: str
    trainable: str  # "module:function"
    search_space: str  # "module:ATTRIBUTE" (a dict of Optuna distributions)
    model_name: str
    #: "raw": the cube's spectra; "features": per-pixel features of the frozen HyperSL backbone,
    #: computed once per study and split (study.features cache) and shared by every trial; the driver also
    #: attaches the raw spectra and the backbone's weights for trials with freeze depth k > 0
    inputs: str = "raw"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 1.0  # used only when the cluster has GPUs

    def load_trainable(self) -> Callable[..., Any]:
        return _load(self.trainable)

    def load_search_space(self) -> dict[str, Any]:
        return dict(_load(self.search_space))

    def resources(self, have_gpus: bool) -> dict[str, float]:
        """Per-trial resource request for Ray (GPU share only when the cluster has GPUs)."""
        res = {"cpu": self.cpus_per_trial}
        if have_gpus and self.gpus_per_trial > 0:
            res["gpu"] = self.gpus_per_trial
        return res


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


STRATEGIES: dict[str, Strategy] = {
    "indomain": Strategy(
        name="indomain",
        description="RU-Net trained from scratch on the raw cube (HS3-Bench baseline)",
        trainable="trainables.indomain:train_indomain",
        search_space="search_spaces.indomain:SPACE",
        model_name="runet",
    ),
    "crossdomain": Strategy(
        name="crossdomain",
        description="HyperSL-RU-Net: HyperSL per-pixel features (frozen, or last k layers tuned) replace the "
                    "spectrum as RU-Net input",
        trainable="trainables.crossdomain:train_crossdomain",  # k = 0: the indomain RU-Net on D feature channels
        search_space="search_spaces.crossdomain:SPACE",
        model_name="hypersl-runet",
        inputs="features",
    ),
    "crossdomain-fc": Strategy(
        name="crossdomain-fc",
        description="HyperSL-FC: BatchNorm1d + Linear on per-pixel HyperSL features (frozen, or last k layers tuned)",
        trainable="trainables.crossdomain_fc:train_crossdomain_fc",
        search_space="search_spaces.crossdomain_fc:SPACE",
        model_name="hypersl-fc",
        inputs="features",
        gpus_per_trial=0.25,  # a tiny head: four trials share a GPU
    ),
    "crossmodality": Strategy(
        name="crossmodality",
        description="DINOv2 RGB ViT on a pseudo-RGB / learned 1x1 bridge of the cube, light segmentation head",
        trainable="trainables.crossmodality:train_crossmodality",
        search_space="search_spaces.crossmodality:SPACE",
        model_name="dinov2-vit",
        # half a GPU: ViT-S/B with a frozen or shallowly unfrozen backbone needs a few GB and is bound by the
        # input pipeline at batch 4-16, so two trials share a device; use 1.0 for ViT-L with deep unfreezing
        gpus_per_trial=0.5,
    ),
    "indomain-fc": Strategy(
        name="indomain-fc",
        description="per-pixel BatchNorm1d + Linear on raw spectra (the fair baseline for HyperSL-FC)",
        trainable="trainables.indomain_fc:train_indomain_fc",
        search_space="search_spaces.indomain_fc:SPACE",
        model_name="fc",
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
