"""The crossmodality strategy: band choice, bridges, freeze depth, padding, the trainable, the CLI refusal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from trainable_helpers import tiny_hyko2_bundle

from search_spaces.crossmodality import SPACE
from study.data.specs import get_spec
from study.errors import HsiStudyError
from study.models.checkpoints import checkpoint_hash
from study.models.freezing import param_groups, set_trainable_depth
from study.models.rgb_bridge import HS3BENCH_RGB, LearnedProjection, PseudoRGB, build_bridge, choose_bands
from study.models.vit import build_vit
from study.models.vit_seg import ViTSegmenter, build_head
from study.run import main
from study.store import read_store
from trainables.crossmodality import train_crossmodality

CONFIG = dict(head_lr=3e-3, backbone_lr=1e-5, weight_decay=1e-4, freeze_depth=1, bridge="learned", head="decoder",
              max_epochs=2, batch_size=3, seed=0, final=True, patience=None, num_threads=1, vit_size="tiny",
              backbone_path=None, allow_random_init=True)


@pytest.fixture(scope="module")
def bundle(tiny_root: Path):
    return tiny_hyko2_bundle(tiny_root)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT saved as a plain timm-layout state dict (random weights: the plumbing is under test)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "tiny_vit.pth"
    torch.save(build_vit("tiny").state_dict(), path)
    return path


@pytest.fixture
def no_hub_cache(tmp_path: Path, monkeypatch) -> None:
    """No released weights on disk, whatever this machine's caches hold."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def _cube(n: int = 3, h: int = 29, w: int = 45, c: int = 15, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 0.1, size=(n, h, w, c)).astype(np.float32)


@pytest.mark.parametrize("dataset, nearest", [("hyko2", (14, 7, 0)), ("hsidrive", (6, 1, 0)), ("hcv2", (50, 25, 0))])
def test_bands_nearest_to_red_green_blue_and_the_hs3bench_option(dataset: str, nearest: tuple) -> None:
    spec = get_spec(dataset)
    assert choose_bands(spec) == nearest
    wl = spec.wavelength_array()
    assert abs(wl[nearest[0]] - 650) <= abs(wl - 650).min() + 1e-3  # really the nearest band to red
    assert choose_bands(spec, "hs3bench") == HS3BENCH_RGB[dataset]
    with pytest.raises(ValueError, match="unknown rgb_bands"):
        choose_bands(spec, "pca")


def test_learned_projection_starts_as_the_pseudo_rgb_image_scaled_on_train_only() -> None:
    spec, train, other = get_spec("hyko2"), _cube(seed=0), _cube(seed=1) * 5.0
    fixed, learned = build_bridge("pseudo-rgb", train, spec), build_bridge("learned", train, spec)
    assert isinstance(fixed, PseudoRGB) and isinstance(learned, LearnedProjection)
    assert not list(fixed.parameters()) and learned.proj.weight.shape == (3, 15, 1, 1)
    x = torch.from_numpy(other).permute(0, 3, 1, 2)
    torch.testing.assert_close(learned(x), fixed(x), rtol=1e-5, atol=1e-5)
    # the robust min-max comes from the training images: their 1st/99th percentiles map to ImageNet's 0 and 1
    band = train[..., 14].ravel()
    lo_hi = torch.tensor(np.percentile(band, [1, 99]), dtype=torch.float32).reshape(1, 1, 2, 1).expand(1, 15, 2, 1)
    red = fixed(lo_hi.contiguous())[0, 0, :, 0]
    torch.testing.assert_close(red, torch.tensor([-0.485 / 0.229, (1 - 0.485) / 0.229]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", ["linear", "decoder"])
@pytest.mark.parametrize("hw", [(29, 45), (28, 42), (15, 13)])
def test_odd_sizes_are_padded_to_the_patch_and_cropped_back(head: str, hw: tuple[int, int]) -> None:
    cube = _cube(2, *hw)
    model = ViTSegmenter(build_bridge("pseudo-rgb", cube, get_spec("hyko2")), build_vit("tiny"),
                         build_head(head, 64, 11))
    assert model(torch.from_numpy(cube).permute(0, 3, 1, 2)).shape == (2, 11, *hw)


def _changed_after_one_step(bridge: str, k: int) -> set[str]:
    torch.manual_seed(0)
    cube = _cube(2, 28, 42)
    model = ViTSegmenter(build_bridge(bridge, cube, get_spec("hyko2")), build_vit("tiny"), build_head("linear", 64, 11))
    set_trainable_depth(model.vit, k)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, 1e-2, 1e-2, backbone=model.vit, backbone_lr=1e-3))
    logits = model(torch.from_numpy(cube).permute(0, 3, 1, 2))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 11, (2, 28, 42))).backward()
    opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def _groups(names: set[str]) -> set[str]:
    """Parameter names -> their freeze group (head, bridge, vit.blocks.N, vit.norm, vit stem)."""
    return {".".join(n.split(".")[:3]) if n.startswith("vit.blocks") else n.split(".")[0] if n.split(".")[0] != "vit"
            else "vit." + n.split(".")[1] for n in names}


@pytest.mark.parametrize("bridge, k, allowed", [
    ("pseudo-rgb", 0, {"head"}),
    ("learned", 0, {"head", "bridge"}),
    ("pseudo-rgb", 2, {"head", "vit.blocks.2", "vit.blocks.3", "vit.norm"}),
])
def test_freeze_depth_lets_only_the_allowed_parameters_change(bridge: str, k: int, allowed: set[str]) -> None:
    changed = _groups(_changed_after_one_step(bridge, k))
    assert changed == allowed  # nothing else moves, and every allowed group does
    with pytest.raises(ValueError, match="freeze_depth"):
        set_trainable_depth(build_vit("tiny"), 6)


def test_frozen_prefix_runs_without_autograd_only_when_nothing_before_it_learns() -> None:
    cube = _cube(1, 28, 28)
    fixed = ViTSegmenter(build_bridge("pseudo-rgb", cube, get_spec("hyko2")), build_vit("tiny"),
                         build_head("linear", 64, 11))
    learned = ViTSegmenter(build_bridge("learned", cube, get_spec("hyko2")), build_vit("tiny"),
                           build_head("linear", 64, 11))
    set_trainable_depth(fixed.vit, 1)
    set_trainable_depth(learned.vit, 0)
    assert fixed.no_grad_blocks == 3 and learned.no_grad_blocks == 0


def test_trainable_reports_every_epoch_and_records_the_random_init(bundle) -> None:
    rec: list[dict] = []
    train_crossmodality(dict(CONFIG), bundle, report=lambda m, checkpoint=None: rec.append(dict(m)),
                        get_checkpoint=lambda: None)
    assert [m["epoch"] for m in rec] == [1, 2] and all(math.isfinite(m["train_loss"]) for m in rec)
    assert all(0.0 <= m["val_miou"] <= 1.0 for m in rec) and "test_miou" in rec[-1]
    assert rec[-1]["backbone_pretrained"] is False and rec[-1]["backbone_hash"] is None
    assert rec[-1]["model_name"] == "dinov2-vit-tiny" and set(SPACE) <= set(CONFIG)
    again: list[dict] = []
    train_crossmodality(dict(CONFIG), bundle, report=lambda m, checkpoint=None: again.append(dict(m)),
                        get_checkpoint=lambda: None)
    assert [m["val_miou"] for m in again] == [m["val_miou"] for m in rec]  # deterministic under a seed


def test_trainable_loads_weights_and_refuses_to_run_without_them(bundle, tiny_weights: Path) -> None:
    rec: list[dict] = []
    cfg = {**CONFIG, "backbone_path": str(tiny_weights), "allow_random_init": False, "max_epochs": 1,
           "freeze_depth": 0, "bridge": "pseudo-rgb", "head": "linear", "final": False}
    train_crossmodality(cfg, bundle, report=lambda m, checkpoint=None: rec.append(dict(m)),
                        get_checkpoint=lambda: None)
    assert rec[-1]["backbone_pretrained"] is True and rec[-1]["backbone_hash"] == checkpoint_hash(tiny_weights)
    with pytest.raises(HsiStudyError, match="--allow-random-init"):
        train_crossmodality({**cfg, "backbone_path": None}, bundle, report=lambda m, checkpoint=None: None)


def _argv(tiny_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--strategy", "crossmodality", "--data-root", str(tiny_root), "--fractions", "1.0", "--trials", "2",
            "--epochs", "2", "--grace-period", "1", "--seeds", "1", "--results", str(tmp_path / "res"), *extra]


def test_cli_stops_before_ray_without_weights_and_with_wrong_weights(tiny_root, tmp_path, no_hub_cache,
                                                                     capsys, monkeypatch) -> None:
    import ray

    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("Ray must not start"))
    assert main(_argv(tiny_root, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "--rgb-weights PATH" in err and "--allow-random-init" in err and err.count("\n") == 1
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    assert main(_argv(tiny_root, tmp_path, "--rgb-weights", str(bad))) == 2
    err = capsys.readouterr().err
    assert "missing: cls_token" in err and "1 unexpected: foo.weight" in err and "Traceback" not in err

    from study.orchestration import check_inputs
    from study.run import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(_argv(tiny_root, tmp_path, "--allow-random-init", "--smoke")))
    rgb = check_inputs(cfg, echo=lambda _: None)["hyko2"].backbones["rgb-vit"]
    assert rgb.path is None and rgb.sha is None  # accepted: a random init, CPU-sized under --smoke
    assert rgb.trial_config["vit_size"] == "tiny" and rgb.trial_config["allow_random_init"] is True


def test_rows_carry_the_hyperparameters_and_pretrained_flag_and_old_parts_still_read(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from study.store import RESULT_SCHEMA, TrialLog, read_table, rows_to_table, trial_rows, write_study_file

    metrics = {"epoch": 1, "val_miou": 0.5, "best_epoch": 1, "is_last": True, "backbone_pretrained": True,
               "backbone_hash": "abc", "model_name": "dinov2-vit-small"}
    log = TrialLog("t0", {**CONFIG, "phase": "tune"}, results=[metrics])
    common = {"study_id": "s", "dataset": "hyko2", "strategy": "crossmodality", "train_fraction": 1.0,
              "n_train_images": 6, "subset_hash": "h", "subset_seed": 0, "cell_id": "c"}
    rows = trial_rows(log, common)
    assert all(r["backbone_pretrained"] is True and r["freeze_depth"] == 1 and r["head_lr"] == 3e-3 for r in rows)
    # a part written before the column existed is read with nulls there (schema v1 unchanged)
    write_study_file(tmp_path, {})
    (tmp_path / "rows").mkdir()
    pq.write_table(rows_to_table(rows).drop_columns(["backbone_pretrained"]), tmp_path / "rows" / "old.parquet")
    table = read_table(tmp_path)
    assert table.schema == RESULT_SCHEMA and table["backbone_pretrained"].null_count == len(rows) == 2


@pytest.mark.slow
def test_study_runs_with_random_init_and_with_a_weights_file(ray_session, tiny_root, tiny_weights, tmp_path,
                                                             no_hub_cache, capsys) -> None:
    assert main(_argv(tiny_root, tmp_path / "a", "--allow-random-init", "--vit-size", "tiny")) == 0, capsys.readouterr()
    df = read_store(tmp_path / "a" / "res")
    assert df.filter(pl.col("row_kind") == "final").height == 1
    assert (df["backbone_pretrained"] == False).all() and df["backbone_hash"].is_null().all()  # noqa: E712
    assert set(df["model_name"]) == {"dinov2-vit-tiny"} and df["freeze_depth"].is_not_null().all()

    assert main(_argv(tiny_root, tmp_path / "b", "--rgb-weights", str(tiny_weights))) == 0, capsys.readouterr()
    df = read_store(tmp_path / "b" / "res")
    assert df["backbone_pretrained"].all() and (df["backbone_hash"] == checkpoint_hash(tiny_weights)).all()
    assert df["head_lr"].is_not_null().all() and df["backbone_lr"].is_not_null().all()


def test_epoch_checkpoints_leave_out_frozen_parameters() -> None:
    """A frozen backbone is rebuilt from its weights file on resume, so checkpoints carry only what can change."""
    import torch

    from study.train.trial_state import load_mutable_state, mutable_state

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    state = mutable_state(model)
    assert "0.weight" not in state and "2.weight" in state and "1.running_mean" in state
    other = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    other[0].load_state_dict(model[0].state_dict())
    other[0].requires_grad_(False)
    load_mutable_state(other, state)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other[0].requires_grad_(True)  # a trainable parameter missing from the checkpoint is an error
    with pytest.raises(RuntimeError, match="missing"):
        load_mutable_state(other, state)
