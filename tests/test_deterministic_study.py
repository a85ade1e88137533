"""--deterministic end to end: the same command gives the same trials and the same final test mIoU, whatever
the machine's load and however many cells run at once (issue 27's "done means")."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from study.store import read_store

COMMAND = ["--strategy", "indomain,indomain-fc", "--smoke", "--trials", "6", "--epochs", "6", "--grace-period", "1",
           "--reduction-factor", "2", "--deterministic"]


def _spin() -> None:  # pragma: no cover - runs in the hog processes
    while True:
        pass


def outcome(results: Path) -> dict[str, pl.DataFrame]:
    """What must not change: every trial's configuration and per-epoch val mIoU (so the epochs it ran), its
    status, and every final run's test mIoU (Tune's trial ids and timings may differ)."""
    df = read_store(results)
    epochs = (df.filter(pl.col("row_kind") == "epoch")
              .select("cell_id", "phase", "config_json", "epoch", "val_miou", "train_loss")
              .sort("cell_id", "phase", "config_json", "epoch"))
    trials = (df.filter(pl.col("row_kind").is_in(["trial", "final"]))
              .select("cell_id", "phase", "config_json", "status", "protocol", "test_miou")
              .sort("cell_id", "phase", "config_json"))
    return {"epochs": epochs, "trials": trials}


@pytest.mark.soak  # minutes to tens of minutes on 2 cores: not in CI; python -m pytest -m soak
def test_same_command_same_trials_on_an_idle_and_a_loaded_machine(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "study.run", *COMMAND, "--cache-dir", str(tmp_path / "cache")]

    t0 = time.perf_counter()
    first = subprocess.run([*base, "--results", str(tmp_path / "a")], env=env, capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "deterministic (proposals in waves of" in first.stdout

    hogs = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
            for _ in range(os.cpu_count() or 2)]
    for hog in hogs:
        hog.start()
    try:
        second = subprocess.run([*base, "--max-concurrent-cells", "1", "--results", str(tmp_path / "b")], env=env,
                                capture_output=True, text=True, timeout=2400)
    finally:
        for hog in hogs:
            hog.kill()
            hog.join(timeout=10)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    print(f"two runs: {time.perf_counter() - t0:.0f} s")

    a, b = outcome(tmp_path / "a"), outcome(tmp_path / "b")
    assert a["trials"].height == 4 * (6 + 1)  # 2 strategies x 2 fractions x (6 trials + 1 final seed)
    assert a["trials"]["status"].to_list().count("stopped_early") > 0  # ASHA decided something
    for what in ("epochs", "trials"):
        assert a[what].equals(b[what]), f"{what} differ:\n{a[what]}\n{b[what]}"
