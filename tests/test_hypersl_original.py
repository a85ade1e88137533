"""Our HyperSL against outputs of the ORIGINAL code (kkweil/HyperSL e56de7e7 engine/model.py).

The fixture (tests/fixtures/hypersl_original/, made by scripts/make_hypersl_reference.py
with timm 1.0.29) holds a checkpoint the original ``SpectralSharedEncoder`` wrote in the
released layout after a few training steps, and what the original computed from it: the
cross-domain export (train-mode BatchNorm over raster-order chunks of 50 and 7 pixels),
eval mode, and a masked pretraining pass. Here our loader reads that checkpoint and our
model / ``export_image`` must give the same numbers (fp32 tolerance); neither timm, the
original code nor the network is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from study.features import export_image
from study.models.checkpoints import load_hypersl, read_checkpoint
from study.models.hypersl import SIZES, HyperSL, masked_modelling_loss

FIXTURE = Path(__file__).parent / "fixtures" / "hypersl_original"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "reference.npz") as data:
        return dict(data)


@pytest.fixture()
def model(one_torch_thread) -> HyperSL:
    return load_hypersl(FIXTURE / "checkpoint.pt")


def _close(ours: np.ndarray | torch.Tensor, theirs: np.ndarray) -> None:
    """fp32 agreement (torch's float32 defaults: rtol 1.3e-6, atol 1e-5); observed max |diff| ~3e-6."""
    torch.testing.assert_close(torch.as_tensor(ours), torch.from_numpy(theirs))


def test_the_original_checkpoint_loads_strictly_at_its_size(model: HyperSL) -> None:
    raw = read_checkpoint(FIXTURE / "checkpoint.pt")
    assert {"epoch", "model", "optimizer", "scheduler"} <= set(raw) and "config" not in raw  # train.py's layout
    assert all(k.startswith("module.") for k in raw["model"])
    assert model.config == SIZES["tiny"]
    ours = model.state_dict()
    assert set(ours) == {k[len("module."):] for k in raw["model"]}
    for k, v in raw["model"].items():
        assert torch.equal(ours[k[len("module."):]], v), k
    # the original's training steps moved what an init-only file would leave trivial
    assert ours["embedding_layer_1.1.running_mean"].abs().min() > 0
    assert not torch.equal(ours["norm1.weight"], torch.ones_like(ours["norm1.weight"]))


@pytest.mark.parametrize("chunk", [50, 7])
def test_chunk_mode_export_equals_the_original_export(chunk: int, model: HyperSL, ref) -> None:
    """bn_mode="chunk" is the cross-domain export: chunks 50, 50, 20 and 17 x 7 + a 1-pixel chunk per image."""
    assert chunk in ref["chunks"]
    for image, theirs in zip(ref["images"], ref[f"chunk_{chunk}"], strict=True):
        _close(export_image(model, image, ref["wavelengths"], bn_mode="chunk", chunk_size=chunk), theirs)


def test_running_mode_export_equals_the_original_in_eval_mode(model: HyperSL, ref) -> None:
    for image, theirs in zip(ref["images"], ref["running"], strict=True):
        _close(export_image(model, image, ref["wavelengths"], bn_mode="running", chunk_size=50), theirs)


def test_the_reference_tells_the_bn_modes_and_chunk_sizes_apart(ref) -> None:
    """Why the two tests above can fail: a wrong BN mode or chunk size is far outside the tolerance."""
    assert np.abs(ref["chunk_50"] - ref["running"]).max() > 1.0
    assert np.abs(ref["chunk_50"] - ref["chunk_7"]).max() > 0.1


def test_pretraining_pass_equals_the_original(model: HyperSL, ref) -> None:
    """Masked modelling (mask ratio 0.5, train-mode BN): same mask draw from the same seed, same z, same recon."""
    spectra = torch.from_numpy(ref["pretrain_spectra"])
    wavelengths = torch.from_numpy(ref["wavelengths"]).float()
    torch.manual_seed(int(ref["pretrain_seed"]))
    with torch.no_grad():
        z, recon = model.train()(spectra, wavelengths, float(ref["pretrain_mask_ratio"]))
    _close(z, ref["pretrain_z"])
    _close(recon, ref["pretrain_recon"])
    _close(masked_modelling_loss(torch.from_numpy(ref["pretrain_recon"]), spectra), ref["pretrain_loss"].astype(
        np.float32))
