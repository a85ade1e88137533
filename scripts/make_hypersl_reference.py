#!/usr/bin/env python
"""Outputs of the ORIGINAL HyperSL code, for tests/test_hypersl_original.py.

Why: study/models/hypersl.py is a re-implementation, and a test that compares it with
a re-computation by our own code only checks that we agree with ourselves. This script
runs the authors' ``engine/model.py`` (kkweil/HyperSL e56de7e7, from a checkout given with
``--original``: the repository has no licence, so its code is not copied into this one) and
saves what it computes, so the test can
compare our loader, model and ``export_image`` against it without timm or the network.

What it does (tiny size: D 32, 2 heads, encoder depth 2, decoder depth 2, 15 bands):

1. builds ``SpectralSharedEncoder`` with a fixed seed and takes a few optimizer steps
   as the original ``train.py`` does (its ``MSE_SAM_loss``, AdamW betas (0.9, 0.95),
   wd 5e-5, grad-norm clip 5, ``CosineAnnealingWarmRestarts``), so that every weight
   and the BatchNorm running statistics move away from their init; lr 1e-2 instead of
   5e-4 and mask ratio 0.5 instead of 0.95 (15 bands x 0.05 keeps no token: NaN);
2. saves the checkpoint in the released layout (``{"epoch", "model", "optimizer",
   "scheduler"}``, ``module.`` keys);
3. exports two raw 12 x 10 images the way cross-domain-hsi's
   ``scripts/dataset_utils/export_features.py`` does (module never put in eval mode:
   train-mode BatchNorm over consecutive raster-order chunks; chunks of 50 and 7 px),
   through ``HyperSLBackbone.forward`` (crossdomainhsi/models/hypersl.py, replicated
   below: that file needs Lightning);
4. runs the same images in eval mode (running statistics), and a pretraining pass
   (mask ratio 0.5) under a fixed seed.

Run in a venv with torch 2.13 and timm (not the project's; see the fixture's PROVENANCE.md)::

    git clone https://github.com/kkweil/HyperSL /tmp/HyperSL && git -C /tmp/HyperSL checkout e56de7e7
    /tmp/timmvenv/bin/python scripts/make_hypersl_reference.py --original /tmp/HyperSL
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from timm_import import import_timm

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "hypersl_original"
SEED = 29
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PRETRAIN_SEED = 7
CHUNKS = (50, 7)  # 120 px per image: chunks 50, 50, 20 and 17 x 7 + 1
#: HyKo2-VIS band centres (study.data.specs.HYKO2_WAVELENGTHS), float64 as read_wavelengths_file returns them.
WAVELENGTHS = np.array([468.20, 478.34, 490.83, 503.56, 514.11, 526.92, 541.80, 555.12, 569.30, 578.54, 592.71,
                        600.25, 611.57, 622.49, 642.55])


#: git blob ids of the original files at kkweil/HyperSL e56de7e7 (``git ls-tree e56de7e7 engine/``)
ORIGINAL_BLOBS = {
    "engine/__init__.py": "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391",
    "engine/model.py": "0af8c039f482b4920d3eefa4a65e1b57e258de15",
    "engine/loss.py": "339bf9f37534c3b046987f140ad0000d61b73d0f",
}


def check_original(checkout: Path) -> None:
    """Refuse a checkout whose engine files are not the ones at e56de7e7 (byte for byte, by git blob id)."""
    for name, blob in ORIGINAL_BLOBS.items():
        path = checkout / name
        data = path.read_bytes() if path.is_file() else b""
        if hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() != blob:
            sys.exit(f"error: {path}: not kkweil/HyperSL e56de7e7's {name} (git blob {blob[:8]}); "
                     "fix: git -C CHECKOUT checkout e56de7e7")


def original_modules(checkout: Path) -> tuple[type[torch.nn.Module], LossFn]:
    """``SpectralSharedEncoder`` and ``MSE_SAM_loss`` from the original checkout (imports as train.py does)."""
    check_original(checkout)
    import_timm()
    sys.path.insert(0, str(checkout))
    from engine.loss import MSE_SAM_loss
    from engine.model import SpectralSharedEncoder

    return SpectralSharedEncoder, MSE_SAM_loss


def backbone_forward(encoder: torch.nn.Module, x: torch.Tensor, wavelength: torch.Tensor) -> torch.Tensor:
    """cross-domain-hsi ``HyperSLBackbone.forward`` line for line (mask ratio 0, the 4-D path)."""
    x, _, _, _, _, shape = encoder.encoder_forward(x, wavelength, 0.)
    B, W, H, C = shape  # noqa: N806 - the original's names
    x = x.view(B, H, W, -1).permute(0, -1, 1, 2)
    return x


def export_features(encoder: torch.nn.Module, image: np.ndarray, wavelengths: torch.Tensor,
                    batchsize: int) -> np.ndarray:
    """The per-image body of export_features.py's ``convert`` (on the CPU instead of 'cuda')."""
    img = torch.Tensor(image)
    h, w, c = img.shape
    img = img.reshape(-1, c)
    with torch.no_grad():
        features = torch.zeros((img.shape[0], encoder.embedding_dim))
        for i in range((img.shape[0] // batchsize) + 1):
            lower = i * batchsize
            upper = (i + 1) * batchsize
            if upper > img.shape[0]:
                upper = img.shape[0]
            sub_img = img[lower:upper].unsqueeze(1).unsqueeze(2)
            wls = wavelengths.repeat(upper - lower, 1)
            result = backbone_forward(encoder, sub_img, wls)
            features[lower:upper] = result.squeeze()
        features = features.view(h, w, -1)
    return features.numpy()


def raw_images(rng: np.random.Generator) -> np.ndarray:
    """Two raw (12, 10, 15) images: smooth spectra of different brightness at sensor-count scale, plus noise."""
    bands = np.linspace(0.0, 1.0, len(WAVELENGTHS))
    shape = rng.uniform(-1.0, 1.0, size=(2, 12, 10, 3))
    spectra = 400.0 + 150.0 * shape[..., :1] + 120.0 * shape[..., 1:2] * bands + 80.0 * np.sin(
        3.0 * bands + shape[..., 2:3])
    return (spectra + rng.normal(0.0, 5.0, size=spectra.shape)).astype(np.float32)


def train_a_little(model: torch.nn.Module, loss_fn: LossFn,
                   rng: np.random.Generator) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Five steps of train.py's loop on min-max-scaled random spectra (batch 64, wavelengths per sample)."""
    optimizer = torch.optim.AdamW(params=model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=5e-5,
                                  eps=1e-8)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=10, T_mult=2)
    wave = torch.from_numpy(np.repeat(WAVELENGTHS[None], 64, axis=0)).float()
    model.train()
    for _ in range(5):
        s = torch.from_numpy(rng.uniform(0.0, 1.0, size=(64, 1, len(WAVELENGTHS)))).float()
        _, output = model(s, wave, 0.5)
        loss = loss_fn(output, s)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0, norm_type=2)
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description="Save the original HyperSL code's outputs as a test fixture.")
    parser.add_argument("--original", type=Path, required=True,
                        help="a checkout of github.com/kkweil/HyperSL at commit e56de7e7")
    encoder_cls, loss_fn = original_modules(parser.parse_args().original)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = encoder_cls(embedding_dim=32, encoder_depth=2, decoder_depth=2, num_heads=2)
    optimizer, scheduler = train_a_little(model, loss_fn, rng)
    ckpt = {"epoch": 5, "model": {f"module.{k}": v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    torch.save(ckpt, FIXTURE / "checkpoint.pt")
    state = {k[7:]: v for k, v in ckpt["model"].items()}  # what every consumer does: strip 'module.'

    images = raw_images(rng)
    wl = torch.tensor(WAVELENGTHS).unsqueeze(0)  # float64 (1, C), as the export script builds it
    out: dict[str, np.ndarray] = {"wavelengths": WAVELENGTHS, "images": images, "chunks": np.array(CHUNKS)}
    for chunk in CHUNKS:
        encoder = copy.deepcopy(model)  # the export's module: in train mode, never eval()-ed
        out[f"chunk_{chunk}"] = np.stack([export_features(encoder, img, wl, chunk) for img in images])
    encoder = encoder_cls(embedding_dim=32, encoder_depth=2, decoder_depth=2, num_heads=2)
    encoder.load_state_dict(state)
    encoder.eval()
    # one chunk per image; not exactly H*W pixels: the original loop then runs an empty last chunk and fails
    out["running"] = np.stack([export_features(encoder, img, wl, 1000) for img in images])

    encoder = encoder_cls(embedding_dim=32, encoder_depth=2, decoder_depth=2, num_heads=2)
    encoder.load_state_dict(state)
    encoder.train()
    spectra = torch.from_numpy(rng.uniform(0.0, 1.0, size=(40, 1, len(WAVELENGTHS)))).float()
    wave = torch.from_numpy(np.repeat(WAVELENGTHS[None], 40, axis=0)).float()
    torch.manual_seed(PRETRAIN_SEED)
    with torch.no_grad():
        z, recon = encoder(spectra, wave, 0.5)
        loss = loss_fn(recon, spectra)
    out |= {"pretrain_spectra": spectra[:, 0].numpy(), "pretrain_seed": np.array(PRETRAIN_SEED),
            "pretrain_mask_ratio": np.array(0.5), "pretrain_z": z[:, 0].numpy(), "pretrain_recon": recon[:, 0].numpy(),
            "pretrain_loss": np.array(float(loss))}
    for name, arr in out.items():
        assert np.isfinite(arr).all(), name
    np.savez_compressed(FIXTURE / "reference.npz", **out)
    import timm

    print(f"wrote {FIXTURE / 'checkpoint.pt'} and reference.npz (torch {torch.__version__}, timm {timm.__version__})")


if __name__ == "__main__":
    main()
