"""Freeze depth k > 0 for the cross-domain strategies (issue #3): what trains, what agrees, what resumes.

A k > 0 trial gets the checkpoint as ``config["backbone_path"]`` (+ hash, BN mode, chunk size) and the raw
spectra as ``DataBundle.raw``, as the driver provides them (``trainable_helpers.backbone_config``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from trainable_helpers import backbone_config, feature_bundle, run, tiny_hyko2_bundle

from study.data.bundle import DataBundle, Split, SplitArrays, materialize
from study.data.specs import get_spec
from study.data.stream import SampleDataset
from study.models.checkpoints import load_hypersl
from study.models.freezing import param_groups
from study.models.heads import PixelFC
from study.models.hypersl import build_hypersl
from study.models.hypersl_partial import BackbonePixelFC
from study.strategies import STRATEGIES
from study.train.raw_spectra import build_backbone, chunk_id_map, crop_windows
from trainables.crossdomain import train_crossdomain
from trainables.crossdomain_fc import train_crossdomain_fc

FC = dict(lr=1e-2, backbone_lr=1e-3, weight_decay=1e-4, max_epochs=3, batch_size=2, seed=0, final=True,
          patience=None, num_threads=1, sub_batch=512, freeze_depth=1)
RUNET = {**FC, "width": "tiny", "crop_size": 16, "dropout": 0.25}
DECODER = ("mask_token", "corss_attn.", "decoder_blocks.", "norm1.", "norm2.", "decoder_layer.")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def raw(tiny_root: Path) -> DataBundle:
    full = tiny_hyko2_bundle(tiny_root)

    def small(split: Split, n: int) -> SplitArrays:  # fewer, smaller images: per-pixel transformers are slow
        s = materialize(split)
        return SplitArrays(images=s.images[:n, :16, :24], labels=s.labels[:n, :16, :24], names=s.names[:n])

    return replace(full, train=small(full.train, 3), val=small(full.val, 2), test=small(full.test, 1))


@pytest.fixture(scope="module")
def data(raw: DataBundle, tiny_backbone: Path) -> DataBundle:
    return feature_bundle(raw, tiny_backbone)


@pytest.fixture(scope="module")
def bb(tiny_backbone: Path) -> dict:
    """The backbone constants of every HyperSL trial config."""
    return backbone_config(tiny_backbone)


@pytest.fixture(scope="module")
def weights(tiny_backbone: Path) -> dict[str, torch.Tensor]:
    return load_hypersl(tiny_backbone).state_dict()


@pytest.mark.parametrize("bn_mode", ["chunk", "running"])
def test_k_path_before_any_step_equals_the_cached_export(raw, tiny_backbone, bn_mode) -> None:
    data = feature_bundle(raw, tiny_backbone, bn_mode)
    backbone, chunked = build_backbone({"freeze_depth": 1, **backbone_config(tiny_backbone, bn_mode)}, data)
    for name in ("train", "val"):
        x, _ = getattr(chunked, name).batch(np.arange(2))
        pixels = torch.from_numpy(x.reshape(-1, x.shape[-1]))
        with torch.inference_mode():
            z = backbone(pixels[:, :-1], pixels[:, -1].long()).numpy()
        cached = getattr(data, name).images[:2].reshape(-1, backbone.dim).astype(np.float32)
        np.testing.assert_allclose(z, cached, rtol=2e-3, atol=2e-3)  # the cache is float16


@pytest.mark.parametrize("k", [0, 1, "all"])
def test_one_step_changes_only_the_allowed_parameters(data, bb, k) -> None:
    n_groups = len(build_hypersl("tiny").layer_groups())
    k = n_groups if k == "all" else k
    backbone, chunked = build_backbone({"freeze_depth": k, **bb}, data)
    head = PixelFC(backbone.dim, get_spec("hyko2").n_classes)
    model = BackbonePixelFC(backbone, head)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    opt = torch.optim.AdamW(param_groups(model, 1e-2, 1e-2, backbone=backbone, backbone_lr=1e-2))
    x, y = chunked.train.batch(np.arange(2))
    x, y = torch.from_numpy(x.reshape(-1, x.shape[-1])), torch.from_numpy(y.reshape(-1))
    model.train()
    torch.nn.functional.cross_entropy(model(x), y, ignore_index=get_spec("hyko2").ignore_index).backward()
    opt.step()
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, before[n])}
    bb = {n.removeprefix("backbone.hypersl.") for n in changed if n.startswith("backbone.")}
    assert {n for n in changed if n.startswith("head.")} == {"head.norm.weight", "head.norm.bias",
                                                             "head.norm.running_mean", "head.norm.running_var",
                                                             "head.norm.num_batches_tracked", "head.fc.weight",
                                                             "head.fc.bias"}
    if k == 0:
        assert bb == set()
    elif k == 1:
        assert bb and all(n.startswith("transformer_encoder_layer.") for n in bb)
        assert len(bb) == len(list(model.backbone.hypersl.transformer_encoder_layer.parameters()))
    else:  # everything used for features: all parameters except pe/div_term/decoder; BN statistics untouched
        params = {n for n, _ in model.backbone.hypersl.named_parameters()}
        assert bb == {n for n in params if n not in ("pe", "div_term") and not n.startswith(DECODER)}
    assert not any("running_" in n or "num_batches" in n for n in bb)


@pytest.mark.parametrize(("trainable", "config"), [
    (train_crossdomain_fc, FC),
    (train_crossdomain, RUNET),
    (train_crossdomain_fc, {**FC, "freeze_depth": 3}),  # trainable stem: chunk statistics follow the weights
], ids=["crossdomain-fc", "crossdomain", "crossdomain-fc-all"])
def test_k_trial_resumes_identically_from_its_epoch_checkpoint(trainable, config, data, bb, weights,
                                                                tmp_path) -> None:
    from ray import tune

    config = {**config, **bb}
    full = run(trainable, config, data, keep=tmp_path)
    assert [m["epoch"] for m in full.metrics] == [1, 2, 3]
    assert all(math.isfinite(m["train_loss"]) and 0 <= m["val_miou"] <= 1 for m in full.metrics)
    state = torch.load(tmp_path / "epoch2" / "state.pt", map_location="cpu", weights_only=True)
    trained = {k.removeprefix("backbone.hypersl."): v for k, v in state["model"].items() if k.startswith("backbone.")}
    assert not torch.equal(trained["transformer_encoder_layer.mlp.fc2.weight"],
                           weights["transformer_encoder_layer.mlp.fc2.weight"])
    stem = "embedding_layer_4.0.weight"
    # frozen parameters are not checkpointed (the trial rebuilds them from the backbone); trained ones are
    assert (stem in trained) == (config["freeze_depth"] >= 3)
    if stem in trained:
        assert not torch.equal(trained[stem], weights[stem])

    resumed = run(trainable, config, data, ckpt=tune.Checkpoint.from_directory(str(tmp_path / "epoch2")))
    assert [m["epoch"] for m in resumed.metrics] == [3]
    for key in ("train_loss", "val_miou", "best_val_miou", "test_miou", "test_oa"):
        assert resumed.metrics[0][key] == full.metrics[-1][key], key
    assert full.metrics[-1]["backbone_hash"] == data.backbone_hash == bb["backbone_hash"]


def test_k0_is_the_cached_path_and_k_and_backbone_lr_change_the_result(data, bb) -> None:
    one = {**FC, **bb, "max_epochs": 1, "final": False}
    k0 = run(train_crossdomain_fc, {**one, "freeze_depth": 0}, data).metrics[0]
    bare = {k: v for k, v in one.items() if k not in bb}
    without = run(train_crossdomain_fc, {**bare, "freeze_depth": 0}, replace(data, raw=None)).metrics[0]
    assert k0["train_loss"] == without["train_loss"]  # k = 0 never touches the checkpoint or the raw spectra
    k0_other_blr = run(train_crossdomain_fc, {**one, "freeze_depth": 0, "backbone_lr": 1e-5}, data).metrics[0]
    assert k0_other_blr["train_loss"] == k0["train_loss"]  # backbone_lr is ignored at k = 0
    k1 = run(train_crossdomain_fc, one, data).metrics[0]
    k1_blr = run(train_crossdomain_fc, {**one, "backbone_lr": 1e-2}, data).metrics[0]
    assert len({k0["train_loss"], k1["train_loss"], k1_blr["train_loss"]}) == 3
    assert k1["n_params"] > k0["n_params"]
    with pytest.raises(ValueError, match="freeze_depth"):
        run(train_crossdomain_fc, one, replace(data, raw=None))  # k > 0 without the raw spectra
    with pytest.raises(ValueError, match="freeze_depth"):
        run(train_crossdomain_fc, bare, data)  # k > 0 without the checkpoint path


def test_search_spaces_propose_freeze_depth_and_backbone_lr() -> None:
    for strategy in (s for s in STRATEGIES.values() if s.inputs == "features"):
        space = strategy.load_search_space()
        assert {"freeze_depth", "backbone_lr"} <= set(space), strategy.name
        fd, blr = space["freeze_depth"], space["backbone_lr"]
        assert fd.low == 0 and 1 <= fd.high < len(build_hypersl("tiny").layer_groups())  # the stem stays frozen
        assert blr.log and blr.low < blr.high <= space["lr"].high


def test_random_crops_move_chunk_ids_with_their_pixels(data, bb) -> None:
    _, chunked = build_backbone({"freeze_depth": 1, **bb}, data)
    src = chunked.train
    windows = crop_windows(src, 16, np.random.default_rng(0))
    assert windows is not None and len(windows) == len(src)
    ds = SampleDataset(src)
    h, w = src.shapes[0]
    for i, (r, c, ch, cw) in enumerate(windows):
        x, y = ds[(i, r, c, ch, cw)]
        assert x.shape[:2] == (16, 16) == (ch, cw) and x.shape[-1] == src.n_channels
        full_x, full_y = src.base.read(i)
        ids = chunk_id_map(1, h, w, src.chunk_size, src.offsets[i])[0]
        np.testing.assert_array_equal(x[..., -1], ids[r : r + 16, c : c + 16])  # the id channel is the last one
        np.testing.assert_array_equal(x[..., :-1], full_x[r : r + 16, c : c + 16])
        np.testing.assert_array_equal(y, full_y[r : r + 16, c : c + 16])
    assert crop_windows(src, 1000, np.random.default_rng(0)) is None
