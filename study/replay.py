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
orphans ones that started after the snapshot (``shared/reference/ecosystem.md``
§5) — exactly the duplicated and lost work this module prevents.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

#: Metrics re-reported for a replayed epoch (the per-epoch columns of the store).
_EPOCH_KEYS = ("train_loss", "val_miou", "val_oa", "val_macc", "val_macro_f1", "val_iou_per_class",
               "wall_s", "device_s", "device", "n_params", "model_name", "backbone_hash", "backbone_pretrained",
               "node_id")
_TEST_KEYS = ("test_miou", "test_oa", "test_macc", "test_macro_f1", "test_iou_per_class")


def trial_key(config: Mapping[str, Any]) -> str:
    """Content hash of a trial's full config (cell id and phase are part of it)."""
    blob = json.dumps({k: config[k] for k in sorted(config)}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and np.isnan(v):
        return float("nan")
    return v


def replay_from_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Store rows of one cell -> {trial_key: {"results": [...], "error": str | None}}.

    Only trials with a summary row (``trial`` or ``final``) count as finished;
    epoch rows of a trial that was interrupted mid-way are ignored, so that trial
    trains again from scratch.
    """
    summaries = {r["trial_id"]: r for r in rows if r["row_kind"] in ("trial", "final")}
    out: dict[str, dict[str, Any]] = {}
    for tid, s in summaries.items():
        config = json.loads(s["config_json"])
        mine = (r for r in rows if r["row_kind"] == "epoch" and r["trial_id"] == tid)
        epochs = sorted(mine, key=lambda r: r["epoch"])
        results, best, best_epoch = [], -1.0, 0
        for i, r in enumerate(epochs):
            m = {k: _clean(r.get(k)) for k in _EPOCH_KEYS if r.get(k) is not None}
            if (r.get("val_miou") or -1.0) > best:
                best, best_epoch = r["val_miou"], r["epoch"]
            last = i == len(epochs) - 1
            m.update(epoch=r["epoch"], best_val_miou=best, best_epoch=best_epoch, max_epochs=s["max_epochs"],
                     is_last=last and s["status"] == "completed", replayed=True)
            if last and s["row_kind"] == "final":
                m.update({k: s[k] for k in _TEST_KEYS if s.get(k) is not None})
            results.append(m)
        out[trial_key(config)] = {"results": results, "error": s.get("error") if s["status"] == "error" else None}
    return out


class ReplayedFailure(RuntimeError):
    """A trial that failed before the interruption fails again without re-training."""


def replay_or_train(
    config: dict[str, Any],
    data: Any,
    replay: Mapping[str, dict[str, Any]],
    trainable_path: str,
    report: Callable[..., Any] | None = None,
) -> Any:
    """Tune function trainable: replay a finished trial from the store, else run the real trainable."""
    known = replay.get(trial_key(config))
    if known is None:
        module, _, attr = trainable_path.partition(":")
        return getattr(importlib.import_module(module), attr)(config, data)
    if report is None:
        from ray import tune

        report = tune.report
    if known["error"] is not None:
        raise ReplayedFailure(f"failed before the interruption: {known['error']}")
    for metrics in known["results"]:
        report(dict(metrics))
    return known["results"][-1] if known["results"] else None
