"""Resume without loss: an interrupted study, re-run, equals an uninterrupted one row for row."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from study.errors import HsiStudyError
from study.run import main
from study.store import TIMING_COLUMNS, part_files, read_store, results_lock

ARGS = ["--strategy", "indomain", "--dataset", "hyko2", "--width", "tiny", "--fractions", "0.5,1.0",
        "--trials", "3", "--epochs", "3", "--grace-period", "1", "--seeds", "2", "--max-concurrent", "1"]
ORDER = ["cell_id", "phase", "config_json", "row_kind", "epoch"]
#: the interrupted-and-resumed subprocess studies (SIGKILL here, Ctrl+C in test_reliability): --deterministic, so
#: the re-run's search replays the stored trials through the wave searcher and the ordered ASHA (issue 27), and two
#: cells in flight on 2 CPUs; conftest's ``clean_resume_store`` is their uninterrupted run
RESUME_ARGS = [*ARGS, "--deterministic", "--num-cpus", "2"]


def comparable(results: Path) -> pl.DataFrame:
    """The store without timing/placement columns, in a canonical row order."""
    # code_version names the commit: two runs of one test compare rows, not the checkout they ran from
    df = read_store(results).drop([*TIMING_COLUMNS, "code_version"])
    return df.with_columns(pl.col(pl.Float64).round(6)).sort(ORDER)


def test_rerun_after_losing_trials_replays_finished_ones_and_matches(ray_session, tiny_root, tmp_path, capsys) -> None:
    results = tmp_path / "res"
    argv = [*ARGS, "--data-root", str(tiny_root), "--results", str(results)]
    assert main(argv) == 0
    reference = comparable(results)
    capsys.readouterr()

    # an "interruption" in the second cell: its final runs and one tuning trial never got stored
    parts = part_files(results)
    second = sorted({p.name.split("-")[1] for p in parts})[-1]  # fraction token of the last cell, e.g. "f1"
    lost = [p for p in parts if f"-{second}-" in p.name and "-final-" in p.name]
    lost += [p for p in parts if f"-{second}-" in p.name and "-tune-" in p.name][-1:]
    assert len(lost) == 3
    for p in lost:
        p.unlink()

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "already finished, skipped" in out  # the first cell
    assert out.count("(replayed from the store)") == 2  # the two stored tuning trials of the second cell
    resumed = comparable(results)
    assert resumed.height == reference.height
    assert resumed.equals(reference)
    assert not read_store(results).select("trial_id", "row_kind", "epoch").is_duplicated().any()


def test_second_writer_on_the_same_results_dir_stops_with_a_clear_message(tmp_path) -> None:
    with results_lock(tmp_path), pytest.raises(HsiStudyError, match="in use by another study.run"), \
            results_lock(tmp_path):
        pass
    with results_lock(tmp_path):  # released after the first holder ends
        pass


def assert_interrupted_store_is_short(results: Path, trials: int, seeds: int, cells: int = 2) -> None:
    """An interrupted store holds fewer runs than the study's budget, and every cell the driver counts as
    finished (all K final rows) holds its whole budget: no short cell is among the finished ones."""
    from study.orchestration.plan import finished_cells

    runs = (read_store(results).filter(pl.col("row_kind").is_in(["trial", "final"]))
            .group_by("cell_id", "phase").agg(pl.col("trial_id").n_unique().alias("n")))
    stored = {(r["cell_id"], r["phase"]): r["n"] for r in runs.iter_rows(named=True)}
    assert sum(stored.values()) < cells * (trials + seeds), stored
    for cid in finished_cells(results, seeds):
        assert (stored.get((cid, "tune"), 0), stored.get((cid, "final"), 0)) == (trials, seeds), (cid, stored)


def test_the_interrupted_store_check_fails_on_a_full_store_and_on_a_short_finished_cell(tmp_path) -> None:
    """The check the Ctrl+C / signal tests rely on can fail: a constructed store (3 cells x 4 trials + 3 seeds)
    passes it only once a cell is really unfinished, and fails it while a finished cell lacks a trial."""
    from store_builder import FRACTIONS, SEEDS, TRIAL_EPOCHS, build_store

    from study.store import write_rows

    full = read_store(build_store(tmp_path / "full", strategies=("indomain",)))
    budget = dict(trials=len(TRIAL_EPOCHS), seeds=len(SEEDS), cells=len(FRACTIONS))
    with pytest.raises(AssertionError):  # nothing missing: not an interrupted store
        assert_interrupted_store_is_short(tmp_path / "full", **budget)
    last_cell = full["cell_id"].max()
    first_cell = full["cell_id"].min()
    cases = {
        "no-finals": (pl.col("cell_id") == last_cell) & (pl.col("phase") == "final"),  # unfinished: fine
        "short-finished": pl.col("trial_id") == f"{first_cell}-tune-1",  # finished with 3 of 4 trials: caught
        "empty": pl.lit(True),
    }
    for name, drop in cases.items():
        rows = full.filter(~drop)
        if rows.height:
            write_rows(tmp_path / name, rows.to_dicts(), part_name=name)
    assert_interrupted_store_is_short(tmp_path / "no-finals", **budget)
    assert_interrupted_store_is_short(tmp_path / "empty", **budget)  # stopped before anything was stored
    with pytest.raises(AssertionError, match=first_cell):
        assert_interrupted_store_is_short(tmp_path / "short-finished", **budget)


def _stored_trials(results: Path) -> set[str]:
    if not (results / "rows").exists():
        return set()
    df = read_store(results)
    return set(df.filter(pl.col("row_kind").is_in(["trial", "final"]))["trial_id"].to_list())


@pytest.mark.slow
def test_sigkill_with_cells_in_flight_then_rerun_equals_uninterrupted_run(tiny_root, tmp_path,
                                                                         clean_resume_store) -> None:
    """Both cells run at once (``--deterministic``); SIGKILL the driver once each has stored a trial; the re-run
    replays what was stored, trains only the rest, and the store equals an uninterrupted run's with no
    duplicated row."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "study.run", *RESUME_ARGS, "--data-root", str(tiny_root)]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--results", str(killed)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 300

    def in_flight() -> bool:  # a tuning trial of each cell stored, and neither cell done
        return all(any(f"[indomain {f} tune] trial 1/" in ln for ln in lines) for f in ("0.5", "1"))

    while time.time() < deadline and proc.poll() is None and not in_flight():
        time.sleep(0.1)
    assert proc.poll() is None, "the study ended before it could be killed:\n" + "".join(lines)
    assert not any("] done in" in ln for ln in lines), "a cell finished before the kill:\n" + "".join(lines)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(2)  # let Ray's orphaned processes notice
    before = _stored_trials(killed)
    assert len({t.split("-tune-")[0] for t in before if "-tune-" in t}) == 2  # both cells had stored a trial

    rerun = subprocess.run([*base, "--results", str(killed)], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    replayed = rerun.stdout.count("(replayed from the store)")
    assert replayed == len(before)  # every stored trial replayed, none trained again
    after = _stored_trials(killed)
    total = 2 * (3 + 2)  # 2 cells x (3 trials + 2 final seeds)
    assert len(after) == total and before <= after
    finished = len(re.findall(r"\] trial \d+/\d+ ", rerun.stdout))  # one line per trial that ended
    assert finished - replayed == total - len(before)  # only the interrupted ones trained
    assert comparable(killed).equals(comparable(clean_resume_store))
    assert not read_store(killed).select("trial_id", "row_kind", "epoch").is_duplicated().any()
