"""RU-Net (docs/reference.md §R7): parameter count, odd sizes, gradients, dropout placement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study.data.specs import get_spec
from study.models.runet import MIN_SIZE, WIDTHS, RUNet, build_runet, count_parameters


@pytest.mark.parametrize(
    ("in_channels", "n_classes", "expected"),
    [
        (get_spec("hyko2").n_bands, get_spec("hyko2").n_classes, 17_270_539),  # 15 bands, 11 classes
        (get_spec("hcv2").n_bands, get_spec("hcv2").n_classes, 17_336_212),  # 128 bands, 20 classes
        (256, get_spec("hyko2").n_classes, 17_409_355),  # HyperSL features into HyKo2
    ],
)
def test_parameter_count_matches_reference(in_channels, n_classes, expected):
    model = build_runet(in_channels, n_classes, "full")
    assert expected == 17_261_184 + 576 * in_channels + 65 * n_classes
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=False) == expected


def test_count_parameters_trainable_only():
    model = build_runet(4, 3, "tiny")
    total = count_parameters(model)
    model.outc.requires_grad_(False)
    assert count_parameters(model) == total - (8 * 3 + 3)
    assert count_parameters(model, trainable_only=False) == total


def test_reference_state_dict_names():
    keys = set(build_runet(3, 2, "tiny").state_dict())
    for key in (
        "inc.double_conv.0.weight",
        "inc.double_conv.1.running_mean",
        "down4.maxpool_conv.2.double_conv.3.weight",
        "up1.conv.double_conv.4.bias",
        "outc.conv.weight",
        "outc.conv.bias",
    ):
        assert key in keys
    assert "inc.double_conv.0.bias" not in keys  # convs before BN have no bias


@pytest.mark.parametrize("size", [(5, 7), (1, 1), (17, 33), (31, 64), (33, 47), (64, 128), (254, 510)])
def test_output_keeps_input_size(size):
    model = build_runet(3, 5, "tiny").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(711, 944), (216, 409)])
def test_full_size_images_keep_their_size(size):
    model = build_runet(2, 4, 4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, *size)).shape == (1, 4, *size)


def test_tiny_inputs_are_zero_padded_then_cropped():
    model = build_runet(3, 4, "tiny").eval()
    x = torch.randn(1, 3, 5, 7)
    padded = F.pad(x, [0, MIN_SIZE - 7, 0, MIN_SIZE - 5])
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[:, :, :5, :7])


def test_trains_at_batch_size_one_on_tiny_input():
    # BatchNorm needs > 1 value per channel in train mode; padding to MIN_SIZE guarantees 2×2 at 1/16.
    model = build_runet(3, 4, "tiny").train()
    model(torch.randn(1, 3, 9, 20)).sum().backward()


def test_gradients_reach_every_parameter_and_the_input():
    torch.manual_seed(0)
    model = build_runet(3, 4, "tiny", dropout=0.0).train()
    x = torch.randn(2, 3, 35, 41, requires_grad=True)
    target = torch.randint(0, 4, (2, 35, 41))
    F.cross_entropy(model(x), target, ignore_index=0).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dropout_only_in_down4():
    model = build_runet(3, 4, "tiny", dropout=0.25)
    active = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0}
    assert active == {"down4.maxpool_conv.1": 0.25}
    assert not any(isinstance(m, nn.Dropout2d) for m in model.modules())
    plain = build_runet(3, 4, "tiny", dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in plain.modules())


def test_eval_is_deterministic_and_train_dropout_is_not():
    torch.manual_seed(0)
    model = build_runet(3, 4, "tiny", dropout=0.5)
    x = torch.randn(2, 3, 32, 48)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        model.train()
        # two train-mode passes on the same batch: BN uses the same batch statistics, only dropout differs
        a, b = model(x), model(x)
    assert not torch.equal(a, b)


def test_seeded_construction_is_reproducible():
    torch.manual_seed(3)
    a = build_runet(3, 4, "tiny").state_dict()
    torch.manual_seed(3)
    b = build_runet(3, 4, "tiny").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_named_widths_and_bad_arguments():
    assert WIDTHS == {"full": 64, "small": 16, "tiny": 8}
    assert build_runet(3, 4, "small").base_width == 16
    assert build_runet(3, 4, 12).base_width == 12
    with pytest.raises(ValueError, match="unknown RU-Net width"):
        build_runet(3, 4, "huge")
    with pytest.raises(ValueError, match="positive integer"):
        build_runet(3, 4, 0)
    with pytest.raises(ValueError, match="dropout"):
        RUNet(3, 4, dropout=1.0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_runet(3, 4, "tiny")(torch.randn(1, 5, 32, 32))
