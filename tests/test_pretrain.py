"""Pretraining data (real spectra at the target bands) and the pretraining CLI / cache."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import study.pretrain as pt
from study.data import pretrain_data as pdata
from study.data.specs import get_spec
from study.errors import HsiStudyError
from study.models.checkpoints import checkpoint_hash, load_hypersl
from study.pretrain import cache as pt_cache


def test_indian_pines_wavelengths_match_tensorly_source() -> None:
    np.testing.assert_array_equal(np.array(pdata.INDIAN_PINES_WAVELENGTHS), pdata.tensorly_wavelengths())
    cube, labels = pdata.indian_pines()
    assert cube.shape == (145, 145, 200) and labels.shape == (145, 145)


def test_srf_resampling_and_scaling() -> None:
    w = pdata.srf_matrix(np.array([500.0, 700.0]), fwhm=10.0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    assert abs(pdata.GRID_NM[w[:, 0].argmax()] - 500.0) < 1e-9
    x = pdata.minmax_per_band(np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]]))
    np.testing.assert_allclose(x, [[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])


def test_pools_hold_real_spectra_at_the_target_bands() -> None:
    pools = pdata.build_pools(sensors=("hyko2", "hsidrive"))
    assert {(p.source, p.sensor) for p in pools} == {(s, n) for s in ("indian_pines", "earthlib")
                                                     for n in ("hyko2", "hsidrive")}
    for p in pools:
        np.testing.assert_array_equal(p.wavelengths, get_spec(p.sensor).wavelength_array())
        assert p.spectra.dtype == np.float32 and p.spectra.min() == 0.0 and p.spectra.max() == 1.0
        assert p.spectra.shape[0] == {"indian_pines": 145 * 145, "earthlib": 6373}[p.source]
    counts = pdata.earthlib_counts()
    assert sum(counts.values()) == 6373 and "road" not in counts and counts["soil"] == 4185
    assert "canopy" not in pdata.earthlib_counts(include_simulated=False)
    strict = pdata.pretraining_sources(include_simulated=False, ip_columns=(0, 73))
    assert strict["indian_pines"].shape[0] == 145 * 73 and strict["earthlib"].shape[0] == 6373 - 2000


def test_random_band_subsets() -> None:
    rng = np.random.default_rng(0)
    for n in (15, 25, 128):
        for _ in range(50):
            idx = pdata.random_band_subset(n, rng, min_bands=8)
            assert np.all(np.diff(idx) > 0) and 8 <= idx.size <= n and idx[-1] < n
    pool = pdata.SpectraPool("s", "hyko2", np.random.rand(10, 15).astype(np.float32),
                             get_spec("hyko2").wavelength_array())
    x, wl = pdata.sample_batch(pool, 6, rng)
    assert x.shape == (6, wl.size) and np.all(np.diff(wl) > 0)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Chebyshev dilation of a boolean image."""
    out = np.zeros_like(mask)
    padded = np.pad(mask, radius)
    for dr in range(2 * radius + 1):
        for dc in range(2 * radius + 1):
            out |= padded[dr : dr + mask.shape[0], dc : dc + mask.shape[1]]
    return out


def test_indian_pines_checkerboard_split_is_disjoint_and_holdouts_cover_it() -> None:
    split = pdata.indian_pines_split()
    train, test, fit, val = split["train"], split["test"], split["fit"], split["val"]
    assert train.sum() > 3000 and test.sum() > 3000 and fit.sum() > 1000 and val.sum() > 1000
    assert not (_dilate(train, 2 * pdata.IP_GUARD) & test).any()  # >= 2 * guard + 1 px apart
    assert not (fit & ~train).any() and not (val & ~train).any() and not (_dilate(fit, 2) & val).any()
    _, labels = pdata.indian_pines()
    both = (np.bincount(labels[train], minlength=17) >= pdata.IP_MIN_PIXELS) & (
        np.bincount(labels[test], minlength=17) >= pdata.IP_MIN_PIXELS)
    assert list(np.flatnonzero(~both[1:]) + 1) == [1, 7, 9]  # Alfalfa, Grass-pasture-mowed, Oats dropped
    strict = pdata.indian_pines_holdout("checker20:test")
    assert strict[test].all() and not strict[train].any() and not pdata.indian_pines_holdout("").any()
    tuning = pdata.indian_pines_holdout("checker20:test+val")
    assert tuning[test].all() and tuning[val].all() and not tuning[fit].any()
    n = pdata.pretraining_sources(ip_holdout="checker20:test")["indian_pines"].shape[0]
    assert n == 145 * 145 - strict.sum()
    with pytest.raises(HsiStudyError, match="ip_holdout"):
        pdata.indian_pines_holdout("columns:73")


def test_effective_mask_ratio_keeps_min_visible_tokens() -> None:
    from study.models.hypersl import build_hypersl

    m = build_hypersl("tiny")
    for min_visible, bands, visible in ((0, 15, 1), (0, 128, 6), (4, 15, 4), (4, 25, 4), (4, 128, 6), (30, 25, 25)):
        cfg = pt.default_config("tiny", mask_ratio=0.95, min_visible=min_visible)
        ratio = pt.effective_mask_ratio(cfg, bands)
        kept = bands if ratio == 0 else m.random_masking(torch.zeros(2, bands, 4), ratio)[0].shape[1]
        assert kept == visible, (min_visible, bands, ratio)


def _tiny(**over: object) -> pt.PretrainConfig:
    return replace(pt.default_config("tiny", smoke=True), steps=3, batch_size=16, **over)


def test_pretrain_writes_checkpoint_and_cards(tmp_path: Path) -> None:
    out = tmp_path / "bb.pt"
    card = pt.pretrain(_tiny(), out, progress=False)
    model = load_hypersl(out)
    assert model.config.dim == 32
    saved = json.loads((tmp_path / "bb.card.json").read_text())
    assert saved == json.loads(json.dumps(card))
    assert saved["checkpoint_hash"] == checkpoint_hash(out) and len(saved["sha256"]) == 64
    assert saved["steps"] == 3 and saved["data"]["earthlib"]["spectra"] == 6373
    assert saved["data"]["indian_pines"]["spectra"] == 21025 and np.isfinite(saved["final_loss"])
    assert "not the released HyperSL weights" in saved["statement"]
    md = (tmp_path / "bb.card.md").read_text()
    assert "sanity pretraining" in md and saved["sha256"] in md
    assert saved["device"] == "cpu" and "CPU thread(s)" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_pretrain_device_cuda_without_a_gpu_is_one_clear_error(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert pt.resolve_device("auto").type == "cpu"
    with pytest.raises(HsiStudyError, match="sees no CUDA device"):
        pt.pretrain(_tiny(), tmp_path / "x.pt", progress=False, device="cuda")
    assert pt.main(["--smoke", "--device", "cuda", "--out", str(tmp_path / "y.pt")]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # stopped before writing anything


def test_default_backbone_is_made_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = pt.pretrain

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pt_cache, "pretrain", counting)  # what ensure_default_backbone calls
    cfg = _tiny()
    first = pt.ensure_default_backbone(tmp_path, config=cfg, progress=False)
    again = pt.ensure_default_backbone(tmp_path, config=cfg, progress=False)
    assert first == again and len(calls) == 1
    assert first.parent == tmp_path / "backbones" and pt.settings_hash(cfg) in first.name
    assert pt.settings_hash(_tiny(seed=1)) != pt.settings_hash(cfg)


def test_default_backbone_is_pretrained_on_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its weights must not depend on the machine's core count; the caller's thread setting is restored."""
    seen = []
    real = pt.pretrain
    monkeypatch.setattr(pt_cache, "pretrain", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pt.ensure_default_backbone(tmp_path, config=_tiny(), progress=False)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cli_smoke_help_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pt.main(["--smoke", "--steps", "2", "--quiet", "--out", str(tmp_path / "s.pt")]) == 0
    assert "final loss" in capsys.readouterr().out
    assert pt.main(["--smoke", "--steps", "2", "--quiet", "--min-visible", "4", "--mask-input", "--ip-holdout",
                    "checker20:test", "--out", str(tmp_path / "d.pt")]) == 0
    card = json.loads((tmp_path / "d.card.json").read_text())
    assert card["settings"]["min_visible"] == 4 and card["settings"]["mask_input"] is True
    assert card["data"]["indian_pines"]["spectra"] == 145 * 145 - pdata.indian_pines_holdout("checker20:test").sum()
    assert "held out: checker20:test" in (tmp_path / "d.card.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        pt.main(["--help"])
    assert exc.value.code == 0 and "examples:" in capsys.readouterr().out
    for bad in (["--steps", "0"], ["--size", "gigantic"], ["--smoke", "--lr", "-1"], ["--ip-holdout", "left"],
                ["--min-visible", "-1"], ["--smoke", "--device", "tpu"]):
        assert pt.main([*bad, "--out", str(tmp_path / "x.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err


def test_z_recon_option_decodes_from_z_alone_and_keeps_default_keys() -> None:
    from study.models.hypersl import build_hypersl

    torch.manual_seed(0)
    m = build_hypersl("tiny")
    keys = set(m.state_dict())
    x, wl = torch.rand(6, 25), torch.linspace(535.0, 975.0, 25)
    cfg = replace(pt.default_config("tiny"), z_recon=0.5)
    recon = pt.z_only_reconstruction(m, x, wl, cfg)
    assert recon.shape == (6, 25) and float(recon.detach().min()) >= 0.0 and float(recon.detach().max()) <= 1.0
    # the auxiliary loss reaches the encoder's final layer through z (HyperSL's own loss need not)
    from study.models.hypersl import masked_modelling_loss

    masked_modelling_loss(recon, x).backward()
    assert m.transformer_encoder_layer.mlp.fc2.weight.grad.abs().sum() > 0
    assert m.corss_attn.qkv.weight.grad is None  # the cross-attention query is bypassed
    assert set(m.state_dict()) == keys  # no new parameters: released-layout checkpoints still load strictly
    # opt-in: defaults keep the pre-existing cache key, a non-default value changes it
    base = pt.default_config("tiny")
    legacy = {k: v for k, v in asdict(base).items() if k not in ("z_recon", "z_recon_mask")}
    key = json.dumps({"config": legacy, "version": pt.PRETRAIN_VERSION}, sort_keys=True)
    assert pt.settings_hash(base) == hashlib.sha256(key.encode()).hexdigest()[:12]
    assert pt.settings_hash(cfg) != pt.settings_hash(base)
    for bad in ({"z_recon": -1.0}, {"z_recon_mask": 1.0}):
        with pytest.raises(HsiStudyError, match="z_recon"):
            pt.default_config("tiny", **bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine: pytest -m gpu)")
def test_pretrain_on_cuda_writes_a_checkpoint_that_loads_on_cpu(tmp_path: Path) -> None:
    card = pt.pretrain(_tiny(), tmp_path / "g.pt", progress=False, device="cuda")
    model = load_hypersl(tmp_path / "g.pt")
    assert card["device"] != "cpu" and np.isfinite(card["final_loss"])
    assert all(t.device.type == "cpu" for t in model.state_dict().values())


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Stop at step 4 of 7, resume: the checkpoint equals an uninterrupted run's, and the state file is gone."""
    cfg = replace(_tiny(), steps=7)
    straight = pt.pretrain(cfg, tmp_path / "a.pt", progress=False, save_every=0)
    with pytest.raises(pt.PretrainStopped) as stopped:
        pt.pretrain(cfg, tmp_path / "b.pt", progress=False, save_every=3, stop_after=4)
    assert stopped.value.step == 4 and pt.resume_path(tmp_path / "b.pt").is_file() and not (tmp_path / "b.pt").exists()
    resumed = pt.pretrain(cfg, tmp_path / "b.pt", progress=False, save_every=3)
    a, b = load_hypersl(tmp_path / "a.pt").state_dict(), load_hypersl(tmp_path / "b.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_loss"] == straight["final_loss"] and resumed["resumed_at_step"] == 4
    assert straight["resumed_at_step"] is None and not pt.resume_path(tmp_path / "b.pt").exists()
    # a state for other settings is refused, naming the file and the way out
    with pytest.raises(pt.PretrainStopped):
        pt.pretrain(cfg, tmp_path / "c.pt", progress=False, stop_after=2)
    with pytest.raises(HsiStudyError, match="c.pt.resume.pt: a pretraining state for other settings"):
        pt.pretrain(replace(cfg, seed=1), tmp_path / "c.pt", progress=False)
    torch.save([1, 2], pt.resume_path(tmp_path / "d.pt"))
    with pytest.raises(HsiStudyError, match="other settings .hash None"):
        pt.pretrain(cfg, tmp_path / "d.pt", progress=False)
    pt.resume_path(tmp_path / "e.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(HsiStudyError, match="unreadable pretraining state.*--force"):
        pt.pretrain(cfg, tmp_path / "e.pt", progress=False)


def test_cli_time_limit_exits_3_and_the_same_command_continues(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--smoke", "--steps", "4", "--quiet", "--out", str(tmp_path / "t.pt")]
    assert pt.main([*argv, "--time-limit", "0"]) == 3
    assert "run the same command again" in capsys.readouterr().err
    assert pt.resume_path(tmp_path / "t.pt").is_file()
    assert pt.main(argv) == 0 and json.loads((tmp_path / "t.card.json").read_text())["resumed_at_step"] == 1
    assert not pt.resume_path(tmp_path / "t.pt").exists()
    assert pt.main([*argv, "--save-every", "-1"]) == 2


def test_the_packaged_default_backbone_matches_todays_recipe() -> None:
    """A recipe change without re-made package data fails here: run python scripts/make_default_backbone.py."""
    from study.pretrain import backbone_path, default_config, packaged_checkpoint

    name = backbone_path("/unused", default_config("cpu")).name
    assert packaged_checkpoint(name) is not None, (
        f"study/pretrain/packaged/ has no checkpoint {name} whose sha256 matches its card; the default "
        "pretraining recipe changed: re-make it with python scripts/make_default_backbone.py")


def test_a_first_study_copies_the_packaged_backbone_instead_of_pretraining(tmp_path, monkeypatch) -> None:
    import study.pretrain.cache as cache
    from study.models.checkpoints import load_hypersl
    from study.pretrain import default_config

    monkeypatch.setattr(cache, "pretrain", lambda *a, **k: pytest.fail("pretrained although a packaged copy exists"))
    path = cache.ensure_default_backbone(cache_dir=tmp_path, config=default_config("cpu"), progress=False)
    assert path.is_file() and path.with_name(path.stem + ".card.json").is_file()
    assert path.read_bytes() == (cache.PACKAGED / path.name).read_bytes()
    load_hypersl(path)  # a real checkpoint in the released layout
    # a copy whose bytes do not match its card is never used
    monkeypatch.setattr(cache, "PACKAGED", tmp_path / "fake")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / path.name).write_bytes(b"not a checkpoint")
    (tmp_path / "fake" / path.with_name(path.stem + ".card.json").name).write_text('{"sha256": "00"}')
    assert cache.packaged_checkpoint(path.name) is None
