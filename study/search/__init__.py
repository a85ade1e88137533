"""The search: the effective search space of a cell, Ray Tune + Optuna + ASHA over it, the final seeds,
and the replay of finished trials on resume.

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.search.deterministic import OrderedASHA, WaveOptunaSearch, ordered_search, trial_seed
from study.search.ordering import OrderedRungs, Waves, milestones, percentile
from study.search.replay import replay_or_train
from study.search.space import changed_space, recipe_point, resolve_spaces, search_space, space_specs
from study.search.tuning import (
    METRIC,
    ASHAAwareOptunaSearch,
    final_runs,
    pick_best,
    run_config,
    serialized_start,
    tune_cell,
)

__all__ = [
    "ASHAAwareOptunaSearch",
    "METRIC",
    "OrderedASHA",
    "OrderedRungs",
    "WaveOptunaSearch",
    "Waves",
    "changed_space",
    "final_runs",
    "milestones",
    "ordered_search",
    "percentile",
    "pick_best",
    "recipe_point",
    "replay_or_train",
    "resolve_spaces",
    "run_config",
    "search_space",
    "serialized_start",
    "space_specs",
    "trial_seed",
    "tune_cell",
]
