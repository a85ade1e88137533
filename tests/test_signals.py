"""Stop means stop: SIGINT and SIGTERM sent to the driver's pid alone end a study with exit 130 and the resume
hint, every time, whichever thread the kernel hands the signal to; the re-run equals an uninterrupted run."""

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

from study.store import read_store

#: two cells in flight at once (the default: every pending cell), 3 trials + 3 final seeds each
STOP_ARGS = ["--strategy", "indomain", "--dataset", "hyko2", "--width", "tiny", "--fractions", "0.5,1.0",
             "--trials", "3", "--epochs", "3", "--grace-period", "1", "--seeds", "3", "--max-concurrent", "1",
             "--num-cpus", "2"]
#: HSISTUDY_LIVE_S=0: a line for every epoch of every trial, so a signal can land in the middle of a trial
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
       "HSISTUDY_LIVE_S": "0"}
HINT = "re-run the same command to continue"
#: moments: a trial trained (not replayed) by this process ended, or one reported its first epoch
ENDED, RUNNING = r"\] trial \d+/\d+ (?!.*replayed)", r"\] trial \S+ epoch 1/"


def _base(tiny_root: Path) -> list[str]:
    return [sys.executable, "-m", "study.run", *STOP_ARGS, "--data-root", str(tiny_root)]


@pytest.fixture(scope="module")
def clean_store(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    from test_resume import comparable

    clean = tmp_path_factory.mktemp("clean") / "res"
    subprocess.run([*_base(tiny_root), "--results", str(clean)], env=ENV, check=True, capture_output=True,
                   timeout=600)
    return comparable(clean)


def _signal_once(base: list[str], results: Path, sig: int, phase: str, moment: str, delay: float,
                 twice: bool) -> str:
    """Start the study into ``results``, wait for ``moment`` (:data:`ENDED`, :data:`RUNNING`) in a trial of
    ``phase`` ("tune", "final" or "any"), wait ``delay`` s, send ``sig`` to the driver's pid alone (twice: a
    second one 0.3 s later) and check: exit 130 with the resume hint within 60 s. Returns the output."""
    pattern = re.compile((r"" if phase == "any" else rf" {phase}") + moment)
    proc = subprocess.Popen([*base, "--results", str(results)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def hit() -> bool:
        return any(pattern.search(ln) for ln in lines)

    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not hit():
            time.sleep(0.05)
        assert proc.poll() is None, f"the study ended before the {phase} signal:\n" + "".join(lines)
        assert hit(), "no trial ended in 240 s:\n" + "".join(lines)
        time.sleep(delay)
        sent = time.monotonic()
        os.kill(proc.pid, sig)
        if twice:  # while the trials end, or while the process exits (Ray's shutdown takes seconds)
            time.sleep(0.1)
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:  # already gone: nothing was left to stop at once
                twice = False
        rc = proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    text = "".join(lines)
    assert rc == 130, f"{signal.Signals(sig).name} ({phase} {moment}, +{delay} s): exit {rc} after {took:.0f} s\n{text}"
    assert HINT in text, text
    if twice:  # the second signal does not wait for trials to end
        assert "again: stopping at once" in text and took < 30, text
    # the last progress line counts finished cells only, never the interrupted ones
    progress_lines = re.findall(r"\[study\] cells (\d+) done", text)
    assert progress_lines and int(progress_lines[-1]) == text.count("] done in"), text
    return text


@pytest.mark.slow
def test_sigint_and_sigterm_to_the_driver_pid_stop_every_time_and_the_rerun_equals_an_uninterrupted_run(
        tiny_root: Path, tmp_path: Path, clean_store: pl.DataFrame) -> None:
    """Six signals at different moments into one store (each re-run continues it), SIGINT and SIGTERM taking
    turns so that each meets tuning and final runs, a trial's end and its middle, and a second signal; then a
    run to the end: the store equals the uninterrupted run's."""
    from test_resume import assert_interrupted_store_is_short, comparable

    base, results = _base(tiny_root), tmp_path / "res"
    moments = [(signal.SIGINT, "tune", ENDED, 0.0, False), (signal.SIGTERM, "tune", RUNNING, 0.0, False),
               (signal.SIGINT, "any", ENDED, 0.7, True), (signal.SIGTERM, "any", ENDED, 0.7, True),
               (signal.SIGTERM, "final", RUNNING, 0.0, False), (signal.SIGINT, "final", ENDED, 0.0, False)]
    t0 = time.monotonic()
    for sig, phase, moment, delay, twice in moments:
        _signal_once(base, results, sig, phase, moment, delay, twice)
        assert_interrupted_store_is_short(results, trials=3, seeds=3)
    rerun = subprocess.run([*base, "--results", str(results)], env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert comparable(results).equals(clean_store)
    assert not read_store(results).select("trial_id", "row_kind", "epoch").is_duplicated().any()
    print(f"6 interrupted runs + the completing one in {time.monotonic() - t0:.0f} s")


def test_the_progress_line_counts_only_finished_cells_as_done(monkeypatch) -> None:
    """After a stop, "cells N done" counts the cells that finished, not those the stop interrupted."""
    from types import SimpleNamespace

    from study import progress
    from study.orchestration import driver
    from study.orchestration.cell import CellInterrupted

    said: list[str] = []
    control = progress.StudyControl("k", 3, 3, said.append)
    outcome = iter([None, CellInterrupted("stopped with 0 of 3 tuning trials completed"), RuntimeError("failed")])

    def fake_run_cell(*args, **kwargs) -> None:
        if (exc := next(outcome)) is not None:
            raise exc

    monkeypatch.setattr(driver, "run_cell", fake_run_cell)
    monkeypatch.setattr(driver, "cell_label", lambda *a: "label")
    import pyarrow as pa

    empty = pa.table({"cell_id": pa.array([], pa.string())})
    run = SimpleNamespace(cfg=None, control=control, echo=said.append, stored=empty, have_gpu=False, journal=None,
                          journal_file=None, failures=[])
    cell = (None, SimpleNamespace(name="s"), SimpleNamespace(names=["a"], n_total=1, content_hash="0" * 8), "c")
    for rank in range(3):
        driver.run_one_cell(run, rank, cell)
    assert (control.cells_done, control.cells_running) == (2, 0)  # the finished and the failed one, not the stopped
    assert said[-1].startswith("[study] cells 2 done / 0 running / 1 pending")


def test_wait_futures_wakes_for_a_signal_handled_in_the_main_thread() -> None:
    """The main thread's wait returns to Python every SIGNAL_POLL_S: a KeyboardInterrupt raised by a handler
    (as a process-directed SIGTERM delivered to another thread leaves it) is acted on within a second."""
    from concurrent.futures import ThreadPoolExecutor

    from study import progress

    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(release.wait, 30)
        with progress.StopSignals("hint"):
            timer = threading.Timer(0.3, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGTERM))
            timer.start()  # delivered to the timer's own thread, not the waiting main thread
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                progress.wait_futures([fut])
            took = time.monotonic() - t0
        release.set()
    assert took < 2.0
    assert signal.getsignal(signal.SIGTERM) is not None  # restored


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_study_features_stops_it_with_exit_130_and_the_hint(tiny_root: Path, tiny_backbone: Path,
                                                                       tmp_path: Path, sig: int) -> None:
    """``python -m study.features`` (its export made slow: chunks of work in the main thread, another thread
    waiting, as with its I/O thread): SIGTERM / SIGINT to
    its pid end it with exit 130 and the hint, not Python's default death by SIGTERM without one."""
    script = tmp_path / "run_features.py"
    script.write_text(
        "import sys, threading\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "import study.features.cli as cli\n"
        "def slow(*args, **kwargs):\n"
        "    print('exporting', flush=True)\n"
        "    t = threading.Thread(target=threading.Event().wait, args=(60,), daemon=True); t.start()\n"
        "    for _ in range(600):\n"
        "        sum(range(20000)); t.join(0.1)\n"
        "cli.export_split = slow\n"
        f"sys.exit(cli.main(['--backbone', {str(tiny_backbone)!r}, '--data', {str(tiny_root)!r}, '--dataset', "
        f"'hyko2', '--out', {str(tmp_path / 'out')!r}, '--splits', 'train', '--quiet']))\n")
    proc = subprocess.Popen([sys.executable, str(script)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "exporting"
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and time.monotonic() - t0 < 10, out + err
    assert "run the same command again to continue" in err and "Traceback" not in err, err


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_nothing_of_a_sigkilled_driver_outlives_it(tiny_root: Path, tmp_path: Path) -> None:
    """SIGKILL of the driver's pid alone during tuning: Ray's processes, the raylet's agents (DashboardAgent,
    RuntimeEnvAgent) and its workers all end within seconds (the orphan reaper of ``init_ray``)."""
    from study.progress import descendants

    proc = subprocess.Popen([*_base(tiny_root), "--results", str(tmp_path / "res")], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not any(re.search(RUNNING, ln) for ln in lines):
        time.sleep(0.1)
    assert proc.poll() is None, "".join(lines)
    tree = descendants(proc.pid)
    assert len(tree) >= 4, tree  # gcs, raylet, agents, workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    end = time.time() + 30
    while time.time() < end and any(_running(p) for p in tree):
        time.sleep(0.5)
    left = [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in tree if _running(p)]
    for p in tree:  # never leave them behind for the next test
        if _running(p):
            os.kill(p, signal.SIGKILL)
    assert not left, left
