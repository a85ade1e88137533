"""HyperSL architecture: sizes, released state-dict names, the reference forward and its quirks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from study.models.freezing import set_trainable_depth
from study.models.hypersl import (
    SIZES,
    Block,
    FinalLayer,
    HyperSL,
    build_hypersl,
    count_parameters,
    downstream_parameters,
    masked_modelling_loss,
)

_BLOCK = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
          "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def released_keys(enc: int, dec: int) -> set[str]:
    """The key names of the released checkpoint after stripping ``module.`` (docs/reference.md §R14)."""
    keys = {"global_token", "mask_token", "div_term", "pe", "norm1.weight", "norm1.bias", "norm2.weight",
            "norm2.bias", "decoder_layer.0.weight", "decoder_layer.0.bias", "corss_attn.qkv.weight",
            "corss_attn.qkv.bias", "corss_attn.proj.weight", "corss_attn.proj.bias"}
    for i in range(1, 5):
        keys |= {f"embedding_layer_{i}.0.weight", f"embedding_layer_{i}.0.bias"}
        keys |= {f"embedding_layer_{i}.1.{b}" for b in _BN}
    keys |= {f"encoder_blocks.{j}.{k}" for j in range(enc - 1) for k in _BLOCK}
    keys |= {f"transformer_encoder_layer.{k}" for k in _BLOCK}
    keys |= {f"decoder_blocks.{j}.{k}" for j in range(dec - 1) for k in _BLOCK}
    return keys


def test_small_matches_the_paper_parameter_counts_and_names() -> None:
    model = build_hypersl("small")
    assert count_parameters(model) == 9_027_841  # ≈ 9.03 M trainable
    assert count_parameters(model, trainable_only=False) - count_parameters(model) == 128_128  # pe + div_term
    assert downstream_parameters(model) == 6_524_928  # ≈ 6.52 M used downstream
    assert set(model.state_dict()) == released_keys(8, 4)
    assert model.pe.shape == (1, 500, 256) and not model.pe.requires_grad and not model.div_term.requires_grad
    assert torch.allclose(model.div_term, torch.exp(torch.arange(0, 256, 2) * -(math.log(100.0) / 256)))


@pytest.mark.parametrize("size", ["tiny", "cpu"])
def test_every_size_has_the_released_layout(size: str) -> None:
    cfg = SIZES[size]
    assert set(build_hypersl(size).state_dict()) == released_keys(cfg.encoder_depth, cfg.decoder_depth)


def _reference_features(m: HyperSL, x: torch.Tensor, wl: torch.Tensor) -> torch.Tensor:
    """A literal transcription of the reference encoder (explicit attention, random shuffle at r = 0)."""

    def attn(mod, t):
        n, length, c = t.shape
        qkv = mod.qkv(t).reshape(n, length, 3, mod.num_heads, c // mod.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = ((q @ k.transpose(-2, -1)) * (c // mod.num_heads) ** -0.5).softmax(-1)
        return mod.proj((a @ v).transpose(1, 2).reshape(n, length, c))

    def mlp(mod, t):
        return mod.fc2(F.gelu(mod.fc1(t)))

    t = x[:, None]
    t = torch.cat((m.embedding_layer_1(t), m.embedding_layer_2(t), m.embedding_layer_3(t)), dim=1)
    t = m.embedding_layer_4(t).transpose(2, 1)
    wave = ((wl - 400) / 10).unsqueeze(-1)
    pos = m.pe.repeat(t.shape[0], 1, 1)
    pos[:, : t.shape[1], 0::2] = torch.sin(m.div_term * wave)
    pos[:, : t.shape[1], 1::2] = torch.cos(m.div_term * wave)
    t = t + pos[:, : t.shape[1]]
    perm = torch.argsort(torch.rand(t.shape[0], t.shape[1]), dim=1)
    t = torch.gather(t, 1, perm[..., None].repeat(1, 1, t.shape[2]))
    t = torch.cat((m.global_token.expand(t.shape[0], -1, -1), t), dim=1)
    for b in m.encoder_blocks:
        t = t + attn(b.attn, b.norm1(t))
        t = t + mlp(b.mlp, b.norm2(t))
    f = m.transformer_encoder_layer
    t = attn(f.attn, f.norm1(t))
    t = t + t
    t = t + mlp(f.mlp, f.norm2(t))
    return t[:, 0] + t[:, 1:].mean(1)


@pytest.mark.parametrize("train", [True, False])
def test_features_equal_the_reference_forward(train: bool) -> None:
    torch.manual_seed(0)
    m = build_hypersl("tiny").train(train)
    x = torch.rand(64, 25) * 4.0
    wl = torch.linspace(535.0, 975.0, 25)
    with torch.no_grad():
        ours, ref = m.features(x, wl), _reference_features(m, x, wl)
    assert ours.shape == (64, 32)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_final_layer_drops_the_residual() -> None:
    """LN removes a per-token constant; a layer that discards its input is then blind to it."""
    torch.manual_seed(0)
    x = torch.randn(3, 7, 32)
    shift = torch.randn(3, 7, 1) * 5
    final, block = FinalLayer(32, 2), Block(32, 2)
    final.load_state_dict(block.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(final(x + shift), final(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(block(x + shift), block(x), atol=1e-2)


@pytest.mark.parametrize("bands", [1, 15, 128, 500])
def test_any_band_count_up_to_500(bands: int) -> None:
    m = build_hypersl("tiny").eval()
    wl = torch.linspace(450.0, 1000.0, bands)
    with torch.no_grad():
        assert m.features(torch.rand(4, bands), wl).shape == (4, 32)
        assert m.features(torch.rand(4, 1, bands), wl.expand(4, -1)).shape == (4, 32)


def test_bad_shapes_are_rejected() -> None:
    m = build_hypersl("tiny")
    with pytest.raises(ValueError, match="1..500 bands"):
        m.features(torch.rand(2, 501), torch.linspace(400, 1000, 501))
    with pytest.raises(ValueError, match="do not fit"):
        m.features(torch.rand(2, 10), torch.linspace(400, 1000, 9))
    with pytest.raises(ValueError, match="unknown HyperSL size"):
        build_hypersl("enormous")


def test_masked_pretraining_pass_reconstructs_every_band() -> None:
    torch.manual_seed(0)
    m = build_hypersl("tiny").train()
    x = torch.rand(16, 15)
    z, recon = m(x, torch.linspace(468.0, 643.0, 15), mask_ratio=0.95)  # keeps 1 token, not 0
    assert z.shape == (16, 32) and recon.shape == (16, 15)
    assert torch.isfinite(z).all() and (recon >= 0).all() and (recon <= 1).all()
    loss = masked_modelling_loss(recon, x)
    loss.backward()
    assert m.decoder_layer[0].weight.grad is not None and m.embedding_layer_1[0].weight.grad is not None
    assert masked_modelling_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)


def test_mask_input_hides_the_masked_bands_from_the_stem() -> None:
    """With mask_input the output cannot depend on masked band values (the stem's kernels would leak them)."""
    m = build_hypersl("tiny").eval()
    x, wl = torch.rand(4, 25), torch.linspace(535.0, 975.0, 25)
    torch.manual_seed(1)
    keep = torch.argsort(torch.rand(4, 25), dim=1)[:, : int(25 * 0.5)]  # the ids tokens() will draw
    changed = x.clone()
    changed[torch.ones_like(x, dtype=torch.bool).scatter_(1, keep, False)] += 0.5
    outs = {}
    with torch.no_grad():
        for name, mask_input in (("leaky", False), ("hidden", True)):
            for key, xx in (("x", x), ("changed", changed)):
                torch.manual_seed(1)
                outs[name, key] = m(xx, wl, mask_ratio=0.5, mask_input=mask_input)
    torch.testing.assert_close(outs["hidden", "x"], outs["hidden", "changed"])
    assert not torch.allclose(outs["leaky", "x"][0], outs["leaky", "changed"][0])
    with torch.no_grad():  # feature extraction (mask ratio 0) is unaffected by the option
        torch.testing.assert_close(m(x, wl, 0.0, mask_input=True)[0], m.features(x, wl))


def test_layer_groups_and_freeze_depth() -> None:
    m = build_hypersl("cpu")  # 3 encoder layers: stem, 2 blocks, final layer
    groups = m.layer_groups()
    assert len(groups) == 4 and groups[-1] == [m.transformer_encoder_layer] and groups[1] == [m.encoder_blocks[0]]
    assert any(item is m.global_token for item in groups[0])  # the global token freezes with the stem
    set_trainable_depth(m, 0)
    assert count_parameters(m) == 0
    set_trainable_depth(m, 1)
    assert count_parameters(m) == sum(p.numel() for p in m.transformer_encoder_layer.parameters())
    set_trainable_depth(m, 3)
    assert not m.global_token.requires_grad
    set_trainable_depth(m, 4)
    assert count_parameters(m) == downstream_parameters(m)
    assert m.global_token.requires_grad and not m.mask_token.requires_grad and not m.pe.requires_grad
    with pytest.raises(ValueError, match="0 <= freeze_depth <= 4"):
        set_trainable_depth(m, 5)

