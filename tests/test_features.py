"""Feature export: paper-faithful chunked BatchNorm semantics, the HS3-Bench output layout, the cache."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import study.features as feat
from study.data.specs import get_spec
from study.errors import HsiStudyError
from study.features import cli as features_cli
from study.features import export as feat_export  # monkeypatch target: export_images looks export_image up here
from study.models.checkpoints import checkpoint_hash, save_checkpoint
from study.models.hypersl import build_hypersl

WL = get_spec("hyko2").wavelength_array()


@pytest.fixture()
def model() -> torch.nn.Module:
    """A tiny HyperSL whose BN running statistics are far from a raw image's (as after pretraining)."""
    torch.manual_seed(0)
    m = build_hypersl("tiny")
    with torch.no_grad():
        m(torch.rand(256, 15), torch.from_numpy(WL), 0.5)  # train-mode pass: running stats of [0, 1] data
    return m


@pytest.fixture()
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((10, 12, 15)) * 3000 + np.linspace(0, 2000, 12)[None, :, None]).astype(np.float32)


def _bn_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items() if "embedding_layer" in k and ".1." in k}


def test_chunk_mode_is_train_mode_bn_per_raster_chunk(model: torch.nn.Module, image: np.ndarray) -> None:
    before = _bn_state(model)
    got = feat.export_image(model, image, WL, bn_mode="chunk", chunk_size=50)
    assert got.shape == (10, 12, 32) and got.dtype == np.float32
    # the paper: module left in train mode, consecutive chunks of the raster-order flattening
    flat = torch.from_numpy(image.reshape(-1, 15))
    ref_model = build_hypersl("tiny")
    ref_model.load_state_dict(model.state_dict())
    ref_model.train()
    with torch.no_grad():
        ref = torch.cat([ref_model.features(flat[s : s + 50], torch.from_numpy(WL)) for s in range(0, 120, 50)])
    np.testing.assert_allclose(got.reshape(120, -1), ref.numpy(), rtol=1e-4, atol=1e-4)
    # the GPU path: the transformer on several chunks at once, each chunk's stem with its own BN statistics
    batched = feat.export_image(model, image, WL, bn_mode="chunk", chunk_size=50, compute_pixels=100)
    np.testing.assert_allclose(batched.reshape(120, -1), ref.numpy(), rtol=1e-4, atol=1e-4)
    after = _bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats and counters untouched
    assert model.training and all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))


def test_chunk_size_matters_only_in_chunk_mode(model: torch.nn.Module, image: np.ndarray) -> None:
    a = feat.export_image(model, image, WL, bn_mode="chunk", chunk_size=30)
    b = feat.export_image(model, image, WL, bn_mode="chunk", chunk_size=120)
    assert not np.allclose(a, b, atol=1e-3)
    np.testing.assert_array_equal(a, feat.export_image(model, image, WL, bn_mode="chunk", chunk_size=30))
    c = feat.export_image(model, image, WL, bn_mode="running", chunk_size=30)
    d = feat.export_image(model, image, WL, bn_mode="running", chunk_size=120)
    np.testing.assert_allclose(c, d, rtol=1e-5, atol=1e-5)
    assert not np.allclose(b, d, atol=1e-3)
    half = feat.export_image(model, image, WL, bn_mode="running", chunk_size=30, dtype="float16")
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), c, rtol=2e-3, atol=2e-3)


def test_bad_settings_are_rejected(model: torch.nn.Module, image: np.ndarray) -> None:
    for kwargs in ({"bn_mode": "eval"}, {"chunk_size": 0}, {"dtype": "bfloat16"}, {"autocast": "fp8"}):
        with pytest.raises(HsiStudyError):
            feat.export_image(model, image, WL, **kwargs)
    with pytest.raises(HsiStudyError, match="does not match"):
        feat.export_image(model, image[..., :10], WL)


def test_cache_path_keys_every_setting(tmp_path: Path) -> None:
    base = dict(cache_dir=tmp_path, ckpt_hash="ab" * 8, dataset="hyko2", split="train", bn_mode="chunk",
                chunk=50000, dtype="float16")
    path = feat.feature_cache_path(**base)
    assert path.name == "hyko2_train.h5" and "ab" * 8 in path.parts
    variants = [dict(ckpt_hash="cd" * 8), dict(split="val"), dict(bn_mode="running"), dict(chunk=5000),
                dict(dtype="float32"), dict(source="0123456789")]
    assert len({path, *(feat.feature_cache_path(**{**base, **v}) for v in variants)}) == 1 + len(variants)
    # fp32-computed features keep the key existing caches were written under; bf16 autocast gets its own
    assert path == tmp_path / "features" / ("ab" * 8) / "hyko2-chunk-c50000-float16" / "hyko2_train.h5"
    assert feat.feature_cache_path(**base, autocast="off") == path
    bf16 = feat.feature_cache_path(**base, autocast="bf16")
    assert bf16 != path and bf16.parent.name == "hyko2-chunk-c50000-float16-bf16"


def test_bf16_autocast_is_close_to_fp32_but_not_equal(model: torch.nn.Module, image: np.ndarray) -> None:
    fp32 = feat.export_image(model, image, WL, bn_mode="chunk", chunk_size=50).reshape(120, -1)
    bf16 = feat.export_image(model, image, WL, bn_mode="chunk", chunk_size=50, autocast="bf16").reshape(120, -1)
    assert bf16.dtype == np.float32 and not np.array_equal(fp32, bf16)  # the autocast path was taken
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() > 0.99


def test_ensure_features_exports_each_split_once(tiny_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = save_checkpoint(build_hypersl("tiny"), tmp_path / "bb.pt")
    calls: list[int] = []
    real = feat_export.export_image

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(feat_export, "export_image", counting)
    cache = tmp_path / "cache"
    folder = feat.ensure_features(cache, ckpt, tiny_root, "hyko2", chunk_size=300, progress=False)
    n_images = 6 + 3 + 3
    assert len(calls) == n_images
    again = feat.ensure_features(cache, ckpt, tiny_root, "hyko2", chunk_size=300, progress=False)
    assert again == folder and len(calls) == n_images  # second call: nothing recomputed
    feat.ensure_features(cache, ckpt, tiny_root, "hyko2", ["val"], chunk_size=300, bn_mode="running", progress=False)
    assert len(calls) == n_images + 3  # another setting is another cache entry
    with h5py.File(folder / "hyko2_train.h5") as out, h5py.File(tiny_root / "hyko2_train.h5") as src:
        names = sorted(k for k in src if k != "metadata")
        assert sorted(out) == names
        assert out.attrs["checkpoint_hash"] == checkpoint_hash(ckpt) and out.attrs["chunk_size"] == 300
        assert out.attrs["bn_mode"] == "chunk" and out.attrs["dtype"] == "float16" and out.attrs["complete"]
        for n in names:
            h, w, _ = src[n]["image"].shape
            assert out[n]["image"].shape == (h, w, 32) and out[n]["image"].dtype == np.float16
            np.testing.assert_array_equal(out[n]["labels"][()], src[n]["labels"][()])
            assert out[n]["labels"].dtype == src[n]["labels"].dtype
    assert not list(folder.glob(".*.tmp"))


def test_cli_exports_and_reports_bad_input(tiny_root: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = save_checkpoint(build_hypersl("tiny"), tmp_path / "bb.pt")
    out = tmp_path / "feats"
    rc = features_cli.main(["--backbone", str(ckpt), "--data", str(tiny_root), "--dataset", "hyko2", "--out", str(out),
                    "--splits", "test", "--dtype", "float32", "--chunk-size", "500", "--quiet"])
    assert rc == 0 and (out / "hyko2_test.h5").is_file() and not (out / "hyko2_train.h5").exists()
    with h5py.File(out / "hyko2_test.h5") as fh:
        assert fh.attrs["dtype"] == "float32" and fh.attrs["feature_dim"] == 32
    capsys.readouterr()
    for bad in (["--dataset", "nope"], ["--dataset", "hyko2", "--splits", "train,bogus"],
                ["--dataset", "hyko2", "--chunk-size", "0"]):
        rc = features_cli.main(["--backbone", str(ckpt), "--data", str(tiny_root), "--out", str(out), *bad, "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and "\n" not in err
    assert features_cli.main(["--backbone", str(tmp_path / "none.pt"), "--data", str(tiny_root), "--dataset", "hyko2",
                      "--out", str(out), "--quiet"]) == 2


def _same_files(a: Path, b: Path) -> None:
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert sorted(fa) == sorted(fb)
        ka = {k: v for k, v in fa.attrs.items() if k != "source_wavelengths"}
        kb = {k: v for k, v in fb.attrs.items() if k != "source_wavelengths"}
        assert ka == kb
        for n in fa:
            for d in ("image", "labels"):
                np.testing.assert_array_equal(fa[n][d][()], fb[n][d][()])
                assert fa[n][d].dtype == fb[n][d].dtype


def test_sharded_export_equals_one_piece_and_resumes(tiny_root: Path, tiny_backbone: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from study.features import shards as fs

    assert fs.shard_ranges(6, 4) == [(0, 1), (1, 3), (3, 4), (4, 6)] and fs.shard_ranges(2, 5) == [(0, 1), (1, 2)]
    one = feat.ensure_features(tmp_path / "a", tiny_backbone, tiny_root, "hyko2", ["train"], chunk_size=300,
                               progress=False)
    # an interrupted sharded export: shard 1 of 3 finished, then the process died
    out = feat.feature_cache_path(tmp_path / "b", checkpoint_hash(tiny_backbone), "hyko2", "train", "chunk", 300,
                                  "float16", feat.source_id(tiny_root))
    out.parent.mkdir(parents=True)
    names = sorted(k for k in h5py.File(tiny_root / "hyko2_train.h5") if k != "metadata")
    settings = dict(ckpt_hash=checkpoint_hash(tiny_backbone), bn_mode="chunk", chunk_size=300, dtype="float16",
                    autocast="off")
    fs.export_part(tiny_backbone, tiny_root, "hyko2", "train", names[2:4], fs.part_path(out, 1, 3), settings, "cpu")
    calls: list[int] = []
    real = feat_export.export_image
    monkeypatch.setattr(feat_export, "export_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    two = feat.ensure_features(tmp_path / "b", tiny_backbone, tiny_root, "hyko2", ["train"], chunk_size=300,
                               shards=3, progress=False)
    assert len(calls) == 4  # shards 0 and 2 only
    _same_files(one / "hyko2_train.h5", two / "hyko2_train.h5")
    assert not fs.parts_dir(out).exists() and not list(two.glob(".*.tmp"))


def test_cluster_export_runs_one_ray_task_per_shard(ray_session, tiny_root: Path, tiny_backbone: Path,
                                                    tmp_path: Path) -> None:
    one = feat.ensure_features(tmp_path / "a", tiny_backbone, tiny_root, "hyko2", ["val"], chunk_size=300,
                               progress=False)
    two = feat.ensure_features(tmp_path / "b", tiny_backbone, tiny_root, "hyko2", ["val"], chunk_size=300,
                               shards=2, cluster=True, progress=False)
    _same_files(one / "hyko2_val.h5", two / "hyko2_val.h5")
