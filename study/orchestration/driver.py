"""The study driver: cells -> Ray Tune -> rows in the Parquet store.

Inputs are prepared and validated before Ray starts (:mod:`study.orchestration.inputs`).
Cells whose final rows are already in the store are skipped, so re-running the
same command continues a study. Nothing here names a strategy: what a cell
needs comes from its registry entry.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from study import progress
from study.config import StudyConfig
from study.data.subsets import SubsetManifest
from study.errors import HsiStudyError, ResultsWriteError
from study.orchestration.cell import CellInterrupted, cell_id, cell_label, optuna_journal, run_cell
from study.orchestration.inputs import PreparedDataset
from study.progress import echo
from study.search import search_space, space_specs
from study.store import STUDY_FILE, Location, read_table, resolve, write_study_file
from study.strategies import Strategy, get_strategy


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


def previous_study(results: Location) -> dict[str, Any]:
    """The folder's study.json as the last run left it ({} when there is none or it is unreadable)."""
    try:
        previous = json.loads(results.read_text(STUDY_FILE))
    except (FileNotFoundError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def strategy_settings(previous: dict[str, Any], cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """Per strategy, the strategy-specific settings it last ran with, kept across runs of the same study.

    Strategies can be run one at a time into one study, and ``settings`` in
    study.json is the latest run's: the report reads this record to say, e.g.,
    which HyperSL strategies used the local sanity backbone. ``previous``: :func:`previous_study`.
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
                  echo: Callable[[str], None] = echo) -> list[tuple[PreparedDataset, Strategy, SubsetManifest, str]]:
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


def expected_cost(cell: tuple[PreparedDataset, Strategy, SubsetManifest, str]) -> float:
    """A cell's expected length, for ordering only: its training pixels times its strategy's relative cost
    (or, without one, its GPU share: the registry's per-trial request, a proxy for how heavy its model is)."""
    prep, strategy, subset, _ = cell
    train = prep.splits["train"]
    index = {n: i for i, n in enumerate(train.names)}
    pixels = sum(h * w for h, w in (train.shapes[index[n]] for n in subset.names if n in index))
    cost = strategy.relative_cost if strategy.relative_cost is not None else strategy.gpus_per_trial
    return pixels * max(cost, 0.05)


def run_study(cfg: StudyConfig, preps: dict[str, PreparedDataset], echo: Callable[[str], None] = echo) -> list[str]:
    """Run every pending cell, all at once (each its own Tuner in a driver thread); returns failure messages.

    Raises :class:`CellInterrupted` after a Ctrl+C / SIGTERM once every cell has stopped: what finished is
    in the store, unfinished cells stay unfinished, and the same command continues the study.
    """
    import ray

    results = resolve(cfg.runtime.results)
    stored = read_table(results)  # once per study (first: refuses a store of another schema version)
    done = finished_cells(stored, cfg.budget.seeds)
    previous = previous_study(results)  # read once: the check below and the merged strategy settings
    check_one_study(previous, results, cfg)
    write_study_file(results, {"study_id": cfg.study_id, "settings": cfg.settings(),
                               "data_root": {n: str(p.data_root) for n, p in preps.items()},
                               "strategy_settings": strategy_settings(previous, cfg),
                               "search_spaces": {s: space_specs(search_space(cfg, get_strategy(s)))
                                                 for s in cfg.strategies}})
    gpus = cfg.runtime.gpus
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if gpus == "on" and not cluster_gpus and not (cfg.runtime.address or os.environ.get("RAY_ADDRESS")):
        raise HsiStudyError("--gpus on, but this local Ray has no GPU: every trial would wait for one forever; use "
                            "--gpus auto (or off) here, or --address of a cluster that has or can start GPU workers")
    have_gpu = gpus == "on" or (gpus == "auto" and cluster_gpus > 0)
    if gpus == "auto" and not have_gpu and cfg.runtime.address:
        echo("note: no GPU in the cluster yet, trials request CPU only; use --gpus on to make an autoscaling "
             "cluster start GPU workers")
    cells = pending_cells(cfg, preps, done, echo)
    if not cells:
        return []
    key = f"{cfg.study_id}-{os.getpid()}-{time.monotonic_ns()}"
    runs_per_cell = cfg.budget.seeds + (0 if cfg.protocol == "paper" else cfg.budget.trials)
    control = progress.register(progress.StudyControl(key, len(cells), len(cells) * runs_per_cell, echo))
    stack = contextlib.ExitStack()
    failures: list[str] = []
    try:
        journal_file, journal = stack.enter_context(optuna_journal(results))

        def one(rank: int, cell: tuple[PreparedDataset, Strategy, SubsetManifest, str]) -> None:
            prep, strategy, subset, cid = cell
            label = cell_label(cfg, prep, strategy, subset)
            if control.stop.is_set():
                return
            echo(f"[{label}] starts ({len(subset.names)} of {subset.n_total} train images, subset "
                 f"{subset.content_hash[:8]})")
            control.update(force=True, cells_running=+1)
            t0 = time.perf_counter()
            try:
                rows = stored.filter(pc.equal(stored["cell_id"], cid)).to_pylist() if stored.num_rows else []
                run_cell(cfg, prep, strategy, subset, cid, have_gpu, echo, journal, journal_file, key, rank, rows)
                echo(f"[{label}] done in {time.perf_counter() - t0:.0f} s")
            except CellInterrupted as exc:
                echo(f"[{label}] {exc}")
            except RuntimeError as exc:  # every trial failed, or the budget was not met: record, go on
                failures.append(f"{label}: {exc}")
                echo(f"[{label}] cell failed: {exc}")
            finally:
                control.update(force=True, cells_running=-1, cells_done=+1)

        workers = cfg.runtime.max_concurrent_cells or len(cells)
        requests = {strategy.name: strategy.resources(have_gpu) for _, strategy, _, _ in cells}
        watchdog = threading.Thread(target=_watch_for_stall, args=(control, requests, stall_seconds()),
                                    name="stall-watchdog", daemon=True)
        watchdog.start()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cell") as pool:
            futures = [pool.submit(one, rank, cell) for rank, cell in enumerate(cells)]  # cells: longest first
            try:
                for fut in as_completed(futures):
                    fut.result()
            except BaseException as exc:  # Ctrl+C, SIGTERM (run.py raises KeyboardInterrupt) or a cell's error
                what = ("interrupted" if isinstance(exc, KeyboardInterrupt) else "a result could not be written"
                        if isinstance(exc, ResultsWriteError) else f"{type(exc).__name__}: {exc}")
                echo(f"stopping ({what}): every running cell ends its trials; what finished is kept ...")
                control.stop.set()
                wait(futures)
                raise
    finally:
        control.stop.set()  # ends the stall watchdog
        progress.unregister(key)
        stack.close()
    if control.error:
        raise HsiStudyError(control.error)
    return failures


def stall_seconds() -> float:
    """How long a study may sit with cells waiting and no trial running before it gives up (default 15 min:
    long enough for an autoscaler to start a GPU node)."""
    return float(os.environ.get("HSISTUDY_STALL_S", 900))


def _watch_for_stall(control: progress.StudyControl, requests: dict[str, dict[str, float]], limit: float) -> None:
    """Stop a study that cannot make progress: cells waiting, no trial placed for ``limit`` seconds."""
    import ray

    while not control.stop.wait(min(15.0, limit / 4)):
        if control.cells_done >= control.cells_total:
            return
        idle = time.monotonic() - control.last_event
        if control.trials_running == 0 and control.cells_running > 0 and idle >= limit:
            have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            want = ", ".join(f"{s}: {r}" for s, r in requests.items())
            control.error = (f"no trial could be placed on the cluster for {idle / 60:.0f} min: trials request "
                             f"({want}) but the cluster offers {have or 'nothing'}; start nodes with those "
                             "resources, or lower the request (--gpus off for CPU-only trials)")
            control.echo(f"stopping: {control.error}")
            control.stop.set()
            return
