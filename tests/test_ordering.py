"""--deterministic's order-only logic with fake results (no Ray, no Optuna): decisions depend on trial order and
results, never on the order in which results arrive."""

from __future__ import annotations

import itertools
import random

import pytest

from study.search.ordering import CONTINUE, STOP, WAIT, OrderedRungs, Waves, milestones, percentile

#: fake learning curves: trial index -> value at epochs 1..6 (best-so-far, so non-decreasing)
CURVES = {
    0: [0.30, 0.40, 0.45, 0.50, 0.52, 0.53],
    1: [0.10, 0.15, 0.20, 0.22, 0.25, 0.26],
    2: [0.35, 0.42, 0.50, 0.55, 0.58, 0.60],
    3: [0.32, 0.38, 0.41, 0.44, 0.46, 0.47],
    4: [0.05, 0.06, 0.07, 0.08, 0.09, 0.10],
    5: [0.36, 0.44, 0.52, 0.57, 0.61, 0.64],
}
MAX_T, GRACE, RF = 6, 1, 2


def sequential() -> dict[int, int]:
    """Epochs each trial runs when trials run one at a time, in index order (Ray's ASHA rule)."""
    rungs = OrderedRungs(MAX_T, GRACE, RF)
    ran = {}
    for i, curve in CURVES.items():
        for t, v in enumerate(curve, 1):
            d = rungs.report(i, t, v)
            assert d != WAIT  # every lower trial has ended: nothing to wait for
            if d == STOP or t == MAX_T:
                ran[i] = t
                rungs.end(i, t)
                break
    return ran


def simulate(seed: int, concurrent: int) -> dict[int, int]:
    """Trials run ``concurrent`` at a time, in a random interleaving (the next event: a random live trial's next
    epoch); WAIT pauses a trial until :meth:`OrderedRungs.resolve` decides it. Returns epochs run per trial."""
    rng = random.Random(seed)
    rungs = OrderedRungs(MAX_T, GRACE, RF)
    pending = list(CURVES)
    live: dict[int, int] = {}  # running trial -> epochs done
    paused: dict[int, int] = {}
    ran: dict[int, int] = {}

    def finish(i: int, t: int) -> None:
        ran[i] = t
        rungs.end(i, t)

    while pending or live or paused:
        while pending and len(live) + len(paused) < concurrent:
            live[pending.pop(0)] = 0
        if not live:
            raise AssertionError(f"deadlock: paused {paused}, waiting {rungs.waiting}")
        i = rng.choice(sorted(live))
        t = live[i] + 1
        d = rungs.report(i, t, CURVES[i][t - 1])
        if t == MAX_T:
            del live[i]
            finish(i, t)
        elif d == STOP:
            del live[i]
            ran[i] = t
        elif d == WAIT:
            paused[i] = t
            del live[i]
        else:
            live[i] = t
        for j, dj in rungs.resolve():
            if j in paused:
                tj = paused.pop(j)
                if dj == STOP:
                    ran[j] = tj
                else:
                    live[j] = tj
    return ran


def test_milestones_match_rays_asha() -> None:
    assert milestones(6, 1, 2) == [4, 2, 1]
    assert milestones(8, 1, 2) == [8, 4, 2, 1]
    assert milestones(100, 10, 3) == [90, 30, 10]


def test_percentile_matches_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(0)
    for n in range(1, 9):
        xs = [rng.random() for _ in range(n)]
        for q in (0.0, 50.0, 66.7, 100.0):
            assert percentile(xs, q) == pytest.approx(float(np.nanpercentile(xs, q)))


def test_sequential_run_stops_the_weak_trials() -> None:
    ran = sequential()
    assert ran[0] == MAX_T  # alone at every rung
    assert ran[1] == 1  # below trial 0 at the first rung
    assert ran[4] == 1
    assert ran[5] == MAX_T


@pytest.mark.parametrize("concurrent", [2, 3, 6])
def test_results_in_scrambled_order_give_the_sequential_decisions(concurrent: int) -> None:
    """40 random interleavings of the trials' epochs (results arriving in scrambled order across trials), with
    pauses: every trial runs exactly the epochs it runs when trials run one at a time."""
    want = sequential()
    for seed in range(40):
        assert simulate(seed, concurrent) == want, f"seed {seed}"


def test_a_wait_is_decided_when_the_lower_trial_settles() -> None:
    rungs = OrderedRungs(MAX_T, GRACE, RF)
    assert rungs.report(1, 1, 0.9) == WAIT  # trial 0 has not reached epoch 1 yet
    assert rungs.resolve() == []
    assert rungs.report(0, 1, 0.5) == CONTINUE
    assert rungs.resolve() == [(1, CONTINUE)]
    assert rungs.report(2, 1, 0.1) == STOP  # below the median of 0.5, 0.9
    assert rungs.report(1, 1, 0.9) == CONTINUE  # a replay from the start gets the decision already made


def test_a_trial_that_ends_before_a_rung_settles_it() -> None:
    rungs = OrderedRungs(MAX_T, GRACE, RF)
    for t in (1, 2):
        assert rungs.report(0, t, 0.5) == CONTINUE
        assert rungs.report(1, t, 0.6) == CONTINUE
    assert rungs.report(1, 4, 0.7) == WAIT
    rungs.end(0, 3)  # trial 0 failed (or stopped on patience) at epoch 3
    assert rungs.resolve() == [(1, CONTINUE)]


def test_a_trial_ending_while_it_waits_is_recorded_in_order() -> None:
    rungs = OrderedRungs(MAX_T, GRACE, RF)
    assert rungs.report(1, 1, 0.9) == WAIT
    rungs.end(1, 1)  # its last epoch: it ends anyway
    assert rungs.report(2, 1, 0.1) == WAIT  # trial 1's value at rung 1 is not recorded until trial 0 settles
    assert rungs.report(0, 1, 0.5) == CONTINUE
    assert dict(rungs.resolve()) == {1: CONTINUE, 2: STOP}


def test_waves_open_only_after_every_earlier_trial_ended() -> None:
    waves = Waves(batch=2, total=5)
    assert waves.next_wave() == range(0, 2)
    assert waves.next_wave() is None
    waves.ended.add(1)
    assert waves.next_wave() is None  # trial 0 still runs, whatever order they end in
    waves.ended.add(0)
    assert waves.next_wave() == range(2, 4)
    waves.ended.update({2, 3})
    assert waves.next_wave() == range(4, 5)
    waves.ended.add(4)
    assert waves.next_wave() is None  # the budget is spent


def test_waves_open_the_same_way_in_any_end_order() -> None:
    for perm in itertools.permutations(range(4)):
        waves = Waves(batch=2, total=6)
        opened = [waves.next_wave()]
        for i in perm:  # trials 0-3 end in this order (2 and 3 "end" as soon as they are proposed)
            waves.ended.add(i)
            while (wave := waves.next_wave()) is not None:
                opened.append(wave)
        assert opened == [range(0, 2), range(2, 4), range(4, 6)]
