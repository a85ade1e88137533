"""Running a study: the study-input checks, the plan of cells, one driver thread per cell, Ray setup
and experiment trackers.

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.orchestration.cell import trial_constants
from study.orchestration.driver import run_pending_cells
from study.orchestration.inputs import check_inputs, split_variant
from study.orchestration.plan import cell_id, expected_cost, finished_cells, merged_strategy_settings, pending_cells
from study.orchestration.ray_setup import init_ray, quiet_ray_tune, trial_env
from study.orchestration.trackers import experiment_name, mlflow_uri, tracking_dir

__all__ = [
    "cell_id",
    "check_inputs",
    "expected_cost",
    "experiment_name",
    "finished_cells",
    "init_ray",
    "merged_strategy_settings",
    "mlflow_uri",
    "pending_cells",
    "quiet_ray_tune",
    "run_pending_cells",
    "split_variant",
    "tracking_dir",
    "trial_constants",
    "trial_env",
]
