"""The Optuna journal as optuna-dashboard reads it: named objective, per-epoch intermediates, links to the store."""

from __future__ import annotations

from pathlib import Path

import optuna
import polars as pl

from study.run import main
from study.store import read_store


def test_every_reported_epoch_is_an_intermediate_value(ray_session, tiny_root: Path, tmp_path: Path, capsys) -> None:
    results = tmp_path / "res"
    rc = main(["--strategy", "indomain", "--width", "tiny", "--fractions", "1.0", "--trials", "4", "--epochs", "3",
               "--grace-period", "1", "--seeds", "1", "--max-concurrent", "1", "--data-root", str(tiny_root),
               "--results", str(results)])
    assert rc == 0, capsys.readouterr().out
    df = read_store(results)
    epochs = df.filter(pl.col("row_kind") == "epoch")
    trials = df.filter(pl.col("row_kind") == "trial")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(results / "optuna.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert study.metric_names == ["val_miou"]
    assert len(study.trials) == trials.height == 4
    for t in study.trials:
        assert t.user_attrs["phase"] == "tune" and t.user_attrs["cell_id"] == trials["cell_id"][0]
        row = trials.filter(pl.col("trial_id") == t.user_attrs["trial_id"])  # the store's trial id
        assert row.height == 1 and t.user_attrs["trial_id"].endswith(t.user_attrs["tune_trial_id"])
        mine = epochs.filter(pl.col("trial_id") == t.user_attrs["trial_id"]).sort("epoch")
        assert sorted(t.intermediate_values) == mine["epoch"].to_list()  # pruned trials too
        assert [t.intermediate_values[e] for e in sorted(t.intermediate_values)] == mine["val_miou"].to_list()
        pruned = t.state == optuna.trial.TrialState.PRUNED
        assert pruned == (row["status"][0] == "stopped_early")


def test_a_pruned_trial_keeps_its_learning_curve(tmp_path: Path) -> None:
    """ASHA's stop is told as PRUNED, after every epoch it reported became an intermediate value."""
    from optuna.distributions import FloatDistribution

    from study.search import METRIC, ASHAAwareOptunaSearch

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    search = ASHAAwareOptunaSearch(space={"lr": FloatDistribution(1e-4, 1e-2, log=True)}, metric=METRIC, mode="max",
                                   seed=0, storage=storage, study_name="c-tune",
                                   user_attrs={"cell_id": "c", "phase": "tune"})
    assert "lr" in search.suggest("t1")
    for epoch, v in ((1, 0.2), (2, 0.3), (2, 0.3)):  # a retried epoch is reported once
        search.on_trial_result("t1", {"epoch": epoch, "val_miou": v, METRIC: v, "is_last": False})
    search.on_trial_complete("t1", {"epoch": 3, "val_miou": 0.25, METRIC: 0.3, "is_last": False})
    (t,) = optuna.load_study(study_name="c-tune", storage=storage).trials
    assert t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values == {1: 0.2, 2: 0.3, 3: 0.25}
    assert t.user_attrs == {"cell_id": "c", "phase": "tune", "trial_id": "c-tune-t1", "tune_trial_id": "t1"}
