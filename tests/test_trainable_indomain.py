"""Contract of the indomain trainable, called as a plain function (no Ray needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from trainable_helpers import Recorder, tiny_hyko2_bundle

from search_spaces.indomain import SPACE
from study.data.specs import get_spec
from trainables.indomain import train_indomain

CONFIG = dict(lr=3e-3, weight_decay=1e-4, dropout=0.1, max_epochs=3, batch_size=2, width="tiny", seed=0,
              final=True, patience=None, num_threads=1)


@pytest.fixture(scope="module")
def bundle(tiny_root: Path):
    return tiny_hyko2_bundle(tiny_root)


def test_reports_every_epoch_with_finite_validation_metrics(bundle) -> None:
    rec = Recorder()
    train_indomain(dict(CONFIG), bundle, report=rec, get_checkpoint=lambda: None)
    assert [m["epoch"] for m in rec.metrics] == [1, 2, 3]
    for m in rec.metrics:
        assert 0.0 <= m["val_miou"] <= 1.0 and math.isfinite(m["train_loss"])
        assert len(m["val_iou_per_class"]) == get_spec("hyko2").n_classes
    # test is evaluated once, at the end of the final phase, never during tuning epochs
    assert [("test_miou" in m) for m in rec.metrics] == [False, False, True]
    assert rec.metrics[-1]["is_last"] and 0.0 <= rec.metrics[-1]["test_miou"] <= 1.0


def test_tuning_phase_never_touches_test(bundle) -> None:
    rec = Recorder()
    train_indomain({**CONFIG, "final": False}, bundle, report=rec, get_checkpoint=lambda: None)
    assert not any(k.startswith("test_") for m in rec.metrics for k in m)


def test_search_space_keys_are_used_by_the_trainable(bundle) -> None:
    rec = Recorder()
    cfg = {**CONFIG, "max_epochs": 1, "lr": 1e-3, "weight_decay": 0.05, "dropout": 0.5}
    train_indomain(cfg, bundle, report=rec, get_checkpoint=lambda: None)
    assert set(SPACE) <= set(cfg)
    rec2 = Recorder()
    train_indomain({**cfg, "lr": 1e-2}, bundle, report=rec2, get_checkpoint=lambda: None)
    assert rec.metrics[0]["train_loss"] != rec2.metrics[0]["train_loss"]  # lr actually reaches the optimizer


def test_deterministic_under_a_seed_and_resumes_from_a_checkpoint(bundle, tmp_path) -> None:
    from ray import tune

    full = Recorder(keep=tmp_path)
    train_indomain(dict(CONFIG), bundle, report=full, get_checkpoint=lambda: None)
    again = Recorder()
    train_indomain(dict(CONFIG), bundle, report=again, get_checkpoint=lambda: None)
    assert [m["val_miou"] for m in again.metrics] == [m["val_miou"] for m in full.metrics]

    resumed = Recorder()
    ckpt = tune.Checkpoint.from_directory(str(tmp_path / "epoch2"))
    train_indomain(dict(CONFIG), bundle, report=resumed, get_checkpoint=lambda: ckpt)
    assert [m["epoch"] for m in resumed.metrics] == [3]
    assert resumed.metrics[0]["val_miou"] == pytest.approx(full.metrics[-1]["val_miou"])
    assert resumed.metrics[0]["test_miou"] == pytest.approx(full.metrics[-1]["test_miou"])


def test_nan_loss_raises_so_ray_can_retry_or_record_the_failure(bundle) -> None:
    with pytest.raises(FloatingPointError, match="loss"):
        train_indomain({**CONFIG, "lr": 1e30}, bundle, report=Recorder(), get_checkpoint=lambda: None)
