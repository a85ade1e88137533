"""``--deterministic``: a tuned cell whose trials depend on their order and results only, never on timing.

Ray Tune stays the executor; two plug-ins replace OptunaSearch's and ASHA's timing-dependent parts:

- :class:`WaveOptunaSearch` (a Tune ``Searcher``, the journal-keeping :class:`ASHAAwareOptunaSearch` underneath):
  configurations are proposed in waves of ``search_batch`` trials. A wave opens once every trial of the
  earlier waves has ended, and then all its configurations are asked of Optuna at once, trial ``i`` with a
  ``TPESampler`` seeded by (``tune_seed``, the cell, ``i``); the Optuna study then holds exactly the earlier waves'
  trials, numbered in trial-index order (the enqueued recipe is trial 0).
- :class:`OrderedASHA` (a Tune ``TrialScheduler``): ASHA's rule decided in trial order
  (:class:`study.search.ordering.OrderedRungs`); a trial that reaches a rung before a lower-index trial has settled
  there is PAUSEd (its per-epoch checkpoint keeps its state) and resumed or stopped once that trial has.

Both see a replayed trial (resume after an interruption) exactly like a trained one, so a resumed cell gives
the same rows. docs/design.md §6 says why ordered ASHA and not synchronous halving per wave.
"""

from __future__ import annotations

import warnings
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.searcher import Searcher
from ray.tune.utils.util import unflatten_dict

from study.config import Budget
from study.hashing import json_digest
from study.search.ordering import STOP, WAIT, OrderedRungs, Waves
from study.search.tuning import METRIC, ASHAAwareOptunaSearch


def trial_seed(tune_seed: int, cell: str, index: int) -> int:
    """The sampler seed of trial ``index`` of ``cell`` (31 bits, as numpy's legacy seeding wants)."""
    return int(json_digest([tune_seed, cell, index], 8), 16) & 0x7FFFFFFF


def ordered_search(space: dict[str, Any], budget: Budget, name: str, storage: Any, first: dict[str, Any] | None,
                   user_attrs: dict[str, Any]) -> tuple[WaveOptunaSearch, OrderedASHA]:
    """The searcher and scheduler of a ``--deterministic`` cell (for :func:`study.search.tuning.tune_cell`)."""
    searcher = WaveOptunaSearch(space=space, metric=METRIC, mode="max", storage=storage, study_name=name,
                                user_attrs=user_attrs, batch=budget.proposal_batch, total=budget.trials, first=first,
                                tune_seed=budget.tune_seed)
    scheduler = OrderedASHA(budget.epochs, budget.grace_period, budget.reduction_factor, searcher.order,
                            metric=METRIC, mode="max")
    return searcher, scheduler


class WaveOptunaSearch(ASHAAwareOptunaSearch):
    """Optuna TPE proposals in waves, each trial's seeded by the cell and its index (module docstring).

    ``order`` (trial id -> index) is shared with :class:`OrderedASHA`, so both count trials the same way.
    """

    def __init__(self, *args: Any, batch: int, total: int, first: dict[str, Any] | None = None,
                 tune_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, seed=tune_seed, **kwargs)
        self.waves = Waves(batch=batch, total=total)
        self.order: dict[str, int] = {}
        self._first = dict(first) if first else None
        self._tune_seed = tune_seed
        self._asked: dict[int, Any] = {}  # index -> Optuna trial, asked when its wave opened

    def _ask_wave(self, wave: range) -> None:
        import optuna

        for index in wave:
            if index == 0 and self._first is not None:
                self._ot_study.enqueue_trial(self._first)
            self._ot_study.sampler = optuna.samplers.TPESampler(
                seed=trial_seed(self._tune_seed, self._study_name, index))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for fixed_distributions
                self._asked[index] = self._ot_study.ask(fixed_distributions=self._space)

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self.order:
            index = len(self.order)
            if index >= self.waves.opened:
                wave = self.waves.next_wave()
                if wave is None:
                    return None if self.waves.opened < self.waves.total else Searcher.FINISHED
                self._ask_wave(wave)
            self.order[trial_id] = index
            ot_trial = self._ot_trials[trial_id] = self._asked.pop(index)
            store_id = f"{self._user_attrs.get('cell_id')}-{self._user_attrs.get('phase')}-{trial_id}"
            for key, value in {**self._user_attrs, "trial_id": store_id, "tune_trial_id": trial_id,
                               "trial_index": index}.items():
                ot_trial.set_user_attr(key, value)
        return unflatten_dict(self._ot_trials[trial_id].params)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result=result, error=error)
        if trial_id in self.order:
            self.waves.ended.add(self.order[trial_id])


class OrderedASHA(TrialScheduler):
    """ASHA decided in trial order (:class:`study.search.ordering.OrderedRungs`): WAIT becomes PAUSE.

    ``time_attr`` is the reported ``epoch`` (it survives a pause, a restore and a replay restarted from its
    first epoch, unlike Tune's iteration count). ``order``: the searcher's trial id -> index.
    """

    _supports_buffered_results = False  # one decision per reported epoch

    def __init__(self, max_t: int, grace_period: int, reduction_factor: int, order: dict[str, int],
                 metric: str | None = None, mode: str = "max") -> None:
        super().__init__()
        self.rungs = OrderedRungs(max_t, grace_period, reduction_factor)
        self.order = order
        self._metric, self._sign = metric, 1.0 if mode == "max" else -1.0
        self._trials: dict[int, Trial] = {}
        self._resume: set[int] = set()  # PAUSEd trials whose rung decision is CONTINUE
        self._stop: set[int] = set()  # PAUSEd trials whose rung decision is STOP, not yet stopped
        self._last_t: dict[int, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if metric and self._metric is None:
            self._metric = metric
        if mode:
            self._sign = 1.0 if mode == "max" else -1.0
        return True

    def _index(self, trial: Trial) -> int:
        index = self.order.get(trial.trial_id)
        if index is None:  # not proposed by the wave searcher (a test's own): the order Tune added them in
            index = self.order.setdefault(trial.trial_id, len(self.order))
        self._trials[index] = trial
        return index

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._index(trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        index = self._index(trial)
        self._resume.discard(index)
        t = int(result.get("epoch", result.get("training_iteration", 0)))
        self._last_t[index] = t
        value = result.get(self._metric)
        decision = self.rungs.report(index, t, None if value is None else self._sign * float(value))
        if decision == WAIT and (result.get("is_last") or result.get("done")):
            decision = TrialScheduler.CONTINUE  # it ends now anyway; its value is recorded in order on resolve
        elif decision == WAIT:
            decision = TrialScheduler.PAUSE
        self._apply(tune_controller, skip=index)
        return decision

    def _ended(self, tune_controller: Any, trial: Trial) -> None:
        index = self._index(trial)
        self._resume.discard(index)
        self._stop.discard(index)
        self.rungs.end(index, self._last_t.get(index, 0))
        self._apply(tune_controller, skip=index)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._ended(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._ended(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._ended(tune_controller, trial)

    def _apply(self, tune_controller: Any, skip: int | None = None) -> None:
        """Act on the waiting trials decided just now: resume them, or stop them where they paused."""
        for index, decision in self.rungs.resolve():
            trial = self._trials.get(index)
            if index == skip or trial is None or trial.status in (Trial.TERMINATED, Trial.ERROR):
                continue  # a trial that has ended: its value is recorded, there is nothing to resume or stop
            (self._stop if decision == STOP else self._resume).add(index)
        for index in sorted(self._stop):
            trial = self._trials[index]
            if trial.status == Trial.PAUSED or trial.is_saving:
                self._stop.discard(index)
                tune_controller.stop_trial(trial)  # re-enters through on_trial_remove

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """The lowest-index trial that may run: a new one, or a paused one whose rung decision is CONTINUE."""
        self._apply(tune_controller)
        ready = [(self._index(t), t) for t in tune_controller.get_trials()
                 if t.status == Trial.PENDING
                 or (t.status == Trial.PAUSED and self.order.get(t.trial_id) in self._resume)]
        return min(ready, key=lambda p: p[0])[1] if ready else None

    def debug_string(self) -> str:
        return f"OrderedASHA: {len(self.rungs.waiting)} trial(s) wait for lower-index trials at a rung"
