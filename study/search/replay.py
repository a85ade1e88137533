"""Resume without loss: finished trials are replayed from the result store, never re-trained.

Every trial is identified by a content hash of its full config, which includes
the cell id and the phase (``trial_key``). When a study is re-run after an
interruption, the driver hands the stored history of every finished trial of
the cell to :func:`replay_or_train`; a trial whose key is known re-reports its
stored epochs (microseconds, no training) instead of training again. Because
the searcher and ASHA see exactly the results they saw before, a seeded search
proposes the same configurations in the same order, so the resumed store equals
an uninterrupted one row for row.

Why not ``Tuner.restore`` alone: after a SIGKILL the driver's experiment
snapshot can be up to ~10 s old, so restore re-runs trials that had finished and
orphans ones that started after the snapshot (``docs/reference.md``
§R32) — exactly the duplicated and lost work this module prevents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from study.store import trial_key
from study.strategies import Strategy


class ReplayedFailure(RuntimeError):
    """A trial that failed before the interruption fails again without re-training."""


def replay_or_train(
    config: dict[str, Any],
    data: Any,
    replay: Mapping[str, dict[str, Any]],
    strategy: Strategy,
    report: Callable[..., Any] | None = None,
) -> Any:
    """Tune function trainable: replay a finished trial from the store, else run the real trainable."""
    known = replay.get(trial_key(config))
    if known is None and config.get("stage_dir"):  # --stage-data: read node-local copies of every input file
        from study.data.staging import stage_trial_inputs

        data, config = stage_trial_inputs(data, config)
    if known is None:  # the registry entry travels with the trainable: strategies registered at run time too
        return strategy.load_trainable()(config, data)
    if report is None:
        from ray import tune

        report = tune.report
    if known["error"] is not None:
        raise ReplayedFailure(f"failed before the interruption: {known['error']}")
    for metrics in known["results"]:
        report(dict(metrics))
    return known["results"][-1] if known["results"] else None
