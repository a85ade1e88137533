"""Faults and bad input at the study level: recorded, reported, never a traceback or a lost study."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from optuna.distributions import FloatDistribution

import search_spaces.indomain as indomain_space
from study.run import main
from study.store import SCHEMA_VERSION, read_store

ARGS = ["--strategy", "indomain", "--dataset", "hyko2", "--width", "tiny", "--fractions", "0.5,1.0",
        "--trials", "2", "--epochs", "2", "--grace-period", "1", "--seeds", "1", "--max-failures", "1"]


def test_failing_trials_are_retried_recorded_and_the_study_goes_on(ray_session, tiny_root, tmp_path, monkeypatch,
                                                                    capsys) -> None:
    # a learning rate so large that the loss overflows: every trial raises FloatingPointError
    monkeypatch.setattr(indomain_space, "SPACE", {**indomain_space.SPACE, "lr": FloatDistribution(1e25, 1e30)})
    results = tmp_path / "res"
    rc = main([*ARGS, "--data-root", str(tiny_root), "--results", str(results)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "failed cells:" in captured.err and captured.err.count("every tuning trial failed") == 2  # both cells tried
    trials = read_store(results).filter(pl.col("row_kind") == "trial")
    assert trials.height == 4 and (trials["status"] == "error").all()
    assert all("loss became" in e for e in trials["error"].to_list())
    assert "FAILED" in captured.out


def test_corrupt_data_file_is_one_line_before_ray_starts(tiny_root, tmp_path, capsys) -> None:
    bad = tmp_path / "data"
    bad.mkdir()
    for f in tiny_root.glob("*.h5"):
        data = f.read_bytes()
        (bad / f.name).write_bytes(data[: len(data) // 2] if "train" in f.name else data)
    rc = main([*ARGS, "--data-root", str(bad), "--results", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert rc == 2 and "hyko2_train.h5" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "res" / "rows").exists()


def test_results_dir_of_another_schema_version_is_refused(tiny_root, tmp_path, capsys) -> None:
    results = tmp_path / "res"
    results.mkdir()
    (results / "study.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    rc = main([*ARGS, "--data-root", str(tiny_root), "--results", str(results)])
    err = capsys.readouterr().err
    assert rc == 2 and f"schema v{SCHEMA_VERSION + 1}" in err
    assert json.loads((results / "study.json").read_text())["schema_version"] == SCHEMA_VERSION + 1  # untouched
    assert not Path(results / "manifests").exists()
