"""The plan of a study: its cells, their ids and labels, which are finished, which run, in what order.

A cell is one (dataset, strategy, training fraction): its id keys its rows in the store, so a re-run
finds what is finished and runs only the rest, longest first. Nothing here runs anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from study.config import StudyConfig
from study.data.subsets import SubsetManifest
from study.errors import HsiStudyError
from study.hashing import json_digest
from study.orchestration.inputs import PreparedDataset
from study.progress import echo
from study.search import changed_space, search_space, space_specs
from study.store import Location, read_table
from study.strategies import Strategy, get_strategy

#: one pending cell: its dataset's inputs, strategy, training subset and id
Cell = tuple[PreparedDataset, Strategy, SubsetManifest, str]


def cell_id(cfg: StudyConfig, strategy: str, subset: SubsetManifest, legacy: bool = False,
            dataset: str | None = None) -> str:
    """Stable id of a cell: strategy + subset + the settings that strategy's results depend on (so a re-run,
    or a later run with more strategies or datasets, finds its rows). ``legacy``: the id stores written
    before the strategy list left the study id used (recognised as finished, never written)."""
    key = cfg.legacy_study_id.rsplit("-", 1)[-1] if legacy else cfg.strategy_key(strategy, dataset)
    if (space := changed_space(search_space(cfg, get_strategy(strategy)),
                               search_space(cfg, get_strategy(strategy), builtin=True))) is not None:
        key = json_digest({"key": key, "search_space": space}, 10)  # a changed --config space: cells of its own
    return f"{strategy}-f{subset.fraction:g}-{subset.content_hash[:8]}-{key}"


def cell_label(cfg: StudyConfig, prep: PreparedDataset, strategy: Strategy, subset: SubsetManifest) -> str:
    prefix = f"{prep.spec.name} " if len(cfg.data.datasets) > 1 else ""
    return f"{prefix}{strategy.name} {subset.fraction:g}"


def finished_cells(results: Path | Location | pa.Table, final_seeds: int) -> set[str]:
    """Cells that already have all their final rows in the store (or in a table already read from it)."""
    table = results if isinstance(results, pa.Table) else read_table(results)
    if table.num_rows == 0:
        return set()
    finals = table.filter(pc.equal(table["row_kind"], "final"))
    counts: dict[str, int] = {}
    for c in finals["cell_id"].to_pylist():
        counts[c] = counts.get(c, 0) + 1
    return {c for c, n in counts.items() if n >= final_seeds}


def merged_strategy_settings(previous: dict[str, Any], cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """Per strategy, the strategy-specific settings it last ran with, kept across runs of the same study.

    Strategies can be run one at a time into one study, and ``settings`` in
    study.json is the latest run's: the report reads this record to say, e.g.,
    which HyperSL strategies used the local sanity backbone. ``previous``: :func:`study.store.read_study_file`.
    """
    settings = cfg.settings()
    return {**(previous.get("strategy_settings") or {}),
            **{s: {k: settings[k] for k in get_strategy(s).settings} for s in cfg.strategies}}


def check_one_study(previous: dict[str, Any], results: Location, cfg: StudyConfig) -> None:
    """One results folder holds one study: rows of two protocols (other trials, epochs, fractions, data...)
    would be pooled by every summary. Strategies run one at a time share the study id, so they pass."""
    stored = previous.get("study_id")
    if stored and stored not in (cfg.study_id, cfg.legacy_study_id):
        raise HsiStudyError(
            f"{results.show()} holds study {stored}; this command is study {cfg.study_id} (other settings: "
            "trials, epochs, fractions, seeds, data or protocol differ), and their rows would be pooled: give "
            "this study its own --results (or omit --results: the default folder is named by the study id)")


def pending_cells(cfg: StudyConfig, preps: dict[str, PreparedDataset], done: set[str],
                  echo: Callable[[str], None] = echo) -> list[Cell]:
    """Every (dataset, strategy, fraction) cell not already finished, in that order."""
    out, n = [], len(cfg.data.datasets) * len(cfg.strategies) * len(cfg.data.fractions)
    for prep in preps.values():
        for sname in cfg.strategies:
            strategy = get_strategy(sname)
            for frac in sorted(prep.subsets):
                subset = prep.subsets[frac]
                cid = cell_id(cfg, sname, subset, dataset=prep.spec.name)
                if cid in done or cell_id(cfg, sname, subset, legacy=True) in done:
                    echo(f"{cell_label(cfg, prep, strategy, subset)}: already finished, skipped")
                    continue
                out.append((prep, strategy, subset, cid))
    out.sort(key=expected_cost, reverse=True)  # longest first: a long cell started last would set the makespan
    echo(f"{len(out)} of {n} cell(s) to run" + (f", up to {cfg.runtime.max_concurrent_cells} at once"
                                                  if cfg.runtime.max_concurrent_cells else ", all at once"))
    return out


def expected_cost(cell: Cell) -> float:
    """A cell's expected length, for ordering only: its training pixels times its strategy's relative cost
    (or, without one, its GPU share: the registry's per-trial request, a proxy for how heavy its model is)."""
    prep, strategy, subset, _ = cell
    train = prep.splits["train"]
    index = {n: i for i, n in enumerate(train.names)}
    pixels = sum(h * w for h, w in (train.shapes[index[n]] for n in subset.names if n in index))
    cost = strategy.relative_cost if strategy.relative_cost is not None else strategy.gpus_per_trial
    return pixels * max(cost, 0.05)


def study_record(cfg: StudyConfig, preps: dict[str, PreparedDataset], previous: dict[str, Any]) -> dict[str, Any]:
    """What study.json records of this run: the study id, its settings, data roots, per-strategy settings and
    the effective search spaces (the report reads them; the next run checks it is the same study), and where
    weights named by a Hub reference came from (``backbone_origins``: kind -> ``hf://OWNER/REPO/FILE@<commit>``,
    kept across runs like the strategy settings)."""
    resolved = {k: b.origin for p in preps.values() for k, b in p.backbones.items()}  # this run's, None: a path
    record = {"study_id": cfg.study_id, "settings": cfg.settings(),
              "data_root": {n: str(p.data_root) for n, p in preps.items()},
              "strategy_settings": merged_strategy_settings(previous, cfg),
              "search_spaces": {s: space_specs(search_space(cfg, get_strategy(s))) for s in cfg.strategies}}
    origins = {k: v for k, v in {**(previous.get("backbone_origins") or {}), **resolved}.items() if v}
    if origins:
        record["backbone_origins"] = origins
    return record
