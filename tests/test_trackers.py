"""--log-to: a smoke study's trials read back from MLflow's client and TensorBoard's event files."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import polars as pl
import pytest

from study import progress
from study.run import main
from study.store import read_store

TAGS = ("study_id", "cell_id", "dataset", "strategy", "fraction", "phase", "trial_id")


def _tb_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of one TensorBoard event file (TFRecord framing + tensorboardX's Event proto; no TensorFlow)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    data, pos = path.read_bytes(), 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                    reason="mlflow is not installed (pip install 'hsistudy[mlflow]')")
def test_mlflow_and_tensorboard_get_every_trial_and_epoch(ray_session, tiny_root: Path, tmp_path: Path,
                                                          capsys, monkeypatch) -> None:
    from mlflow import MlflowClient

    from study.orchestration import experiment_name, mlflow_uri

    monkeypatch.setattr(progress, "LIVE_EVERY_S", 0.0)  # every epoch gets its live line
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    wandb = importlib.util.find_spec("wandb") is not None
    results = tmp_path / "res"
    trackers = "mlflow,tensorboard" + (",wandb" if wandb else "")
    argv = ["--strategy", "indomain", "--smoke", "--width", "tiny", "--fractions", "1.0", "--trials", "2",
            "--epochs", "2", "--seeds", "1", "--data-root", str(tiny_root), "--results", str(results),
            "--log-to", trackers]
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    df = read_store(results)
    epochs = df.filter(pl.col("row_kind") == "epoch")
    runs = df.filter(pl.col("row_kind").is_in(["trial", "final"]))
    assert runs.height == 3
    # live progress: a line per reported epoch (throttle 0 here), mIoU in %
    assert "epoch 1/2: val mIoU" in out and " %" in out.split("epoch 1/2: val mIoU", 1)[1].splitlines()[0]

    # MLflow: one run per trial, tagged; val_miou per epoch at step = epoch
    client = MlflowClient(mlflow_uri(results))
    from study.run import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(argv))
    exp = client.get_experiment_by_name(experiment_name(cfg))
    assert exp is not None and exp.artifact_location.startswith((results / "mlartifacts").resolve().as_uri())
    mruns = client.search_runs([exp.experiment_id])
    assert len(mruns) == 3
    by_trial = {r.data.tags["trial_id"]: r for r in mruns}
    assert set(by_trial) == set(runs["trial_id"])
    for row in runs.iter_rows(named=True):
        run = by_trial[row["trial_id"]]
        assert all(k in run.data.tags for k in TAGS)
        assert run.data.tags["cell_id"] == row["cell_id"] and run.data.tags["study_id"] == row["study_id"]
        assert run.data.tags["phase"] == ("final" if row["row_kind"] == "final" else "tune")
        assert run.data.tags["strategy"] == "indomain" and float(run.data.tags["fraction"]) == 1.0
        history = client.get_metric_history(run.info.run_id, "val_miou")
        mine = epochs.filter(pl.col("trial_id") == row["trial_id"]).sort("epoch")
        logged = {m.step: m.value for m in history}  # a trainable's return value may repeat its last epoch
        assert sorted(logged) == mine["epoch"].to_list()
        assert [logged[e] for e in sorted(logged)] == pytest.approx(mine["val_miou"].to_list())

    # TensorBoard: one event file per trial under <results>/tune, val_miou at every epoch
    files = sorted((results / "tune").rglob("events.out.tfevents*"))
    assert len(files) == 3, files
    curves = [_tb_scalars(f) for f in files]
    assert all(sorted({s for s, _ in c["ray/tune/val_miou"]}) == [1, 2] for c in curves)

    if wandb:  # W&B offline: one run folder per trial, nothing uploaded
        assert len(list((results / "wandb").glob("offline-run-*"))) == 3


def test_a_missing_tracker_package_is_one_line_naming_the_extra(monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert main(["--smoke", "--log-to", "tensorboard,mlflow"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'hsistudy[mlflow]'" in err and err.count("\n") == 1
    assert main(["--smoke", "--log-to", "comet"]) == 2
    assert "unknown tracker 'comet'" in capsys.readouterr().err
