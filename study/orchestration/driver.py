"""The study driver: every pending cell in its own thread, each driving its own Ray Tune search.

Inputs are checked before Ray starts (:mod:`study.orchestration.inputs`); which cells run, and in
what order, is the plan's (:mod:`study.orchestration.plan`); one cell's search and finals are
:func:`study.orchestration.cell.run_cell`. Cells whose final rows are already in the store are
skipped, so re-running the same command continues a study. Nothing here names a strategy.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from study import progress
from study.config import StudyConfig
from study.errors import HsiStudyError, ResultsWriteError
from study.orchestration.cell import CellInterrupted, optuna_journal, run_cell
from study.orchestration.inputs import PreparedDataset
from study.orchestration.plan import Cell, cell_label, check_one_study, finished_cells, pending_cells, study_record
from study.orchestration.ray_setup import cpus_per_gpu
from study.progress import echo
from study.store import WorkingCopy, is_disk_full, read_study_file, read_table, resolve, write_study_file


def resolve_gpus(cfg: StudyConfig, echo: Callable[[str], None]) -> bool:
    """Whether trials request GPUs: ``--gpus on``, or ``auto`` with a GPU in the cluster now. ``on`` with a
    local Ray that has none is refused: every trial would wait for one forever."""
    import ray

    gpus = cfg.runtime.gpus
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if gpus == "on" and not cluster_gpus and not (cfg.runtime.address or os.environ.get("RAY_ADDRESS")):
        raise HsiStudyError("--gpus on, but this local Ray has no GPU: every trial would wait for one forever; use "
                            "--gpus auto (or off) here, or --address of a cluster that has or can start GPU workers")
    have_gpu = gpus == "on" or (gpus == "auto" and cluster_gpus > 0)
    if gpus == "auto" and not have_gpu and cfg.runtime.address:
        echo("note: no GPU in the cluster yet, trials request CPU only; use --gpus on to make an autoscaling "
             "cluster start GPU workers")
    return have_gpu


@dataclass
class StudyRun:
    """What every cell thread of one study shares: settings, the store as read once, the journal, the switch."""

    cfg: StudyConfig
    stored: pa.Table
    have_gpu: bool
    control: progress.StudyControl
    journal: Any
    journal_file: WorkingCopy
    echo: Callable[[str], None]
    failures: list[str] = field(default_factory=list)


def run_one_cell(run: StudyRun, rank: int, cell: Cell) -> None:
    """One cell in its driver thread: its search and finals; a failed cell is recorded and the study goes on."""
    prep, strategy, subset, cid = cell
    cfg, control, echo = run.cfg, run.control, run.echo
    label = cell_label(cfg, prep, strategy, subset)
    if control.stop.is_set():
        return
    echo(f"[{label}] starts ({len(subset.names)} of {subset.n_total} train images, subset "
         f"{subset.content_hash[:8]})")
    control.update(force=True, cells_running=+1)
    t0 = time.perf_counter()
    try:
        stored = run.stored
        rows = stored.filter(pc.equal(stored["cell_id"], cid)).to_pylist() if stored.num_rows else []
        run_cell(cfg, prep, strategy, subset, cid, run.have_gpu, echo, run.journal, run.journal_file, control.key,
                 rank, rows)
        echo(f"[{label}] done in {time.perf_counter() - t0:.0f} s")
    except CellInterrupted as exc:
        echo(f"[{label}] {exc}")
        control.update(force=True, cells_running=-1)  # not finished: "cells N done" counts finished cells only
        return
    except RuntimeError as exc:  # every trial failed, or the budget was not met: record, go on
        if is_disk_full(exc):  # not this cell's failure: the study stops (run.py says it in one line)
            control.update(cells_running=-1)
            raise
        run.failures.append(f"{label}: {exc}")
        echo(f"[{label}] cell failed: {exc}")
    except BaseException:
        control.update(cells_running=-1)
        raise
    control.update(force=True, cells_running=-1, cells_done=+1)


def run_cell_threads(run: StudyRun, cells: list[Cell]) -> None:
    """All cells in a thread pool (longest first), with the stall watchdog; on Ctrl+C, SIGTERM or a write
    error every running cell is told to stop and waited for before the exception goes on."""
    workers = run.cfg.runtime.max_concurrent_cells or len(cells)
    per_gpu = cpus_per_gpu() if run.have_gpu else None  # what cell.run_cell requests: the watchdog names it
    requests = {strategy.name: strategy.resources(run.have_gpu, per_gpu) for _, strategy, _, _ in cells}
    watchdog = threading.Thread(target=_watch_for_stall, args=(run.control, requests, stall_seconds()),
                                name="stall-watchdog", daemon=True)
    watchdog.start()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cell") as pool:
        futures = [pool.submit(run_one_cell, run, rank, cell) for rank, cell in enumerate(cells)]
        try:
            # never an unbounded wait: a SIGINT / SIGTERM that the kernel hands to another thread (Ray's, a
            # cell's) only sets a flag, which the main thread acts on when it next runs Python code
            progress.wait_futures(futures)
        except BaseException as exc:  # Ctrl+C, SIGTERM (KeyboardInterrupt) or a cell's error
            what = ("interrupted" if isinstance(exc, KeyboardInterrupt) else "a result could not be written"
                    if isinstance(exc, ResultsWriteError) else f"{type(exc).__name__}: {exc}")
            run.echo(f"stopping ({what}): every running cell ends its trials; what finished is kept "
                     "(a second Ctrl+C stops at once) ...")
            run.control.stop.set()
            progress.wait_futures(futures, raise_errors=False)
            raise


def run_pending_cells(cfg: StudyConfig, preps: dict[str, PreparedDataset],
                      echo: Callable[[str], None] = echo) -> list[str]:
    """Run every pending cell, all at once (each its own Tuner in a driver thread); returns failure messages.

    Raises :class:`CellInterrupted` after a Ctrl+C / SIGTERM once every cell has stopped: what finished is
    in the store, unfinished cells stay unfinished, and the same command continues the study.
    """
    results = resolve(cfg.runtime.results)
    stored = read_table(results)  # once per study (first: refuses a store of another schema version)
    done = finished_cells(stored, cfg.budget.seeds)
    previous = read_study_file(results)  # read once: the check below and the merged strategy settings
    check_one_study(previous, results, cfg)
    write_study_file(results, study_record(cfg, preps, previous))
    have_gpu = resolve_gpus(cfg, echo)
    cells = pending_cells(cfg, preps, done, echo)
    if not cells:
        return []
    key = f"{cfg.study_id}-{os.getpid()}-{time.monotonic_ns()}"
    runs_per_cell = cfg.budget.seeds + (0 if cfg.protocol == "paper" else cfg.budget.trials)
    control = progress.register(progress.StudyControl(key, len(cells), len(cells) * runs_per_cell, echo))
    stack = contextlib.ExitStack()
    try:
        journal_file, journal = stack.enter_context(optuna_journal(results))
        run = StudyRun(cfg, stored, have_gpu, control, journal, journal_file, echo)
        run_cell_threads(run, cells)
    finally:
        control.stop.set()  # ends the stall watchdog
        progress.unregister(key)
        stack.close()
    if control.error:
        raise HsiStudyError(control.error)
    return run.failures


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
