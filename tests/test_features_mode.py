"""``--features cache|compute|auto``: k = 0 features computed in the trial equal the cached ones, the head
trains the same on both, the cost model picks the cache on CPUs, and a compute study writes no feature file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from trainable_helpers import CHUNK, backbone_config, feature_bundle, run, tiny_hyko2_bundle

from study.config import build_config
from study.data.bundle import DataBundle, Split, SplitArrays, materialize
from study.data.specs import get_spec
from study.errors import ConfigError
from study.features import FeatureCost, choose_features, export_image, flop_rate, forward_flops, gpu_peaks
from study.models.checkpoints import load_hypersl
from study.models.hypersl import build_hypersl
from study.train.raw_spectra import build_backbone
from trainables.crossdomain import train_crossdomain
from trainables.crossdomain_fc import train_crossdomain_fc

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FC = dict(lr=1e-2, weight_decay=1e-4, max_epochs=3, batch_size=2, seed=0, final=True, patience=None,
          num_threads=1, sub_batch=256, freeze_depth=0)
RUNET = {**FC, "width": "tiny", "dropout": 0.25, "hflip_p": 0.5}  # flips drawn: they must move chunk ids too
#: the real data sets' training + validation images (docs/reference: benchmark.md; HCV2 at half size, new split)
REAL = {"hyko2": (81 + 32, 254, 510), "hsidrive": (451 + 150, 216, 409), "hcv2": (949 + 105, 711, 944)}


def _small(bundle: DataBundle) -> DataBundle:
    """Fewer, smaller images (per-pixel transformers are slow)."""

    def small(split: Split, n: int) -> SplitArrays:
        s = materialize(split)
        return SplitArrays(images=s.images[:n, :16, :24], labels=s.labels[:n, :16, :24], names=s.names[:n])

    return replace(bundle, train=small(bundle.train, 4), val=small(bundle.val, 2), test=small(bundle.test, 2))


@pytest.fixture(scope="module")
def data(tiny_root: Path, tiny_backbone: Path) -> DataBundle:
    """The tiny HyKo2 data, smaller still, with its float16 feature export (the default storage)."""
    return feature_bundle(_small(tiny_hyko2_bundle(tiny_root)), tiny_backbone)


@pytest.fixture(scope="module")
def data32(data: DataBundle, tiny_backbone: Path) -> DataBundle:
    """The same with a float32 export (``--feature-dtype float32``, the paper's)."""
    assert data.raw is not None
    return feature_bundle(data.raw, tiny_backbone, dtype="float32")


def computing(data: DataBundle) -> DataBundle:
    """What the driver hands a compute cell: the raw spectra as both the bundle and its ``raw``."""
    assert data.raw is not None
    return replace(data.raw, backbone_hash=data.backbone_hash, raw=data.raw)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_computed_features_equal_the_export_within_rounding(data, tiny_backbone, dtype) -> None:
    config = {"freeze_depth": 0, **backbone_config(tiny_backbone)}
    backbone, chunked = build_backbone(config, computing(data))
    backbone.store_dtype = getattr(torch, dtype)
    model = load_hypersl(tiny_backbone)
    for split, raw in ((chunked.train, data.raw.train), (chunked.val, data.raw.val)):
        x, _ = split.batch(np.arange(len(split)))
        pixels = torch.from_numpy(x.reshape(-1, x.shape[-1]))
        with torch.inference_mode():
            z = backbone(pixels[:, :-1], pixels[:, -1].long()).numpy()
        export = np.stack([export_image(model, im, data.wavelengths, chunk_size=CHUNK, dtype=dtype)
                           for im in materialize(raw).images]).reshape(z.shape).astype(np.float32)
        if dtype == "float32":
            np.testing.assert_allclose(z, export, rtol=1e-5, atol=1e-5)
        else:  # both rounded to float16: equal, but where the fp32 results straddle a float16 rounding boundary
            ulp = np.spacing(np.abs(export).astype(np.float16)).astype(np.float32)
            assert np.all(np.abs(z - export) <= ulp + 1e-5)
            assert np.mean(z != export) < 0.01  # 0.2 % here


@pytest.mark.parametrize(("trainable", "config"), [(train_crossdomain_fc, FC), (train_crossdomain, RUNET)],
                         ids=["crossdomain-fc", "crossdomain"])
def test_head_trains_the_same_on_computed_and_cached_features(data32, tiny_backbone, trainable, config) -> None:
    """Same batches, flips, dropout and initial head: per-epoch losses and metrics agree within fp32 rounding."""
    bb = backbone_config(tiny_backbone)
    cached = run(trainable, {**config, **bb}, data32).metrics
    computed = run(trainable, {**config, **bb, "features": "compute", "feature_dtype": "float32"},
                   computing(data32)).metrics
    assert [m["epoch"] for m in computed] == [1, 2, 3]
    for a, b in zip(cached, computed, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)  # ~5e-6 here
        for key in ("val_miou", "val_oa"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key
        assert (a["n_params"], a["model_name"], a["backbone_hash"]) == (b["n_params"], b["model_name"],
                                                                       b["backbone_hash"])
    assert computed[-1]["test_miou"] == pytest.approx(cached[-1]["test_miou"], abs=1e-4)
    # the tolerance tells runs apart: another seed (other draws) is far outside it
    other = run(trainable, {**config, **bb, "features": "compute", "feature_dtype": "float32", "seed": 1,
                            "max_epochs": 1}, computing(data32)).metrics
    assert other[0]["train_loss"] != pytest.approx(cached[0]["train_loss"], rel=1e-3)


def test_float16_features_computed_in_the_trial_train_the_fc_head_as_the_cache_does(data, tiny_backbone) -> None:
    """Rounded to the cache's float16 they are its features but for ~0.2 % one float16 ulp off: HyperSL-FC's
    losses agree within 1e-6. (The tiny RU-Net amplifies those ulps over epochs: a float16 study agrees to float16
    rounding, not fp32's; docs/performance.md §12.)"""
    bb = backbone_config(tiny_backbone)
    cached = run(train_crossdomain_fc, {**FC, **bb}, data).metrics
    computed = run(train_crossdomain_fc, {**FC, **bb, "features": "compute", "feature_dtype": "float16"},
                   computing(data)).metrics
    for a, b in zip(cached, computed, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
        assert b["val_miou"] == pytest.approx(a["val_miou"], abs=1e-6)


def test_cost_model_picks_the_cache_on_a_cpu_and_says_why() -> None:
    for size in ("tiny", "cpu", "small"):
        model = build_hypersl(size)
        for name, (images, h, w) in REAL.items():
            spec = get_spec(name)
            flops = forward_flops(model, spec.wavelength_array())
            cost = FeatureCost(images * h * w, model.dim * 2, spec.n_bands * 4, flops, "cpu", flop_rate("cpu"))
            assert choose_features("auto", cost) == "cache", (size, name, cost.describe())
            assert cost.compute_s > 100 * cost.cache_s
    # a per-pixel count that scales: HyperSL-small on 128 bands is ~1.8 GFLOP per pixel (8 layers x 129 tokens)
    hcv2 = forward_flops(build_hypersl("small"), get_spec("hcv2").wavelength_array())
    assert 1.7e9 < hcv2 < 1.9e9
    cost = FeatureCost(10**6, 512, 60, 5e6, "NVIDIA H100 80GB HBM3", flop_rate("NVIDIA H100 80GB HBM3"))
    assert cost.cheaper == "compute" and choose_features("cache", cost) == "cache"  # a forced mode is kept
    assert "1 M px reads 0.512 GB" in cost.describe() and "26.8 TFLOP/s fp32 on NVIDIA H100" in cost.describe()
    assert gpu_peaks("NVIDIA H100 PCIe")[0] == "H100 PCIe" and gpu_peaks("some new GPU")[0] == "A10G"
    assert choose_features("auto", None) == "cache"
    with pytest.raises(ValueError, match="features mode"):
        choose_features("fast", cost)


def test_features_setting_is_checked_and_keys_no_study(tiny_root) -> None:
    with pytest.raises(ConfigError, match=r"--features must be one of cache, compute, auto, got 'gpu'"):
        build_config("smoke", strategies=("crossdomain",), results="r", features="gpu")
    ids = {build_config("smoke", strategies=("crossdomain",), results="r", features=m).study_id
           for m in ("cache", "compute", "auto")}
    assert len(ids) == 1
    from study.orchestration.features_mode import trial_device
    from study.store import trial_key

    trial = {"cell_id": "c", "phase": "tune", "lr": 1e-3, "seed": 0}  # a study resumed in the other mode replays
    assert trial_key({**trial, "features": "compute", "feature_dtype": "float16", "feature_folder": "/f"}) == \
        trial_key(trial) != trial_key({**trial, "lr": 2e-3})

    if not torch.cuda.is_available():  # the device the cost model prices follows --gpus
        assert trial_device(build_config("smoke", strategies=("crossdomain",), results="r")) == "cpu"
        assert trial_device(build_config("smoke", strategies=("crossdomain",), results="r", gpus="on")) == "GPU"
    assert trial_device(build_config("smoke", strategies=("crossdomain",), results="r", gpus="off")) == "cpu"


def test_compute_is_refused_for_a_kind_without_an_in_trial_path(monkeypatch, tiny_root) -> None:
    from study.data.datasets import validate_dataset
    from study.orchestration.features_mode import plan_features
    from study.strategies import BACKBONES

    monkeypatch.setitem(BACKBONES, "hypersl", replace(BACKBONES["hypersl"], in_trial=None))
    spec = get_spec("hyko2")
    splits = validate_dataset(tiny_root, spec)
    backbone = type("B", (), {"kind": "hypersl", "path": None, "sha": None})()
    cfg = build_config("smoke", strategies=("crossdomain",), results="r", features="compute")
    with pytest.raises(ConfigError, match="--features compute: the hypersl backbone kind's trials cannot"):
        plan_features(cfg, spec, tiny_root, splits, backbone)
    auto = build_config("smoke", strategies=("crossdomain",), results="r")
    assert plan_features(auto, spec, tiny_root, splits, backbone).mode == "cache"


def _study(mode: str, tiny_root: Path, tiny_backbone: Path, tmp_path: Path) -> pl.DataFrame:
    from study.run import main
    from study.store import read_store

    argv = ["--strategy", "crossdomain,crossdomain-fc", "--dataset", "hyko2", "--data-root", str(tiny_root),
            "--backbone", str(tiny_backbone), "--width", "tiny", "--fractions", "1.0", "--trials", "1",
            "--epochs", "2", "--grace-period", "1", "--seeds", "1", "--max-freeze-depth", "0", "--deterministic",
            "--feature-dtype", "float32",  # fp32 rounding is the claim (float16 storage: test above)
            "--cache-dir", str(tmp_path / f"cache-{mode}"), "--results", str(tmp_path / f"res-{mode}"),
            "--features", mode]
    assert main(argv) == 0
    return read_store(tmp_path / f"res-{mode}").sort("strategy", "phase", "row_kind", "epoch")


def test_compute_study_equals_cache_study_and_writes_no_feature_file(ray_session, tiny_root, tiny_backbone,
                                                                      tmp_path, capsys) -> None:
    cache = _study("cache", tiny_root, tiny_backbone, tmp_path)
    compute = _study("compute", tiny_root, tiny_backbone, tmp_path)
    out = capsys.readouterr().out
    assert "features of hyko2: cache (--features cache; an epoch of" in out
    assert "features of hyko2: compute (--features compute; an epoch of" in out
    assert cache.height == compute.height and set(cache["strategy"]) == {"crossdomain", "crossdomain-fc"}
    assert (cache["study_id"] == compute["study_id"]).all()  # one study: the mode keys nothing ...
    assert (cache["config_hash"] == compute["config_hash"]).all()  # ... not even a configuration
    assert set(cache["features_mode"]) == {"cache"} and set(compute["features_mode"]) == {"compute"}
    for col in ("train_loss", "val_miou", "val_oa", "test_miou", "test_oa"):
        a, b = cache[col].to_numpy(), compute[col].to_numpy()
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=col)
    assert compute.filter(pl.col("row_kind") == "final")["test_miou"].null_count() == 0
    assert list((tmp_path / "cache-cache" / "features").rglob("*.h5"))  # the cache study exported ...
    assert not list((tmp_path / "cache-compute" / "features").rglob("*.h5"))  # ... the compute study did not
    assert list((tmp_path / "cache-compute" / "features").rglob("chunk-stats/*.pt"))  # its statistics are kept
