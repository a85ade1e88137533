"""Running a study: the study-input checks, the plan of cells, one driver thread per cell, Ray setup
and experiment trackers.

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.orchestration.cell import (
    CellInterrupted,
    RowWriter,
    cell_constants,
    drop_torn_lines,
    row_identity,
    trial_constants,
)
from study.orchestration.driver import run_pending_cells
from study.orchestration.inputs import (
    ResolvedBackbone,
    check_inputs,
    feature_kinds,
    resolve_hypersl,
    resolve_rgb_vit,
    split_variant,
)
from study.orchestration.plan import cell_id, expected_cost, finished_cells, merged_strategy_settings, pending_cells
from study.orchestration.ray_setup import cpus_per_gpu, init_ray, quiet_ray_tune, sweep_node_copies, trial_env
from study.orchestration.trackers import experiment_name, mlflow_uri, tracking_dir

__all__ = [
    "CellInterrupted",
    "ResolvedBackbone",
    "RowWriter",
    "cell_constants",
    "cell_id",
    "check_inputs",
    "cpus_per_gpu",
    "drop_torn_lines",
    "expected_cost",
    "experiment_name",
    "feature_kinds",
    "finished_cells",
    "init_ray",
    "merged_strategy_settings",
    "mlflow_uri",
    "pending_cells",
    "quiet_ray_tune",
    "resolve_hypersl",
    "resolve_rgb_vit",
    "row_identity",
    "run_pending_cells",
    "sweep_node_copies",
    "split_variant",
    "tracking_dir",
    "trial_constants",
    "trial_env",
]
