"""The contract every registered strategy keeps (design.md §5), run over ``study.strategies.STRATEGIES``.

Each strategy's trainable is called as a plain function (no Ray) with its constants plus one value per search
space key (the low end of a range, the first choice of a categorical; freeze depth 0) for two epochs, twice:

1. it reports every epoch, with a finite ``train_loss`` and ``val_miou`` in [0, 1];
2. it reads every search space key (exceptions are listed in :data:`IGNORED`, with their reason, and must be
   documented in the search space's docstring);
3. at freeze depth 0 only the head changes: no backbone parameter is checkpointed, the backbone stays as it was;
4. the same config and seed give identical metrics;
5. the optimizer follows the one weight-decay rule (``study.models.freezing.param_groups``): some groups decay
   by the config's ``weight_decay``, the norms and biases every model has do not.

A new strategy needs a :data:`RECIPES` entry (its bundle and constants); without one its tests fail.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from trainable_helpers import Recorder, backbone_config, feature_bundle, tiny_hyko2_bundle

from study.data.bundle import DataBundle
from study.models.checkpoints import load_hypersl
from study.strategies import STRATEGIES, Strategy

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bundles are built before any trainable sets it

EPOCHS = 2
COMMON = dict(max_epochs=EPOCHS, seed=0, final=False, patience=None, num_threads=1)


@dataclass(frozen=True)
class Recipe:
    """How the contract test runs one strategy: its bundle fixture, its constants, its frozen backbone."""

    data: str  # fixture name: "raw" (the cube) or "features" (the cached HyperSL export, what the driver builds)
    constants: dict[str, Any]
    #: None: no backbone. "cache": k = 0 trains on cached features; the config names the HyperSL checkpoint
    #: (``backbone_path``, as the driver's does) and the bundle carries the raw spectra (``DataBundle.raw``).
    #: "module:function": the function that returns the backbone (captured during the run).
    backbone: str | None = None
    prefix: str = ""  # state-dict prefix of backbone parameters in the trial's model


RECIPES: dict[str, Recipe] = {
    "indomain": Recipe("raw", {**COMMON, "batch_size": 2, "width": "tiny"}),
    "crossdomain": Recipe("features", {**COMMON, "batch_size": 2, "width": "tiny"}, backbone="cache",
                          prefix="backbone."),
    "crossdomain-fc": Recipe("features", {**COMMON, "batch_size": 2, "sub_batch": 512}, backbone="cache",
                             prefix="backbone."),
    "indomain-fc": Recipe("raw", {**COMMON, "batch_size": 2, "sub_batch": 512}),
    "crossmodality": Recipe("raw", {**COMMON, "batch_size": 3, "vit_size": "tiny", "backbone_path": None,
                                    "allow_random_init": True},
                            backbone="trainables.crossmodality:backbone_of", prefix="vit."),
}

#: (strategy, key) -> why the trainable does not read this search space key at freeze depth 0.
IGNORED: dict[tuple[str, str], str] = {
    ("crossdomain", "backbone_lr"): "k = 0 trains the RU-Net on cached features: no backbone parameter to step "
                                    "(k > 0 reads it: tests/test_freeze_depth.py)",
    ("crossdomain-fc", "backbone_lr"): "k = 0 trains the head on cached features: no backbone parameter to step "
                                       "(k > 0 reads it: tests/test_freeze_depth.py)",
}


class ReadRecordingConfig(dict):
    """A trial config that records the keys a trainable reads (``config[k]``, ``.get``, ``in``).

    Copying or iterating it is refused: a value read through a copy (``{**config}``, ``dict(config)``) cannot
    be told from one that is merely carried along, so trainables read keys one by one (``ChainMap`` for overrides).
    Overriding ``__iter__`` also turns off CPython's dict fast path, so ``{**config}`` goes through ``keys()``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the trainable copies or iterates its config, so the keys it uses cannot be recorded; "
                        "read keys one by one (collections.ChainMap(overrides, config) for overrides)")

    __iter__ = keys = items = values = copy = _refuse


def value_of(dist: BaseDistribution) -> Any:
    """One deterministic value of a search space distribution: a categorical's first choice, else the low end."""
    return dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low


@dataclass
class Trial:
    """Two identical runs of one strategy's trainable and what they left behind."""

    strategy: Strategy
    recipe: Recipe
    first: list[dict]
    second: list[dict]
    read: set[str]  # config keys the first run read
    keep: Path  # epoch<N>/state.pt of the first run
    backbone_before: dict[str, torch.Tensor] = field(default_factory=dict)
    backbone_after: dict[str, torch.Tensor] = field(default_factory=dict)


def _snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _run(strategy: Strategy, recipe: Recipe, data: DataBundle, keep: Path | None) -> tuple[list[dict], set[str]]:
    """One call of the trainable as Tune would make it: (reported metrics, config keys read)."""
    space = strategy.load_search_space()
    config = ReadRecordingConfig({**recipe.constants, **{k: value_of(d) for k, d in space.items()}})
    rec = Recorder(keep)
    strategy.load_trainable()(config, data, report=rec, get_checkpoint=lambda: None)
    return rec.metrics, set(config.read)


def _run_capturing_backbone(strategy: Strategy, recipe: Recipe, data: DataBundle, keep: Path,
                            ) -> tuple[list[dict], set[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:func:`_run`, plus the state of the backbone the trial built, as built and after training."""
    if recipe.backbone == "cache":  # k = 0: the checkpoint file is named in the config, the trial must not touch it
        path = recipe.constants["backbone_path"]
        before = _snapshot(load_hypersl(path).state_dict())
        metrics, read = _run(strategy, recipe, data, keep)
        return metrics, read, before, _snapshot(load_hypersl(path).state_dict())
    module, _, name = recipe.backbone.partition(":")
    real, built = getattr(importlib.import_module(module), name), []

    def capture(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        backbone = out[0] if isinstance(out, tuple) else out
        built.append((backbone, _snapshot(backbone.state_dict())))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(f"{module}.{name}", capture)
        metrics, read = _run(strategy, recipe, data, keep)
    assert len(built) == 1, f"{recipe.backbone} was called {len(built)} times"
    backbone, before = built[0]
    return metrics, read, before, _snapshot(backbone.state_dict())


@pytest.fixture(scope="module")
def bundles(tiny_root: Path, tiny_backbone: Path) -> dict[str, DataBundle]:
    raw = tiny_hyko2_bundle(tiny_root)
    return {"raw": raw, "features": feature_bundle(raw, tiny_backbone)}


@pytest.fixture(scope="module")
def trials(bundles: dict[str, DataBundle], tiny_backbone: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trial]:
    """strategy name -> its :class:`Trial`, run once per module (the four checks share the two runs)."""
    cache: dict[str, Trial] = {}

    def get(name: str) -> Trial:
        if name not in RECIPES:
            pytest.fail(f"strategy {name!r} has no recipe in tests/test_strategy_contract.py: add its bundle and "
                        f"constants to RECIPES")
        if name not in cache:
            strategy, recipe = STRATEGIES[name], RECIPES[name]
            if recipe.backbone == "cache":  # the constants the driver adds: checkpoint path, hash, BN mode, chunk
                recipe = replace(recipe, constants={**recipe.constants, **backbone_config(tiny_backbone)})
            data, keep = bundles[recipe.data], tmp_path_factory.mktemp(f"contract-{name}")
            if recipe.backbone is None:
                (first, read), before, after = _run(strategy, recipe, data, keep), {}, {}
            else:
                first, read, before, after = _run_capturing_backbone(strategy, recipe, data, keep)
            second, _ = _run(strategy, recipe, data, None)
            cache[name] = Trial(strategy, recipe, first, second, read, keep, before, after)
        return cache[name]

    return get


NAMES = list(STRATEGIES)


@pytest.mark.parametrize("name", NAMES)
def test_reports_every_epoch_with_finite_metrics(name: str, trials) -> None:
    metrics = trials(name).first
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1)), name
    for m in metrics:
        assert math.isfinite(m["train_loss"]), (name, m["epoch"], m["train_loss"])
        assert math.isfinite(m["val_miou"]) and 0.0 <= m["val_miou"] <= 1.0, (name, m["epoch"], m["val_miou"])
    assert [m["is_last"] for m in metrics] == [False] * (EPOCHS - 1) + [True], name


@pytest.mark.parametrize("name", NAMES)
def test_reads_every_search_space_key(name: str, trials) -> None:
    trial = trials(name)
    space = trial.strategy.load_search_space()
    ignored = {key for (strategy, key) in IGNORED if strategy == name}
    assert ignored <= set(space), f"IGNORED lists keys {sorted(ignored - set(space))} that {name}'s space lacks"
    unread = set(space) - trial.read
    assert unread == ignored, (f"{name} never reads {sorted(unread - ignored)} (document and list it in IGNORED "
                               f"if that is right) / now reads {sorted(ignored - unread)} (drop it from IGNORED)")
    module, _, _ = trial.strategy.search_space.partition(":")
    doc = " ".join((importlib.import_module(module).__doc__ or "").split())
    for key in ignored:  # an ignored key must say so where the space is defined
        assert f"``{key}`` is sampled but ignored" in doc, f"{module}'s docstring must say why {key} is ignored"


def _checkpoint(trial: Trial, epoch: int) -> dict[str, torch.Tensor]:
    state = torch.load(trial.keep / f"epoch{epoch}" / "state.pt", map_location="cpu", weights_only=True)
    return state["model"]


@pytest.mark.parametrize("name", NAMES)
def test_freeze_depth_0_changes_only_head_parameters(name: str, trials) -> None:
    trial = trials(name)
    space, recipe = trial.strategy.load_search_space(), trial.recipe
    if recipe.backbone is None:
        assert "freeze_depth" not in space, f"{name} searches freeze_depth: give its recipe a backbone"
        return
    assert value_of(space["freeze_depth"]) == 0
    first, last = _checkpoint(trial, 1), _checkpoint(trial, EPOCHS)
    # the checkpoint carries trainable parameters and buffers only: no backbone parameter is trainable at k = 0
    assert not [k for k in last if k.startswith(recipe.prefix)], f"{name} checkpoints backbone parameters at k = 0"
    assert any(not torch.equal(first[k], last[k]) for k in last), f"{name}: the head did not train"
    # and the backbone itself is untouched: the cached weights, or the module the trial built (vs. a rebuild)
    assert trial.backbone_before and trial.backbone_before.keys() == trial.backbone_after.keys()
    changed = [k for k, v in trial.backbone_before.items() if not torch.equal(v, trial.backbone_after[k])]
    assert changed == [], f"{name} changed backbone tensors at k = 0: {changed[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(name: str, trials) -> None:
    trial = trials(name)
    for key in ("train_loss", "val_miou"):
        assert [m[key] for m in trial.second] == [m[key] for m in trial.first], (name, key)


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_follows_the_one_weight_decay_rule(name: str, trials) -> None:
    trial = trials(name)
    state = torch.load(trial.keep / f"epoch{EPOCHS}" / "state.pt", map_location="cpu", weights_only=True)
    decays = [g["weight_decay"] for g in state["optimizer"]["param_groups"]]
    weight_decay = value_of(trial.strategy.load_search_space()["weight_decay"])
    assert 0.0 in decays and weight_decay in decays and set(decays) == {0.0, weight_decay}, (name, decays)


def test_every_registered_strategy_has_a_recipe() -> None:
    missing = sorted(set(STRATEGIES) - set(RECIPES))
    assert not missing, f"add {missing} to RECIPES in tests/test_strategy_contract.py"
