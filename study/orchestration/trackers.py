"""``--log-to mlflow,tensorboard,wandb``: experiment trackers through Ray Tune's own logger callbacks.

Why Tune's callbacks rather than logging from the trainables: they run on the
driver from the results Tune already receives, so every reported epoch reaches
the tracker (retries and replayed trials included) without touching a trainable,
and a tracker's package is needed on the driver only.

Nothing needs a network by default: MLflow writes a SQLite store under the
results folder (``sqlite:///<results>/mlflow.db``; MLflow 3 no longer accepts
its old ``file:`` store without an opt-out), W&B runs offline
(``<results>/wandb``; ``wandb sync`` uploads later), and TensorBoard's event
files sit in each trial's folder under ``<results>/tune``. An object-store
``--results`` keeps the MLflow and W&B files in a local folder instead
(:func:`tracking_dir`), as neither writes to a bucket. ``MLFLOW_TRACKING_URI``,
``WANDB_MODE`` and ``WANDB_PROJECT`` point them elsewhere.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL

from study.config import StudyConfig
from study.store import resolve


def tracking_dir(cfg: StudyConfig) -> tuple[Path, str | None]:
    """Where MLflow's and W&B's local files go, and a note to print when that is not the results folder."""
    loc = resolve(cfg.runtime.results)
    if loc.is_local:
        return loc.local(), None
    from study.data.synthetic.generator import default_cache_dir

    folder = (cfg.runtime.cache_dir or default_cache_dir()) / "tracking" / cfg.study_id
    return folder, (f"note: --log-to keeps MLflow/W&B files in the local folder {folder} (results are in an "
                    "object store, which they cannot write to)")


def mlflow_uri(folder: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def experiment_name(cfg: StudyConfig) -> str:
    return f"hsistudy-{cfg.study_id}"


class _EpochSteps:
    """Log each result at step = its epoch (Tune's callbacks step by ``training_iteration``, which runs on past
    the epochs when a trainable's return value arrives as one more result, or a retry repeats an epoch)."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        epoch = result.get("epoch")
        super().log_trial_result(iteration, trial, {**result, TIMESTEPS_TOTAL: epoch} if epoch else result)


class EpochTBXLoggerCallback(_EpochSteps, TBXLoggerCallback):
    """Ray's TensorBoard callback (tensorboardX event files in each trial's folder), stepped by epoch."""


class TaggedMLflowLoggerCallback(_EpochSteps, MLflowLoggerCallback):
    """Ray's MLflow callback, plus a ``trial_id`` tag per run and an experiment whose artifacts stay beside
    its store (MLflow's default artifact root is ``./mlruns`` of whatever folder the driver runs in)."""

    def __init__(self, artifact_location: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact_location = artifact_location

    def setup(self, *args: Any, **kwargs: Any) -> None:
        import mlflow

        client = mlflow.MlflowClient(self.tracking_uri)
        if self.artifact_location and client.get_experiment_by_name(self.experiment_name) is None:
            with contextlib.suppress(mlflow.exceptions.MlflowException):  # created meanwhile by another run
                client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial: Any) -> None:
        base = self.tags
        tags = base or {}  # trial_id as the result store spells it (<cell>-<phase>-<Tune's id>): rows join runs
        self.tags = {**tags, "trial_id": f"{tags.get('cell_id')}-{tags.get('phase')}-{trial.trial_id}",
                     "tune_trial_id": trial.trial_id}
        try:
            super().log_trial_start(trial)
        finally:
            self.tags = base


def tracker_callbacks(cfg: StudyConfig, tags: dict[str, Any], phase: str) -> list[Callback]:
    """The Tune callbacks of ``--log-to`` for one Tuner (a cell's tuning or its final runs); ``tags``: the
    cell's study id, cell id, dataset, strategy and fraction (``phase`` and each trial's id are added)."""
    log_to = cfg.runtime.log_to
    if not log_to:
        return []
    folder, _ = tracking_dir(cfg)
    tags = {k: str(v) for k, v in {**tags, "phase": phase}.items()}
    out: list[Callback] = []
    if "mlflow" in log_to:
        folder.mkdir(parents=True, exist_ok=True)
        out.append(TaggedMLflowLoggerCallback(
            tracking_uri=mlflow_uri(folder), experiment_name=experiment_name(cfg), tags=tags,
            artifact_location=(folder / "mlartifacts").resolve().as_uri()))
    if "tensorboard" in log_to:
        out.append(EpochTBXLoggerCallback())
    if "wandb" in log_to:
        from ray.air.integrations.wandb import WandbLoggerCallback

        folder.mkdir(parents=True, exist_ok=True)  # wandb.init(dir=...) writes <dir>/wandb/offline-run-*
        os.environ.setdefault("WANDB_MODE", "offline")  # Ray's callback then asks for no API key
        out.append(WandbLoggerCallback(
            project=os.environ.get("WANDB_PROJECT", "hsistudy"), group=f"{tags['cell_id']}-{phase}",
            mode=os.environ["WANDB_MODE"], dir=str(folder),
            tags=[f"{k}:{v}"[:64] for k, v in tags.items()]))
    return out
