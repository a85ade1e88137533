"""The order-only logic of a deterministic search (``--deterministic``), free of Ray and Optuna.

Two rules make a tuned cell's outcome a function of its trials' order and results, never of timing:

- :class:`Waves`: trial ``i`` belongs to wave ``i // batch``; a wave's configurations are all proposed at once,
  when every trial of the earlier waves has ended, so each proposal sees exactly the earlier waves' results;
- :class:`OrderedRungs`: asynchronous successive halving decided in trial order. A trial reaching rung ``m`` is
  compared with the lower-index trials' values at ``m`` only, once each of them has either recorded a value there
  or ended below it (until then the trial WAITs: Tune pauses it). The decisions equal those of ASHA run one
  trial at a time (Ray's ``AsyncHyperBandScheduler``: cutoff = the ``1 - 1/rf`` percentile of the values already
  at the rung), whatever order results arrive in.

:mod:`study.search.deterministic` wires both into Ray Tune (a ``Searcher`` and a ``TrialScheduler``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CONTINUE, STOP, WAIT = "CONTINUE", "STOP", "WAIT"


def milestones(max_t: int, grace_period: int, reduction_factor: int) -> list[int]:
    """ASHA's rungs, as Ray's one-bracket ``ASHAScheduler`` places them: grace * rf**k, highest first."""
    n = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in reversed(range(n))]


def percentile(values: list[float], q: float) -> float:
    """``numpy.nanpercentile(values, q)`` (linear interpolation) without numpy; NaN when no value is a number."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class OrderedRungs:
    """Successive-halving decisions in trial-index order (see the module docstring).

    Feed it :meth:`report` for every result and :meth:`end` when a trial ends; :meth:`resolve` returns the
    WAITing trials whose decision became known, lowest index first. Re-reports (a paused trial replayed from
    its start) get the decision already made.
    """

    max_t: int
    grace_period: int
    reduction_factor: int
    rungs: list[int] = field(init=False)
    #: rung -> {trial index: value recorded there}
    recorded: dict[int, dict[int, float]] = field(init=False, default_factory=dict)
    #: trial index -> last time (epoch) reported before it ended
    ended: dict[int, int] = field(init=False, default_factory=dict)
    #: trial index -> (rung, value) it waits at
    waiting: dict[int, tuple[int, float]] = field(init=False, default_factory=dict)
    #: (trial index, rung) -> the decision made there
    decided: dict[tuple[int, int], str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.rungs = milestones(self.max_t, self.grace_period, self.reduction_factor)
        self.recorded = {m: {} for m in self.rungs}

    def _settled(self, index: int, rung: int) -> bool:
        """Whether every trial below ``index`` has recorded a value at ``rung`` or ended before reaching it."""
        return all((j, rung) in self.decided or (j in self.ended and self.ended[j] < rung) for j in range(index))

    def report(self, index: int, t: int, value: float | None) -> str:
        """Trial ``index`` reports ``value`` at time ``t``: CONTINUE, STOP, or WAIT (pause until :meth:`resolve`)."""
        for rung in self.rungs:  # highest first: only the highest rung reached and not yet decided counts
            if t < rung:
                continue
            if (index, rung) in self.decided:
                return self.decided[(index, rung)]
            value = math.nan if value is None else float(value)
            if not self._settled(index, rung):
                self.waiting.setdefault(index, (rung, value))
                return WAIT
            return self._decide(index, rung, value)
        return CONTINUE

    def _decide(self, index: int, rung: int, value: float) -> str:
        self.waiting.pop(index, None)
        below = [v for j, v in self.recorded[rung].items() if j < index]
        cutoff = percentile(below, (1 - 1 / self.reduction_factor) * 100) if below else math.nan
        decision = STOP if not math.isnan(cutoff) and not math.isnan(value) and value < cutoff else CONTINUE
        if not math.isnan(value):
            self.recorded[rung][index] = value
        self.decided[(index, rung)] = decision
        if decision == STOP:
            self.end(index, rung)
        return decision

    def end(self, index: int, t: int) -> None:
        """Trial ``index`` ended (completed, stopped, failed) after time ``t``: it reaches no higher rung. A trial
        that ended while it WAITed at a rung (its last epoch) keeps waiting: its value there is still recorded, in
        order, as a sequential run would have recorded it."""
        self.ended.setdefault(index, t)

    def resolve(self) -> list[tuple[int, str]]:
        """Decide every WAITing trial whose lower-index trials are now settled, lowest index first."""
        out: list[tuple[int, str]] = []
        progress = True
        while progress:
            progress = False
            for index in sorted(self.waiting):
                rung, value = self.waiting[index]
                if self._settled(index, rung):
                    out.append((index, self._decide(index, rung, value)))
                    progress = True
                    break
        return out


@dataclass
class Waves:
    """Which trials may be proposed: wave ``w`` (trials ``w*batch .. (w+1)*batch - 1``) opens once every trial of
    the earlier waves has ended."""

    batch: int
    total: int
    ended: set[int] = field(default_factory=set)
    opened: int = 0  # trials proposed so far (the next one's index)

    def next_wave(self) -> range | None:
        """The indices of the next wave if it may open now (then they count as proposed), else None."""
        if self.opened >= self.total or any(i not in self.ended for i in range(self.opened)):
            return None
        wave = range(self.opened, min(self.opened + self.batch, self.total))
        self.opened = wave.stop
        return wave
