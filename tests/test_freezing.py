"""study.models.freezing: one trainable-depth setter and one weight-decay rule for every arm of a comparison."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from study.data.specs import get_spec
from study.models.freezing import param_groups, set_trainable_depth
from study.models.heads import PixelFC
from study.models.hypersl import build_hypersl
from study.models.hypersl_partial import BackbonePixelFC, PartialHyperSL
from study.models.rgb_bridge import build_bridge
from study.models.runet import build_runet
from study.models.vit import build_vit
from study.models.vit_seg import ViTSegmenter, build_head

LR, BLR, WD = 1e-3, 1e-5, 0.05


def split_by_group(model: nn.Module, groups: list[dict]) -> dict[tuple[float, float], set[str]]:
    """(lr, weight_decay) -> names of the parameters in the group(s) with those settings."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[tuple[float, float], set[str]] = {}
    for g in groups:
        out.setdefault((g["lr"], g["weight_decay"]), set()).update(names[id(p)] for p in g["params"])
    return out


def decayed_and_not(model: nn.Module, groups: list[dict]) -> tuple[set[str], set[str]]:
    by = split_by_group(model, groups)
    return ({n for (_, wd), ns in by.items() if wd > 0 for n in ns},
            {n for (_, wd), ns in by.items() if wd == 0 for n in ns})


def test_runet_from_scratch_decays_conv_weights_only() -> None:
    model = build_runet(15, 11, width="tiny")
    decay, no_decay = decayed_and_not(model, param_groups(model, LR, WD))
    assert decay | no_decay == {n for n, _ in model.named_parameters()} and not decay & no_decay
    bns = [m for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)]
    norms = {f"{m}.{p}" for m in bns for p in ("weight", "bias")}
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert norms and norms | biases <= no_decay
    assert decay and all(p.ndim > 1 for n, p in model.named_parameters() if n in decay)


def test_pixel_head_does_not_decay_its_batchnorm_or_bias() -> None:
    model = PixelFC(16, 11)
    assert split_by_group(model, param_groups(model, LR, WD)) == {
        (LR, WD): {"fc.weight"}, (LR, 0.0): {"norm.weight", "norm.bias", "fc.bias"}}


@pytest.mark.parametrize("bridge", ["pseudo-rgb", "learned"])
def test_vit_tokens_positions_norms_and_layerscale_are_not_decayed(bridge: str) -> None:
    cube = np.random.default_rng(0).gamma(2.0, 0.1, size=(2, 28, 28, 15)).astype(np.float32)
    model = ViTSegmenter(build_bridge(bridge, cube, get_spec("hyko2")), build_vit("tiny"), build_head("linear", 64, 11))
    set_trainable_depth(model.vit, 5)  # everything, stem included
    by = split_by_group(model, param_groups(model, LR, WD, backbone=model.vit, backbone_lr=BLR))
    assert {"vit.pos_embed", "vit.cls_token", "vit.norm.weight", "vit.blocks.0.ls1.gamma",
            "vit.blocks.0.attn.qkv.bias"} <= by[BLR, 0.0]
    assert {"vit.patch_embed.proj.weight", "vit.blocks.0.attn.qkv.weight"} <= by[BLR, WD]
    assert by[LR, WD] == {"head.cls.weight"} and {"head.bn.weight", "head.cls.bias"} <= by[LR, 0.0]
    # a learned bridge declares its pseudo-RGB weights exempt (timm's no_weight_decay hook): a prior, not noise
    assert ({"bridge.proj.weight", "bridge.proj.bias"} <= by[LR, 0.0]) == (bridge == "learned")


def test_hypersl_global_token_is_not_decayed_and_the_backbone_gets_its_lr() -> None:
    hypersl = build_hypersl("tiny")
    n_groups = len(hypersl.layer_groups())
    backbone = PartialHyperSL(hypersl, n_groups, np.linspace(400.0, 700.0, 15), bn_mode="running")
    model = BackbonePixelFC(backbone, PixelFC(backbone.dim, 11))
    by = split_by_group(model, param_groups(model, LR, WD, backbone=backbone, backbone_lr=BLR))
    assert {"backbone.hypersl.global_token", "backbone.hypersl.embedding_layer_1.1.weight",
            "backbone.hypersl.transformer_encoder_layer.norm1.weight"} <= by[BLR, 0.0]
    assert "backbone.hypersl.transformer_encoder_layer.attn.qkv.weight" in by[BLR, WD]
    assert by[LR, WD] == {"head.fc.weight"}
    trained = {n for ns in by.values() for n in ns}
    assert not any(s in n for n in trained for s in ("mask_token", ".pe", "div_term", "decoder", "corss_attn"))


@pytest.mark.parametrize("make", [lambda: build_hypersl("tiny"), lambda: build_vit("tiny")], ids=["hypersl", "vit"])
def test_freeze_depth_counts_trainable_layer_groups_from_the_top(make) -> None:
    model = make()
    groups = model.layer_groups()
    for k in range(len(groups) + 1):
        set_trainable_depth(model, k)
        trainable = [any(p.requires_grad for item in g for p in
                         ([item] if isinstance(item, nn.Parameter) else item.parameters())) for g in groups]
        assert trainable == [False] * (len(groups) - k) + [True] * k, k
    with pytest.raises(ValueError, match="freeze_depth"):
        set_trainable_depth(model, len(groups) + 1)
    with pytest.raises(ValueError, match="freeze_depth"):
        set_trainable_depth(model, -1)


def test_frozen_parameters_get_no_group() -> None:
    vit = build_vit("tiny")
    set_trainable_depth(vit, 0)
    assert param_groups(vit, LR, WD, backbone=vit, backbone_lr=BLR) == []
    set_trainable_depth(vit, 1)
    params = {id(p) for g in param_groups(vit, LR, WD, backbone=vit, backbone_lr=BLR) for p in g["params"]}
    assert params == {id(p) for p in [*vit.blocks[-1].parameters(), *vit.norm.parameters()]}
    assert not vit.pos_embed.requires_grad
