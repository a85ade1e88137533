"""A real Ray Tune + OptunaSearch + ASHA smoke study, end to end, through the CLI entry point."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import polars as pl
import pyarrow.parquet as pq

from study.run import main
from study.store import RESULT_SCHEMA, part_files, read_store

ARGS = ["--strategy", "indomain", "--dataset", "hyko2", "--width", "tiny", "--fractions", "0.5,1.0",
        "--trials", "3", "--epochs", "3", "--grace-period", "1", "--seeds", "2", "--max-concurrent", "2"]


def test_smoke_study_writes_a_store_that_matches_the_schema(ray_session, tiny_root: Path, tmp_path: Path,
                                                            capsys) -> None:
    results = tmp_path / "res"
    rc = main([*ARGS, "--data-root", str(tiny_root), "--results", str(results)])
    out = capsys.readouterr().out
    assert rc == 0, out
    parts = part_files(results)
    assert parts and all(pq.read_table(p).schema.remove_metadata() == RESULT_SCHEMA for p in parts)
    df = read_store(results)

    trials = df.filter(pl.col("row_kind") == "trial")
    finals = df.filter(pl.col("row_kind") == "final")
    epochs = df.filter(pl.col("row_kind") == "epoch")
    assert trials.group_by("train_fraction").len().sort("train_fraction")["len"].to_list() == [3, 3]
    assert finals.group_by("train_fraction").len()["len"].to_list() == [2, 2]
    assert set(trials["status"]) <= {"completed", "stopped_early"}
    # every trial reported every epoch it ran (ASHA can only stop trials that report)
    for _tid, group in epochs.group_by("trial_id"):
        assert sorted(group["epoch"].to_list()) == list(range(1, group.height + 1))
    # test metrics only in final rows; finals share the subset of their fraction with the tuning rows
    assert df.filter(pl.col("row_kind") != "final")["test_miou"].null_count() == df.height - finals.height
    assert finals["test_miou"].is_between(0, 1).all() and finals["seed"].sort().to_list() == [0, 0, 1, 1]
    for _frac, group in df.group_by("train_fraction"):
        assert group["subset_hash"].n_unique() == 1
    assert (df["n_train_images"] >= 1).all() and (df["data_source"] == str(tiny_root.resolve())).all()
    # the final runs re-train the chosen configuration
    for frac in (0.5, 1.0):
        cell = trials.filter(pl.col("train_fraction") == frac)
        best_lrs = cell.filter(pl.col("val_miou") == cell["val_miou"].max())["lr"].to_list()  # ties possible
        chosen = finals.filter(pl.col("train_fraction") == frac)["lr"].unique().to_list()
        assert len(chosen) == 1 and chosen[0] in best_lrs
    assert "test mIoU" in out and "indomain" in out
    # auto on a CPU: the tiny splits are held in one shared host copy, said once per cell phase, swept at the end
    assert set(df["data_placement"]) == {"memory"} and "data placement memory: the splits" in out
    assert "data placement: auto (" in out and not list(Path(os.environ["HSISTUDY_SHM_DIR"]).glob("*.bin"))

    # Optuna has one study per cell in the journal, trials pruned or complete, none running
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(results / "optuna.journal")))
    studies = optuna.get_all_study_summaries(storage)
    assert len(studies) == 2 and all(s.n_trials == 3 for s in studies)
    states = [t.state for s in studies for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
    pruned = states.count(optuna.trial.TrialState.PRUNED)
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert pruned == trials.filter(pl.col("status") == "stopped_early").height  # ASHA stops are PRUNED in Optuna

    # re-running the same command finds every cell finished and adds no rows
    rc = main([*ARGS, "--data-root", str(tiny_root), "--results", str(results)])
    assert rc == 0 and read_store(results).height == df.height
    assert "already finished" in capsys.readouterr().out


def test_cells_run_at_once_and_rows_say_when(ray_session, tiny_root: Path, tmp_path: Path, capsys) -> None:
    """Two cells, one trial slot each on a 2-CPU Ray: their trials overlap in time (started_at/ended_at)."""
    results = tmp_path / "res"
    rc = main(["--strategy", "indomain,indomain-fc", "--dataset", "hyko2", "--width", "tiny", "--fractions", "1.0",
               "--trials", "2", "--epochs", "2", "--grace-period", "1", "--seeds", "1", "--max-concurrent", "1",
               "--data-root", str(tiny_root), "--results", str(results)])
    out = capsys.readouterr().out
    assert rc == 0, out
    runs = read_store(results).filter(pl.col("row_kind").is_in(["trial", "final"]))
    assert runs["started_at"].null_count() == 0 and (runs["ended_at"] >= runs["started_at"]).all()
    by_cell = {c: g for (c,), g in runs.group_by("cell_id")}
    assert len(by_cell) == 2
    a, b = by_cell.values()
    overlap = a.join(b, how="cross").filter((pl.col("started_at") < pl.col("ended_at_right"))
                                            & (pl.col("started_at_right") < pl.col("ended_at")))
    assert overlap.height > 0, "the two cells ran one after the other"
    assert "[study] cells" in out and "0 pending" in out  # the study-wide progress line


def test_max_concurrent_cells_1_runs_cells_one_after_another(ray_session, tiny_root: Path, tmp_path: Path,
                                                             capsys) -> None:
    results = tmp_path / "res"
    rc = main(["--strategy", "indomain,indomain-fc", "--dataset", "hyko2", "--width", "tiny", "--fractions", "1.0",
               "--trials", "2", "--epochs", "2", "--grace-period", "1", "--seeds", "1", "--max-concurrent", "1",
               "--max-concurrent-cells", "1", "--data-root", str(tiny_root), "--results", str(results)])
    assert rc == 0, capsys.readouterr().out
    runs = read_store(results).filter(pl.col("row_kind").is_in(["trial", "final"]))
    spans = runs.group_by("cell_id").agg(pl.col("started_at").min(), pl.col("ended_at").max()).sort("started_at")
    assert spans.height == 2 and spans["ended_at"][0] <= spans["started_at"][1]  # no overlap
