"""Rows <-> trial logs: the two directions between Ray Tune's reports and the result store.

A trial reports a dict per epoch; the driver turns a finished trial's reports
into store rows (:func:`trial_rows`); on resume the store's rows of a cell are
turned back into reports (:func:`replay_from_rows`) that a replayed trial
re-reports. Both directions, and the list of keys a report may carry
(:data:`REPORT_KEYS`), are derived here from the column groups of
:data:`study.store.results.RESULT_SCHEMA`, so a column added there reaches every path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from study.hashing import json_digest
from study.store.results import EPOCH_METRICS, HYPERPARAMETERS, RUN_FACTS, TEST_METRICS

#: Keys of one epoch's report that become columns of its epoch row.
EPOCH_KEYS: tuple[str, ...] = (*EPOCH_METRICS, *RUN_FACTS)
#: Bookkeeping keys a report carries besides columns (the epoch, the running best, whether it is the last, why the
#: trial's data placement was chosen: the driver prints it).
CONTROL_KEYS = ("epoch", "best_val_miou", "best_epoch", "is_last", "replayed", "data_placement_why")
#: Everything the driver keeps of a report.
REPORT_KEYS: tuple[str, ...] = (*CONTROL_KEYS, *EPOCH_KEYS, *TEST_METRICS)
#: Config keys that are not part of a configuration's identity (the same config re-trained with seeds).
_RUN_ONLY = ("seed", "phase", "final")
#: Config keys that say where a k = 0 run gets its features (``--features compute``'s trial constants:
#: study.orchestration.features_mode), not what it trains: no part of a trial's or a configuration's identity,
#: so a study resumed in the other mode replays the trials it finished (results agree within fp32 rounding)
_FEATURE_SOURCE = ("features", "feature_dtype", "feature_folder")
#: Config keys that say where a trial runs, never what it computes: left out of its identity (trial key, config
#: hash) and of its stored config, so a study resumed or re-run with another placement replays its trials and
#: stores the same rows.
RUNTIME_KEYS = ("data_placement",)


def identity_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config without its :data:`RUNTIME_KEYS`."""
    return {k: v for k, v in config.items() if k not in RUNTIME_KEYS and k not in _FEATURE_SOURCE}


@dataclass
class TrialLog:
    """Everything the driver saw of one trial."""

    trial_id: str
    config: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    started_at: datetime | None = None  # UTC, as the driver saw the trial start and end
    ended_at: datetime | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self.results and self.results[-1].get("is_last"):
            return "completed"
        return "stopped_early"

    @property
    def best(self) -> dict[str, Any] | None:
        """The result at the best-validation epoch (the checkpoint this trial would hand on)."""
        good = [r for r in self.results if r.get("val_miou") is not None]
        if not good:
            return None
        last = self.results[-1]
        return next((r for r in good if r["epoch"] == last.get("best_epoch")), max(good, key=lambda r: r["val_miou"]))


def config_hash(config: Mapping[str, Any]) -> str:
    """Content hash of a trial config: the key that identifies a configuration (without seed and phase)."""
    return json_digest(identity_config(config), 16)


def trial_key(config: Mapping[str, Any]) -> str:
    """Content hash of a trial's full config (cell id, phase and seed included; where it runs and where its
    features come from left out): its identity across re-runs."""
    return json_digest(identity_config(config), 20)


def _present(r: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: r[k] for k in keys if r.get(k) is not None}


def trial_rows(log: TrialLog, common: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One trial's log -> store rows: one per epoch plus its summary (``trial`` or ``final``) row."""
    cfg = identity_config(log.config)
    phase = str(cfg.get("phase", "tune"))
    base = {
        **common,
        "phase": phase,
        "trial_id": f"{common['cell_id']}-{phase}-{log.trial_id}",
        "config_hash": config_hash({k: v for k, v in cfg.items() if k not in _RUN_ONLY + _FEATURE_SOURCE}),
        "seed": int(cfg.get("seed", 0)),
        "max_epochs": int(cfg.get("max_epochs", 0)),
        **{k: cfg.get(k) for k in HYPERPARAMETERS},
        "config_json": json.dumps(cfg, sort_keys=True, default=str),
    }
    rows = [{**base, **_present(r, EPOCH_KEYS), "row_kind": "epoch", "status": "ok",
             "epoch": r["epoch"], "epochs_run": r["epoch"]} for r in log.results]
    best, last = log.best, (log.results[-1] if log.results else {})
    summary = {**base, "row_kind": "trial" if phase == "tune" else "final", "status": log.status,
               "epochs_run": last.get("epoch", 0), "error": log.error}
    if best is not None:
        summary.update(_present(best, EPOCH_KEYS))
        summary["epoch"] = best["epoch"]
    if phase == "final":
        summary.update(_present(last, TEST_METRICS))
    summary.update({"wall_s": last.get("wall_s"), "device_s": last.get("device_s"), "node_id": last.get("node_id"),
                    "data_placement": last.get("data_placement"), "started_at": log.started_at,
                    "ended_at": log.ended_at})
    return [*rows, summary]


def _clean(v: Any) -> Any:
    return float("nan") if isinstance(v, float) and math.isnan(v) else v


def replay_from_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Store rows of one cell -> {trial_key: {"results": [reports...], "error": str | None}}.

    Only trials with a summary row (``trial`` or ``final``) count as finished;
    epoch rows of a trial that was interrupted mid-way are ignored, so that trial
    trains again from scratch.
    """
    summaries = {r["trial_id"]: r for r in rows if r["row_kind"] in ("trial", "final")}
    out: dict[str, dict[str, Any]] = {}
    for tid, s in summaries.items():
        config = json.loads(s["config_json"])
        epochs = sorted((r for r in rows if r["row_kind"] == "epoch" and r["trial_id"] == tid),
                        key=lambda r: r["epoch"])
        results, best, best_epoch = [], -1.0, 0
        for i, r in enumerate(epochs):
            m = {k: _clean(r[k]) for k in EPOCH_KEYS if r.get(k) is not None}
            if (r.get("val_miou") or -1.0) > best:
                best, best_epoch = r["val_miou"], r["epoch"]
            last = i == len(epochs) - 1
            m.update(epoch=r["epoch"], best_val_miou=best, best_epoch=best_epoch, max_epochs=s["max_epochs"],
                     is_last=last and s["status"] == "completed", replayed=True)
            if last and s["row_kind"] == "final":
                m.update(_present(s, TEST_METRICS))
            results.append(m)
        out[trial_key(config)] = {"results": results, "error": s.get("error") if s["status"] == "error" else None}
    return out
