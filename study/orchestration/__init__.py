"""Running a study: the study-input checks, the plan of cells, one driver thread per cell, Ray setup
and experiment trackers.

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.orchestration.cell import trial_constants
from study.orchestration.driver import (
    expected_cost,
    finished_cells,
    pending_cells,
    previous_study,
    run_study,
    strategy_settings,
)
from study.orchestration.inputs import check_inputs, split_variant
from study.orchestration.ray_setup import init_ray, quiet_ray_tune, trial_env
from study.orchestration.trackers import experiment_name, mlflow_uri, tracking_dir

__all__ = [
    "check_inputs",
    "expected_cost",
    "experiment_name",
    "finished_cells",
    "init_ray",
    "mlflow_uri",
    "pending_cells",
    "previous_study",
    "quiet_ray_tune",
    "run_study",
    "split_variant",
    "strategy_settings",
    "tracking_dir",
    "trial_constants",
    "trial_env",
]
