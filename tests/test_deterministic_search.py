"""--deterministic's Tune plug-ins with fake trials and results (no Ray cluster, no training): the searcher's
proposals and the scheduler's decisions do not depend on the order in which results arrive."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import FloatDistribution
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from study.search.deterministic import OrderedASHA, WaveOptunaSearch, trial_seed

SPACE = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "dropout": FloatDistribution(0.0, 0.5)}
RECIPE = {"lr": 1e-3, "dropout": 0.25}


def searcher(batch: int = 2, total: int = 14) -> WaveOptunaSearch:
    return WaveOptunaSearch(space=dict(SPACE), metric="best_val_miou", mode="max", storage=None, study_name="cell-x",
                            user_attrs={"cell_id": "cell-x", "phase": "tune"}, batch=batch, total=total, first=RECIPE)


def score(config: dict[str, Any]) -> float:
    return 1.0 - abs(config["lr"] - 3e-3) * 100 - abs(config["dropout"] - 0.1)


def run_search(seed: int, batch: int = 2, total: int = 14) -> list[dict[str, Any]]:
    """Ask for trials as Tune would (one id at a time, again after a None), ending live trials in a random
    order, each with a fake result: the configurations proposed, by trial index."""
    rng = random.Random(seed)
    s = searcher(batch, total)
    live: list[str] = []
    configs: list[dict[str, Any]] = []
    n = 0
    while len(configs) < total or live:
        tid = f"t{n:03d}"
        config = s.suggest(tid) if len(configs) < total and rng.random() < 0.6 else None
        if config is not None:
            configs.append(config)
            live.append(tid)
            n += 1
        elif live:
            done = live.pop(rng.randrange(len(live)))
            c = configs[int(done[1:])]
            s.on_trial_result(done, {"val_miou": score(c), "epoch": 1})
            s.on_trial_complete(done, {"best_val_miou": score(c), "val_miou": score(c), "epoch": 1, "is_last": True})
    return configs


def test_proposals_depend_on_trial_order_and_results_only() -> None:
    want = run_search(0)
    assert want[0] == RECIPE  # the enqueued recipe stays trial 0
    assert len({tuple(sorted(c.items())) for c in want}) == len(want)
    for seed in range(1, 6):
        assert run_search(seed) == want, f"seed {seed}"


def test_a_wave_waits_for_every_earlier_trial() -> None:
    s = searcher(batch=2, total=6)
    assert s.suggest("a") is not None and s.suggest("b") is not None
    assert s.suggest("c") is None  # the second wave needs both results of the first
    s.on_trial_complete("b", {"best_val_miou": 0.5, "is_last": True})
    assert s.suggest("c") is None
    s.on_trial_complete("a", {"best_val_miou": 0.4, "is_last": True})
    assert s.suggest("c") is not None and s.order == {"a": 0, "b": 1, "c": 2}


def test_trial_seeds_differ_by_cell_and_index() -> None:
    seeds = {trial_seed(0, cell, i) for cell in ("a", "b") for i in range(50)}
    assert len(seeds) == 100 and all(0 <= s < 2**31 for s in seeds)


@dataclass
class FakeTrial:
    trial_id: str
    status: str = Trial.RUNNING
    is_saving: bool = False


@dataclass
class FakeController:
    trials: list[FakeTrial]
    stopped: list[str] = field(default_factory=list)

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def stop_trial(self, trial: FakeTrial) -> None:
        self.stopped.append(trial.trial_id)
        trial.status = Trial.TERMINATED


def test_scheduler_pauses_a_trial_that_overtook_and_stops_or_resumes_it_in_order() -> None:
    trials = [FakeTrial(f"t{i}") for i in range(3)]
    ctl = FakeController(trials)
    sched = OrderedASHA(max_t=4, grace_period=1, reduction_factor=2, order={t.trial_id: i for i, t in
                                                                            enumerate(trials)},
                        metric="best_val_miou")
    for t in trials:
        sched.on_trial_add(ctl, t)

    def report(i: int, epoch: int, value: float) -> str:
        return sched.on_trial_result(ctl, trials[i], {"epoch": epoch, "best_val_miou": value})

    assert report(2, 1, 0.1) == TrialScheduler.PAUSE  # trials 0 and 1 have not reached epoch 1
    trials[2].status = Trial.PAUSED
    assert report(1, 1, 0.9) == TrialScheduler.PAUSE
    trials[1].status = Trial.PAUSED
    assert sched.choose_trial_to_run(ctl) is None  # both wait for trial 0
    assert report(0, 1, 0.5) == TrialScheduler.CONTINUE
    # trial 1 (0.9 >= the median of {0.5}) resumes; trial 2 (0.1 < the median of {0.5, 0.9}) is stopped where it paused
    assert ctl.stopped == ["t2"]
    assert sched.choose_trial_to_run(ctl) is trials[1]
