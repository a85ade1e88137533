"""Contract of the per-pixel trainables (crossdomain-fc, indomain-fc), called as plain functions (no Ray)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from trainable_helpers import run

from search_spaces.crossdomain import SPACE as CROSSDOMAIN_SPACE
from search_spaces.crossdomain_fc import SPACE as CROSSDOMAIN_FC_SPACE
from search_spaces.indomain_fc import SPACE as INDOMAIN_FC_SPACE
from study.data.bundle import DataBundle, Split, SplitArrays, make_bundle, materialize
from study.data.datasets import validate_dataset
from study.data.specs import get_spec
from study.data.subsets import SubsetManifest, make_subset
from study.models.heads import PixelFC
from study.train.pixel_loop import default_images_per_batch, regroup, trains
from trainables.crossdomain_fc import train_crossdomain_fc
from trainables.indomain import train_indomain
from trainables.indomain_fc import train_indomain_fc

CONFIG = dict(lr=1e-2, weight_decay=1e-4, max_epochs=3, batch_size=16, seed=0, final=True, patience=None,
              num_threads=1, sub_batch=512)
ARMS = [(train_crossdomain_fc, "feature_bundle", CROSSDOMAIN_FC_SPACE),
        (train_indomain_fc, "bundle", INDOMAIN_FC_SPACE)]
IDS = ["crossdomain-fc", "indomain-fc"]
IGNORE = get_spec("hyko2").ignore_index


@dataclass(frozen=True)
class FeatureBundle(DataBundle):
    """What the driver builds from the feature cache: features as images, plus the backbone's hash."""

    backbone_hash: str = "cafe0123"


@pytest.fixture(scope="module")
def bundle(tiny_root: Path) -> DataBundle:
    spec = get_spec("hyko2")
    splits = validate_dataset(tiny_root, spec)
    subset = make_subset("hyko2", splits["train"].names, splits["train"].classes_present(), 1.0, 0)
    return make_bundle(spec, splits, subset, "synthetic:test")


@pytest.fixture(scope="module")
def feature_bundle(bundle: DataBundle) -> FeatureBundle:
    """Stand-in HyperSL features: a fixed random projection of the spectra to D = 16, stored as float16."""
    proj = np.random.default_rng(1).normal(size=(bundle.n_bands, 16)).astype(np.float32)

    def feats(split: Split) -> SplitArrays:
        s = materialize(split)
        return replace(s, images=np.tanh(s.images @ proj).astype(np.float16))

    return FeatureBundle(dataset=bundle.dataset, train=feats(bundle.train), val=feats(bundle.val),
                         test=feats(bundle.test), wavelengths=bundle.wavelengths, subset=bundle.subset,
                         source="features:test")


def synthetic_bundle(n_train: int, ignored_images: tuple[int, ...], nan: bool = False) -> DataBundle:
    """8×16-pixel images, 3 bands; ``ignored_images`` are entirely ignore-labelled (one partly)."""
    rng = np.random.default_rng(0)

    def split(n: int, ignored: tuple[int, ...] = ()) -> SplitArrays:
        labels = rng.integers(1, 4, size=(n, 8, 16)).astype(np.int64)
        labels[0, 0, :5] = IGNORE  # partly ignored sub-batches still train
        labels[list(ignored)] = IGNORE
        images = (rng.normal(size=(n, 8, 16, 3)) + labels[..., None]).astype(np.float32)
        if nan:
            images[0, 2, 3, 1] = np.nan
        return SplitArrays(images=images, labels=labels, names=tuple(f"s{i}" for i in range(n)))

    subset = SubsetManifest(dataset="hyko2", fraction=1.0, subset_seed=0, names=tuple(f"s{i}" for i in range(n_train)),
                            n_total=n_train, content_hash="0", classes_covered=(1, 2, 3))
    return DataBundle(dataset="hyko2", train=split(n_train, ignored_images), val=split(2), test=split(2),
                      wavelengths=np.array([500.0, 550.0, 600.0], dtype=np.float32), subset=subset, source="synthetic")


def optimizer_steps(checkpoint_dir: Path) -> int:
    state = torch.load(checkpoint_dir / "state.pt", map_location="cpu", weights_only=True)
    return int(float(state["optimizer"]["state"][0]["step"]))


@pytest.mark.parametrize(("trainable", "data_name", "space"), ARMS, ids=IDS)
def test_reports_every_epoch_with_the_indomain_key_set(trainable, data_name, space, bundle, request) -> None:
    data = request.getfixturevalue(data_name)
    rec = run(trainable, CONFIG, data)
    assert [m["epoch"] for m in rec.metrics] == [1, 2, 3]
    for m in rec.metrics:
        assert 0.0 <= m["val_miou"] <= 1.0 and math.isfinite(m["train_loss"]) and math.isfinite(m["val_oa"])
        assert len(m["val_iou_per_class"]) == get_spec("hyko2").n_classes
    # test is evaluated once, at the end of the final phase, never during tuning epochs
    assert [("test_miou" in m) for m in rec.metrics] == [False, False, True]
    assert rec.metrics[-1]["is_last"] and 0.0 <= rec.metrics[-1]["test_miou"] <= 1.0

    ref = run(train_indomain, {**CONFIG, "max_epochs": 1, "width": "tiny", "batch_size": 2}, bundle).metrics[-1]
    # same keys as the segmentation loop, plus the backbone hash every per-pixel arm records
    assert set(rec.metrics[-1]) == set(ref) | {"backbone_hash"}
    assert all(set(m) == set(rec.metrics[0]) for m in rec.metrics[:-1])
    expected_hash = "cafe0123" if data_name == "feature_bundle" else None
    assert rec.metrics[0]["backbone_hash"] == expected_hash
    assert rec.metrics[0]["n_params"] == 2 * data.n_bands + (data.n_bands + 1) * get_spec("hyko2").n_classes

    tuning = run(trainable, {**CONFIG, "final": False}, data)
    assert not any(k.startswith("test_") for m in tuning.metrics for k in m)


@pytest.mark.parametrize(("trainable", "data_name", "space"), ARMS, ids=IDS)
def test_deterministic_under_a_seed_and_resumes_from_a_checkpoint(trainable, data_name, space, request,
                                                                  tmp_path) -> None:
    from ray import tune

    data = request.getfixturevalue(data_name)
    full = run(trainable, CONFIG, data, keep=tmp_path)
    again = run(trainable, CONFIG, data)
    assert [m["train_loss"] for m in again.metrics] == [m["train_loss"] for m in full.metrics]
    assert [m["val_miou"] for m in again.metrics] == [m["val_miou"] for m in full.metrics]
    other_seed = run(trainable, {**CONFIG, "seed": 1}, data)
    assert [m["train_loss"] for m in other_seed.metrics] != [m["train_loss"] for m in full.metrics]

    resumed = run(trainable, CONFIG, data, ckpt=tune.Checkpoint.from_directory(str(tmp_path / "epoch2")))
    assert [m["epoch"] for m in resumed.metrics] == [3]
    for key in ("train_loss", "val_miou", "best_val_miou", "test_miou", "test_oa"):
        assert resumed.metrics[0][key] == pytest.approx(full.metrics[-1][key])


@pytest.mark.parametrize(("sub_batch", "images_per_batch", "ignored", "per_epoch"), [
    (32, 2, (1, 3), 12),  # 3 labelled images x 4 sub-batches; the 8 all-ignore sub-batches are skipped
    (96, 2, (), 8),  # batches of 2, 2, 1 images: 256 -> 3 steps (one spans two images), 256 -> 3, 128 -> 2
    (96, None, (), 7),  # default loaded batch for hyko2 is 8 images: all 5 at once, 640 pixels -> 7 steps
])
def test_one_optimizer_step_per_trainable_sub_batch(sub_batch, images_per_batch, ignored, per_epoch,
                                                    tmp_path) -> None:
    data = synthetic_bundle(5, ignored)
    cfg = {**CONFIG, "max_epochs": 2, "sub_batch": sub_batch, "images_per_batch": images_per_batch}
    for trainable in (train_indomain_fc, train_crossdomain_fc):
        keep = tmp_path / trainable.__name__
        keep.mkdir()
        rec = run(trainable, cfg, data, keep=keep)
        assert math.isfinite(rec.metrics[-1]["train_loss"])
        assert optimizer_steps(keep / "epoch1") == per_epoch
        assert optimizer_steps(keep / "epoch2") == 2 * per_epoch


def test_trainable_sub_batches_skip_all_ignore_and_single_pixels() -> None:
    labels = np.array([IGNORE] * 4 + [1, IGNORE, IGNORE, IGNORE] + [2] * 4 + [3])
    x, y = torch.arange(labels.size, dtype=torch.float32)[:, None], torch.from_numpy(labels)
    # streamed as two images of one loaded batch: the steps are those of the concatenated batch
    pieces = [((x[:6], y[:6], labels[:6]), False), ((x[6:], y[6:], labels[6:]), True)]
    chunks = list(regroup(pieces, 4))
    assert [c[0][0, 0].item() for c in chunks] == [0, 4, 8, 12] and [len(c[2]) for c in chunks] == [4, 4, 4, 1]
    # 0: all ignored, 12: one pixel cannot be batch-normed
    assert [int(c[0][0, 0]) for c in chunks if trains(c[2], IGNORE)] == [4, 8]
    assert default_images_per_batch(get_spec("hyko2")) == 8
    assert default_images_per_batch(get_spec("hsidrive")) == 32
    assert default_images_per_batch(get_spec("hcv2")) == 4


@pytest.mark.parametrize(("trainable", "data_name", "space"), ARMS, ids=IDS)
def test_every_search_space_key_changes_the_result(trainable, data_name, space, request) -> None:
    data = request.getfixturevalue(data_name)
    base = {**CONFIG, "max_epochs": 1, "lr": 1e-2, "weight_decay": 1e-4, "sub_batch": 256}
    head_keys = set(space) - {"freeze_depth", "backbone_lr"}  # the backbone's: tests/test_freeze_depth.py
    assert head_keys == {"lr", "weight_decay"} and head_keys <= set(base)
    ref = run(trainable, base, data).metrics[0]["train_loss"]
    for key, value in (("lr", 1e-3), ("weight_decay", 0.5)):
        assert run(trainable, {**base, key: value}, data).metrics[0]["train_loss"] != ref, key
    assert space["lr"].log and space["lr"].low < space["lr"].high
    decays = space["weight_decay"].choices  # a decade grid that includes the recipes' 0
    assert 0.0 in decays and max(decays) / min(d for d in decays if d > 0) >= 1e4


def test_batchnorm_is_configurable_and_search_spaces_bracket_the_paper() -> None:
    data = synthetic_bundle(3, ())
    cfg = {**CONFIG, "max_epochs": 1}
    plain = run(train_indomain_fc, {**cfg, "batchnorm": False}, data).metrics[0]
    with_bn = run(train_indomain_fc, cfg, data).metrics[0]
    assert (plain["model_name"], with_bn["model_name"]) == ("fc", "fc-bn")
    assert plain["n_params"] == 4 * 11 and with_bn["n_params"] == 4 * 11 + 6  # Linear(3, 11) (+ BN affine)
    assert PixelFC(256, 11)(torch.randn(5, 256)).shape == (5, 11)
    assert CROSSDOMAIN_FC_SPACE["lr"].low <= 1e-4 <= CROSSDOMAIN_FC_SPACE["lr"].high  # HyperSL-FC: 1e-4
    assert INDOMAIN_FC_SPACE["lr"].low <= 1e-3 <= INDOMAIN_FC_SPACE["lr"].high  # paper's fc: 1e-3
    # HyperSL-RU-Net: the RU-Net recipe, plus the backbone's freeze depth and lr
    assert set(CROSSDOMAIN_SPACE) == {"lr", "weight_decay", "dropout", "freeze_depth", "backbone_lr"}
    assert CROSSDOMAIN_SPACE["lr"].low <= 1e-3 <= CROSSDOMAIN_SPACE["lr"].high


@pytest.mark.parametrize("trainable", [train_crossdomain_fc, train_indomain_fc], ids=IDS)
def test_nan_loss_raises_so_ray_can_retry_or_record_the_failure(trainable) -> None:
    with pytest.raises(FloatingPointError, match="loss"):
        run(trainable, {**CONFIG, "sub_batch": 64}, synthetic_bundle(3, (), nan=True))
