"""HyperSL checkpoints: released layout round trips, strict loading, refusing pickled code."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from study.errors import HsiStudyError
from study.models.checkpoints import checkpoint_hash, infer_config, load_hypersl, read_checkpoint, save_checkpoint
from study.models.hypersl import HyperSLConfig, build_hypersl
from study.models.runet import build_runet

WL = torch.linspace(468.0, 643.0, 15)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_writes_the_released_layout_and_loads_strictly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_hypersl("tiny")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2)
    _, recon = model(torch.rand(8, 15), WL, 0.5)
    recon.sum().backward()
    opt.step()
    sched.step()
    path = save_checkpoint(model, tmp_path / "ours.pt", epoch=5, optimizer=opt, scheduler=sched)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # loadable without pickle code
    assert {"epoch", "model", "optimizer", "scheduler"} <= set(raw) and raw["epoch"] == 5
    assert all(k.startswith("module.") for k in raw["model"])
    loaded = load_hypersl(path)
    _same_weights(model, loaded)
    model.eval(), loaded.eval()
    with torch.no_grad():
        x = torch.rand(4, 15)
        assert torch.equal(model.features(x, WL), loaded.features(x, WL))


def test_a_released_style_file_without_config_loads_by_shape(tmp_path: Path) -> None:
    """Exactly what HyperSL's train.py writes: epoch/model/optimizer/scheduler, ``module.`` keys, no config."""
    model = build_hypersl("cpu")
    path = tmp_path / "5_base_mask95_checkpoint.pt"
    torch.save({"epoch": 5, "model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"T_0": 10}}, path)
    assert infer_config(model.state_dict()) == ("cpu", model.config)
    loaded = load_hypersl(path)
    assert loaded.config == model.config
    _same_weights(model, loaded)
    # a plain state dict without prefixes also loads
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    _same_weights(model, load_hypersl(tmp_path / "plain.pt"))


def test_unnamed_sizes_need_heads(tmp_path: Path) -> None:
    cfg = HyperSLConfig(dim=48, heads=3, encoder_depth=2, decoder_depth=1)
    state = build_hypersl(cfg).state_dict()
    with pytest.raises(HsiStudyError, match="attention heads"):
        infer_config(state)
    assert infer_config(state, heads=3) == (None, cfg)


class _Evil:
    """Unpickling this would create the marker file (pickle calls ``open(marker, 'w')``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_file_that_needs_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": build_hypersl("tiny").state_dict(), "payload": _Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(HsiStudyError, match=r"needs pickle.*refuse it for safety"):
        load_hypersl(path)
    assert not marker.exists()


def test_another_architecture_is_rejected_with_the_offending_keys(tmp_path: Path) -> None:
    runet = tmp_path / "runet.pt"
    torch.save({"model": {f"module.{k}": v for k, v in build_runet(15, 11, "tiny").state_dict().items()}}, runet)
    with pytest.raises(HsiStudyError, match="not a HyperSL checkpoint"):
        load_hypersl(runet)
    with pytest.raises(HsiStudyError, match=r"missing: .*unexpected: inc\.double_conv"):
        load_hypersl(runet, size="tiny")
    tiny = save_checkpoint(build_hypersl("tiny"), tmp_path / "tiny.pt")
    with pytest.raises(HsiStudyError, match=r"shape mismatch \(file vs model\): global_token \(1, 1, 32\) vs "
                       r"\(1, 1, 64\).*\(\+\d+ more\)"):
        load_hypersl(tiny, size="cpu")


def test_safetensors_round_trip(tmp_path: Path) -> None:
    model = build_hypersl("tiny")
    path = save_checkpoint(model, tmp_path / "w.safetensors", epoch=3)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    assert n % 8 == 0 and header["__metadata__"]["epoch"] == "3"
    assert header["module.global_token"] == {"dtype": "F32", "shape": [1, 1, 32],
                                             "data_offsets": header["module.global_token"]["data_offsets"]}
    assert read_checkpoint(path)["epoch"] == 3
    _same_weights(model, load_hypersl(path))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{not json")
    with pytest.raises(HsiStudyError, match="not a valid safetensors"):
        read_checkpoint(tmp_path / "bad.safetensors")


def test_checkpoint_hash_and_missing_files(tmp_path: Path) -> None:
    path = save_checkpoint(build_hypersl("tiny"), tmp_path / "a.pt")
    assert checkpoint_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    with pytest.raises(HsiStudyError, match="not found"):
        load_hypersl(tmp_path / "missing.pt")
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(HsiStudyError, match="truncated"):
        load_hypersl(tmp_path / "trunc.pt")
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 107)))  # neither zip, pickle nor safetensors
    with pytest.raises(HsiStudyError, match="not a torch checkpoint or safetensors file"):
        load_hypersl(tmp_path / "noise.pt")
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02" + b"junk")  # a broken legacy pickle stream: still refused
    with pytest.raises(HsiStudyError, match="legacy.pt"):
        load_hypersl(tmp_path / "legacy.pt")


def test_a_backbone_with_wrong_keys_names_the_file(tmp_path: Path) -> None:
    """``--backbone`` pointing at another network's weights: the one-line error says which file it read."""
    other = tmp_path / "not_hypersl.pt"
    torch.save({"model": build_runet(15, 11, "tiny").state_dict()}, other)
    with pytest.raises(HsiStudyError, match="not a HyperSL checkpoint") as caught:
        load_hypersl(other)
    assert str(other) in str(caught.value)
    odd = tmp_path / "odd.pt"
    state = build_hypersl("tiny").state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("decoder_blocks.")}
    torch.save({"model": state}, odd)
    with pytest.raises(HsiStudyError, match="matches no named size") as caught:
        load_hypersl(odd)
    assert str(odd) in str(caught.value)
