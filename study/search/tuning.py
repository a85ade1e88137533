"""One cell of the study through Ray Tune: OptunaSearch + ASHA, then K final seeds.

Tuning selects on validation only (metric ``best_val_miou``: the mIoU of the
checkpoint a trial would hand on). The chosen configuration is re-trained with
K training seeds, each evaluated once on test with its best-validation
checkpoint. Rows reach the result store through a driver-side Tune callback,
which does not depend on Tune's on-disk file layout.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback, CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from study import progress
from study.config import Budget
from study.progress import echo
from study.store import REPORT_KEYS, Location, TrialLog, is_disk_full, resolve

METRIC = "best_val_miou"


class _StartQueue:
    """A lock handed out by priority, then arrival: Tuner starts are serialised, and which cell starts next
    matters (a cell's final seeds before any cell's tuning, longer cells before shorter ones)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: list[tuple[tuple[int, ...], int, int]] = []
        self._holder: int | None = None
        self._seq = itertools.count()

    def acquire(self, priority: tuple[int, ...]) -> None:
        entry = (priority, next(self._seq), threading.get_ident())
        with self._cond:
            heapq.heappush(self._waiting, entry)
            while self._holder is not None or self._waiting[0] is not entry:
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._holder = entry[2]

    def release(self) -> None:
        """Release if this thread holds it (the gate callback and the block's end may both try)."""
        with self._cond:
            if self._holder == threading.get_ident():
                self._holder = None
                self._cond.notify_all()


#: Ray Tune's trainable registry (``tune.registry._global_registry``) is not thread-safe, and every cell runs
#: its Tuner in its own driver thread: a Tuner holds this from before it registers anything until its
#: controller starts (:class:`_StartGate`), so cells start one at a time and then run at once.
_START = _StartQueue()
#: start priorities: a cell's final seeds before any tuning (they are on the cell's critical path)
FINAL_FIRST, TUNE_NEXT = 0, 1


@contextlib.contextmanager
def serialized_start(priority: tuple[int, ...] = (TUNE_NEXT, 0)) -> Iterator[None]:
    """Hold the start lock in this thread until the Tuner's controller is set up (or the block ends); lower
    ``priority`` tuples go first."""
    _START.acquire(priority)
    try:
        yield
    finally:
        _START.release()


class _StartGate(Callback):
    """Releases the start lock once Tune has registered the experiment and set up its callbacks."""

    def setup(self, **info: Any) -> None:
        _START.release()


class ASHAAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records trials ASHA stopped as PRUNED, not COMPLETE, and keeps a faithful journal.

    Ray's OptunaSearch tells Optuna a stopped trial's last low-rung value as if
    it were final (docs/reference.md §R31), which biases TPE towards configurations that
    look good early. A trial that did not reach its own last epoch is pruned.

    The journal is what optuna-dashboard shows: the objective is named ``val_miou``, every reported
    epoch's val mIoU is an intermediate value at step = epoch (pruned trials included: their curve is
    the evidence for the prune), and each trial carries ``user_attrs`` linking it to the result store
    (``cell_id``, ``phase``, ``trial_id`` as the store's column spells it, and Tune's ``tune_trial_id``).
    """

    def __init__(self, *args: Any, user_attrs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._user_attrs = dict(user_attrs or {})
        self._reported: dict[str, set[int]] = {}
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: str | list) -> None:
        super()._setup_study(mode)
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore")
            self._ot_study.set_metric_names(["val_miou"])

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            store_id = f"{self._user_attrs.get('cell_id')}-{self._user_attrs.get('phase')}-{trial_id}"
            for key, value in {**self._user_attrs, "trial_id": store_id, "tune_trial_id": trial_id}.items():
                ot_trial.set_user_attr(key, value)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """One intermediate value per epoch (a retried epoch is reported once, as Optuna allows)."""
        ot_trial = self._ot_trials.get(trial_id)
        value, step = result.get("val_miou"), result.get("epoch", result.get("training_iteration"))
        if ot_trial is None or trial_id in self._completed_trials or value is None or step is None:
            return
        seen = self._reported.setdefault(trial_id, set())
        if int(step) not in seen:
            seen.add(int(step))
            ot_trial.report(float(value), int(step))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error:  # Tune hands a trial's last result to on_trial_complete only
            self.on_trial_result(trial_id, result)
        if result and not error and not result.get("is_last", True) and trial_id not in self._completed_trials:
            import optuna

            self._ot_study.tell(self._ot_trials[trial_id], None, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


class RowCollector(Callback):
    """Driver-side callback: keeps every reported result per trial, plus errors; prints progress."""

    def __init__(
        self,
        label: str,
        total: int,
        echo: Callable[[str], None] = echo,
        on_finish: Callable[[TrialLog], None] | None = None,
        control_key: str | None = None,
    ) -> None:
        self.trials: dict[str, TrialLog] = {}
        self.label, self.total, self.echo, self.on_finish = label, total, echo, on_finish
        self.control_key = control_key  # the study's progress.StudyControl (a key: Tune pickles callbacks)
        self.finished = 0
        self.placement_said: str | None = None  # the data placement this phase's console line named last

    def _progress(self, **delta: int) -> None:
        if (c := progress.control(self.control_key)) is not None:
            c.update(**delta)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log = self._log(trial)
        if log.started_at is None:  # a retry keeps the first start
            log.started_at = datetime.now(UTC)
            self._progress(trials_running=+1)

    def _log(self, trial: Any) -> TrialLog:
        if trial.trial_id not in self.trials:
            self.trials[trial.trial_id] = TrialLog(trial.trial_id, dict(trial.config))
        return self.trials[trial.trial_id]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        log = self._log(trial)
        row = {k: result.get(k) for k in REPORT_KEYS}
        log.results = [r for r in log.results if r["epoch"] != row["epoch"]] + [row]  # a retried epoch replaces
        placement = row.get("data_placement")
        if row.get("data_placement_why") and placement != self.placement_said:  # one line per phase, or a change
            self.placement_said = placement
            self.echo(f"  [{self.label}] data placement {placement}: {row['data_placement_why']}")
        if (c := progress.control(self.control_key)) is not None and not row.get("replayed"):
            c.trial_result(self.label, trial.trial_id, row["epoch"], trial.config.get("max_epochs"),
                           row.get("val_miou"))

    def _done(self, trial: Any, how: str) -> None:
        self.finished += 1
        log = self._log(trial)
        log.ended_at = datetime.now(UTC)
        self._progress(trials_running=-1 if log.started_at else 0, trials_done=+1)
        if (c := progress.control(self.control_key)) is not None:
            c.trial_ended(self.label, trial.trial_id)
        best = log.best
        score = f"best val mIoU {progress.pct(best['val_miou'])} @ epoch {best['epoch']}" if best else "no result"
        ran = f" after {log.results[-1]['epoch']} epochs" if log.results else ""
        replayed = " (replayed from the store)" if log.results and log.results[-1].get("replayed") else ""
        self.echo(f"  [{self.label}] trial {self.finished}/{self.total} {how}{ran}: {score}{replayed}")
        if self.on_finish is not None:  # persist now: a later crash cannot lose this trial
            self.on_finish(log)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trial, self._log(trial).status.replace("_", " "))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial failed and will be retried. A full disk is not its fault and every retry would fail the same
        way (after minutes of restarting): the row writer hears of it now, and stops the study."""
        text = _error_text(trial)
        if self.on_finish is not None and text and is_disk_full(text):
            self.on_finish(TrialLog(trial.trial_id, dict(trial.config), error=text))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log(trial).error = _error_text(trial)
        self._done(trial, "FAILED")


def _error_text(trial: Any) -> str:
    """Last line of the trial's error trace (``ExcType: message``), read from the local error file.

    ``Trial.get_error`` reads the copy in storage, which may not be synced yet
    when the callback runs; the local file is written before callbacks fire.
    """
    text = None
    try:
        if trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file) as fh:
                text = fh.read()
        if not text:
            text = trial.get_error()
    except Exception:  # noqa: BLE001 - error text is best effort, the status is what matters
        text = None
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else "trial failed (no error text was recorded by Ray)"


def run_config(storage: Path | Location, name: str, budget: Budget, callbacks: list[Callback],
                control_key: str | None = None) -> RunConfig:
    """Tune's run settings; experiment state and trial checkpoints go to ``storage``, local or remote.

    For an object store Ray gets the resolved pyarrow filesystem and the bucket-relative path (its
    ``storage_filesystem`` contract), so every worker uploads its checkpoints there directly and
    ``tune.get_checkpoint`` downloads them on a retry, wherever the retry runs.
    """
    loc = resolve(storage)
    return RunConfig(
        storage_path=loc.path(),
        storage_filesystem=None if loc.is_local else loc.fs,
        name=name,
        verbose=0,
        callbacks=[*callbacks, JsonLoggerCallback(), CSVLoggerCallback()],
        failure_config=FailureConfig(max_failures=budget.max_failures),
        # resume needs only the newest checkpoint (the best weights travel inside it): one per trial, not two
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        stop=StopOnRequest(control_key) if control_key else None,
    )


def tune_cell(
    trainable: Any,
    space: dict[str, Any],
    constants: dict[str, Any],
    budget: Budget,
    storage: Path | Location,
    name: str,
    optuna_storage: Any | None,
    label: str,
    echo: Callable[[str], None] = echo,
    on_finish: Callable[[TrialLog], None] | None = None,
    control_key: str | None = None,
    first: dict[str, Any] | None = None,
    trackers: list[Callback] | None = None,
    rank: int = 0,
    search: tuple[Any, Any] | None = None,
) -> list[TrialLog]:
    """Search ``space`` with OptunaSearch + ASHA; returns the trial logs (errors included).

    ``search``: a (searcher, scheduler) pair instead, e.g. ``--deterministic``'s
    (:func:`study.search.deterministic.ordered_search`).

    ``rank``: the cell's place in the study's start order (0 = longest cell), for :func:`serialized_start`.

    ``first``: a point of ``space`` tried before anything is sampled (the published recipe), enqueued in
    Optuna so TPE and ASHA treat it like any other trial. ``trackers``: the ``--log-to`` callbacks
    (:func:`study.orchestration.trackers.tracker_callbacks`), fed every reported epoch by Tune.

    ``control_key`` names the study's :class:`study.progress.StudyControl`: its stop switch ends the
    search early (the caller then sees fewer logs than the budget) and its progress line counts trials.
    """
    if search is not None:
        searcher, scheduler = search
    else:
        searcher = ASHAAwareOptunaSearch(
            space=space, metric=METRIC, mode="max", seed=budget.tune_seed, storage=optuna_storage,
            study_name=name, points_to_evaluate=[dict(first)] if first else None,
            user_attrs={"cell_id": constants.get("cell_id"), "phase": constants.get("phase", "tune")},
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=budget.epochs,
            grace_period=budget.grace_period,
            reduction_factor=budget.reduction_factor,
        )
    collector = RowCollector(f"{label} tune", budget.trials, echo, on_finish, control_key)
    tuner = Tuner(
        trainable,
        param_space=constants,
        tune_config=TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=budget.trials,
            max_concurrent_trials=budget.max_concurrent,
            reuse_actors=True,
        ),
        run_config=run_config(storage, name, budget, [collector, *(trackers or []), _StartGate()], control_key),
    )
    with serialized_start((TUNE_NEXT, rank)):
        tuner.fit()  # does not raise on failed trials: their state is in the collector
    return list(collector.trials.values())


def final_runs(
    trainable: Any,
    config: dict[str, Any],
    budget: Budget,
    storage: Path | Location,
    name: str,
    label: str,
    echo: Callable[[str], None] = echo,
    on_finish: Callable[[TrialLog], None] | None = None,
    control_key: str | None = None,
    trackers: list[Callback] | None = None,
    rank: int = 0,
) -> list[TrialLog]:
    """Re-train ``config`` with seeds 0..K-1, each evaluated once on test (no early stopping by ASHA); they
    start before any waiting cell's tuning (``FINAL_FIRST``): they are on their cell's critical path."""
    param_space = {**config, "final": True, "phase": "final",
                   "seed": tune.grid_search(list(range(budget.seeds)))}
    collector = RowCollector(f"{label} final", budget.seeds, echo, on_finish, control_key)
    tuner = Tuner(
        trainable,
        param_space=param_space,
        tune_config=TuneConfig(num_samples=1, max_concurrent_trials=budget.max_concurrent, reuse_actors=True),
        run_config=run_config(storage, name, budget, [collector, *(trackers or []), _StartGate()], control_key),
    )
    with serialized_start((FINAL_FIRST, rank)):
        tuner.fit()
    return list(collector.trials.values())


def pick_best(logs: list[TrialLog]) -> TrialLog:
    """The trial whose best-validation checkpoint scored highest (ties: the earlier trial).

    Trials that errored are not eligible, even with good epochs before the error:
    their configuration is unstable and would fail again in the final runs.
    """
    scored = [(log.best["val_miou"], -i, log) for i, log in enumerate(logs)
              if log.best is not None and log.error is None]
    if not scored:
        errors = "; ".join(f"{log.trial_id}: {log.error}" for log in logs if log.error) or "no trial reported"
        raise RuntimeError(f"every tuning trial failed ({errors})")
    return max(scored, key=lambda t: (t[0], t[1]))[2]


class StopOnRequest(Stopper):
    """Tune stopper that ends every trial of a Tuner once the study is asked to stop (Ctrl+C, SIGTERM)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return progress.stopped(self.key)

    def stop_all(self) -> bool:
        return progress.stopped(self.key)
