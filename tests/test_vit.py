"""The DINOv2 ViT: timm's names and shapes, weight files in three layouts, refusals, hub-cache lookup."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from study.errors import ConfigError, HsiStudyError
from study.models.checkpoints import checkpoint_hash, save_checkpoint, st_encode
from study.models.hypersl import build_hypersl
from study.models.vit import SIZES, build_vit, resample_pos_embed
from study.models.vit_weights import cached_weights, inspect_weights, load_vit, resolve_rgb_backbone

BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
              "mlp.fc2.bias", "ls2.gamma")


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    vit = build_vit("tiny")
    with torch.no_grad():  # LayerScale 1e-5 would hide block mistakes in an output comparison: make blocks count
        for blk in vit.blocks:
            blk.ls1.gamma.fill_(0.5)
            blk.ls2.gamma.fill_(0.5)
    return vit.eval()


def _same_output(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def _to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names -> Hugging Face Dinov2Model names (split qkv): the inverse the loader must undo."""
    out = {"embeddings.mask_token": torch.zeros(1, state["cls_token"].shape[-1])}
    top = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
           "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    for k, v in state.items():
        if k in top:
            out[top[k]] = v
            continue
        i, rest = re.match(r"blocks\.(\d+)\.(.*)", k).groups()
        p = f"encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            for name, part in zip(("query", "key", "value"), v.chunk(3, dim=0), strict=True):
                out[f"{p}attention.attention.{name}.{rest.split('.')[-1]}"] = part
        else:
            rest = (rest.replace("attn.proj.", "attention.output.dense.").replace("ls1.gamma", "layer_scale1.lambda1")
                    .replace("ls2.gamma", "layer_scale2.lambda1"))
            out[p + rest] = v
    return out


def test_state_dict_has_timms_dinov2_names_and_shapes() -> None:
    with torch.device("meta"):
        sd = {k: tuple(v.shape) for k, v in build_vit("small").state_dict().items()}
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                "norm.bias"} | {f"blocks.{i}.{k}" for i in range(12) for k in BLOCK_KEYS}
    assert set(sd) == expected
    assert sd["pos_embed"] == (1, 37 * 37 + 1, 384) and sd["cls_token"] == (1, 1, 384)
    assert sd["patch_embed.proj.weight"] == (384, 3, 14, 14) and sd["blocks.0.attn.qkv.weight"] == (1152, 384)
    assert sd["blocks.11.mlp.fc1.weight"] == (1536, 384) and sd["blocks.0.ls1.gamma"] == (384,)
    assert [(c.dim, c.depth, c.heads) for c in (SIZES["base"], SIZES["large"])] == [(768, 12, 12), (1024, 24, 16)]
    assert torch.all(build_vit("tiny").blocks[0].ls2.gamma == 1e-5)  # LayerScale init of timm's dinov2 models


def test_position_embedding_is_resampled_to_the_input_grid(tiny) -> None:
    assert resample_pos_embed(tiny.pos_embed, (37, 37)) is tiny.pos_embed
    out = resample_pos_embed(tiny.pos_embed, (2, 3))
    assert out.shape == (1, 7, 64) and torch.equal(out[:, 0], tiny.pos_embed[:, 0])
    assert tiny(torch.zeros(1, 3, 14 * 5, 14 * 2)).shape == (1, 64, 5, 2)
    with pytest.raises(ValueError, match="multiple of the patch"):
        tiny(torch.zeros(1, 3, 29, 45))


@pytest.mark.parametrize("layout", ["timm-safetensors", "timm-pth", "dinov2-pth", "hf-safetensors", "wrapped-pth"])
def test_weights_round_trip_in_every_layout(layout: str, tiny, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    path = tmp_path / ("w.safetensors" if layout.endswith("safetensors") else "w.pth")
    if layout == "timm-safetensors":
        path.write_bytes(st_encode(state, {"format": "pt"}))
    elif layout == "hf-safetensors":
        path.write_bytes(st_encode(_to_hf(state), {"format": "pt"}))
    else:
        obj = {**state, "mask_token": torch.zeros(1, 64)} if layout == "dinov2-pth" else state
        obj = {"teacher": {f"backbone.{k}": v for k, v in obj.items()}} if layout == "wrapped-pth" else obj
        torch.save(obj, path)
    vit, info = load_vit(path)
    assert info.size == "tiny" and info.sha == checkpoint_hash(path)
    assert info.layout == {"hf-safetensors": "hf", "dinov2-pth": "dinov2"}.get(layout, "timm")
    for k, v in vit.state_dict().items():
        assert torch.equal(v, state[k]), k
    _same_output(vit.eval(), tiny)
    assert inspect_weights(path).sha == info.sha


def test_file_of_another_architecture_is_refused_with_the_offending_keys(tmp_path: Path) -> None:
    hypersl = save_checkpoint(build_hypersl("tiny"), tmp_path / "hypersl.pt")
    with pytest.raises(HsiStudyError, match=r"not DINOv2 ViT weights.*missing: cls_token.*unexpected"):
        load_vit(hypersl)
    state = build_vit("tiny").state_dict()
    state["blocks.1.attn.qkv.weight"] = state["blocks.1.attn.qkv.weight"][:10]
    state["extra.thing"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(HsiStudyError, match=r"1 unexpected: extra.thing.*shape mismatch.*blocks.1.attn.qkv.weight"):
        inspect_weights(tmp_path / "bad.pth")
    torch.save(build_vit("tiny").state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ConfigError, match="--vit-size small does not match"):
        load_vit(tmp_path / "tiny.pth", "small")


def test_a_weights_file_that_would_run_code_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"cls_token": torch.zeros(1), "evil": Path("x")}, buf)  # pickles a class: weights_only refuses
    (tmp_path / "evil.pth").write_bytes(buf.getvalue())
    with pytest.raises(HsiStudyError, match="refused"):
        load_vit(tmp_path / "evil.pth")


def test_released_weights_are_found_in_the_hub_cache_and_never_downloaded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cached_weights("small") is None and cached_weights("tiny") is None
    with pytest.raises(ConfigError, match="--rgb-weights PATH.*--allow-random-init"):
        resolve_rgb_backbone(None, None, allow_random_init=False, default_size="tiny")
    rnd = resolve_rgb_backbone(None, None, allow_random_init=True, default_size="tiny")
    assert (rnd.size, rnd.pretrained, rnd.sha) == ("tiny", False, None)
    assert rnd.trial_config()["allow_random_init"] is True

    snap = tmp_path / "hf" / "hub" / "models--timm--vit_small_patch14_dinov2.lvd142m" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(st_encode(build_vit("tiny").state_dict(), {}))
    assert cached_weights("small") == snap / "model.safetensors"
    found = resolve_rgb_backbone(None, None, allow_random_init=False, default_size="tiny")
    assert found.pretrained and found.sha == checkpoint_hash(snap / "model.safetensors")
    config = found.trial_config()  # path + hash, the same keys as a HyperSL backbone's
    assert config["backbone_path"] == str((snap / "model.safetensors").resolve())
    assert config["backbone_hash"] == found.sha


TIMM_FIXTURE = Path(__file__).parent / "fixtures" / "vit_timm"


def test_same_forward_as_timm() -> None:
    """timm 1.0.29's own forward_features, saved by scripts/make_vit_reference.py (fixture PROVENANCE.md): our
    loader reads timm's safetensors, and our tokens equal timm's on the stored 7 x 7 grid and on inputs whose
    position embedding is resampled (2 x 3: downsampled, antialiased; 10 x 4: up in one axis, down in the other)."""
    vit, info = load_vit(TIMM_FIXTURE / "vit_tiny_timm.safetensors")
    assert (info.size, info.layout, vit.cfg.img_size) == ("tiny", "timm", 98)
    vit.eval()
    with np.load(TIMM_FIXTURE / "reference.npz") as ref:
        names = sorted(k for k in ref.files if k.startswith("x_"))
        assert names == ["x_140x56", "x_28x42", "x_98x98"]
        for name in names:
            x, theirs = torch.from_numpy(ref[name]), torch.from_numpy(ref[f"features_{name}"])
            with torch.no_grad():
                torch.testing.assert_close(vit.forward_tokens(x), theirs)  # observed max |diff| ~7e-7
                tokens = vit(x).flatten(2).transpose(1, 2)
            torch.testing.assert_close(tokens, theirs[:, 1:])
