"""Ray Tune function trainable of the ``crossdomain`` strategy: HyperSL-RU-Net.

Freeze depth k (``config["freeze_depth"]``, default 0; the number of HyperSL's
last layer groups that train, :mod:`study.models.freezing`) picks the body:

- k = 0: the bundle's images are the cached per-pixel features (N, H, W, D) and
  an RU-Net trains on them exactly as ``indomain`` trains on raw bands
  (``backbone_lr`` and the backbone keys of the config are ignored);
- k > 0: HyperSL from ``config["backbone_path"]`` runs in the trial on the raw
  spectra of the same samples (``data.raw``), its last k groups at
  ``backbone_lr`` with the RU-Net at ``lr``, on one random ``crop_size``² crop
  per training image per epoch (:mod:`study.train.raw_spectra`; the crop bounds
  per-step compute, ``docs/freeze_depth.md``); val/test are recomputed on whole images.

Reads top to bottom: config -> (k) -> data -> model -> freeze -> epochs -> report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle
from study.models.hypersl_partial import BackboneRUNet
from study.models.runet import build_runet
from study.train.loop import evaluate, train_epoch
from study.train.raw_spectra import CROP, build_backbone, crop_windows, with_fresh_stats
from study.train.trial import trial_setup


def train_crossdomain(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one HyperSL-RU-Net configuration; reports val metrics every epoch (test only when final)."""
    if int(config.get("freeze_depth", 0)) == 0:
        return _train_on_cached_features(config, data, report, get_checkpoint)
    return _train_with_backbone(config, data, report, get_checkpoint)


def _train_on_cached_features(config: dict[str, Any], data: DataBundle, report: Callable[..., Any] | None,
                              get_checkpoint: Callable[[], Any] | None) -> dict:
    """k = 0: an RU-Net on the D cached feature channels."""
    trial = trial_setup(config, data, report, get_checkpoint)
    width = config.get("width", "full")
    model = build_runet(data.n_bands, trial.spec.n_classes, width=width, dropout=float(config.get("dropout", 0.25)))
    extra = {"model_name": f"hypersl-runet-{width}", "backbone_hash": trial.backbone_hash}
    return trial.fit(model, data, extra=extra)


def _train_with_backbone(config: dict[str, Any], data: DataBundle, report: Callable[..., Any] | None,
                         get_checkpoint: Callable[[], Any] | None) -> dict:
    """k > 0: raw spectra -> HyperSL (last k groups trainable) -> RU-Net, on random crops."""
    trial = trial_setup(config, data, report, get_checkpoint)
    width, settings = config.get("width", "full"), trial.settings
    backbone, raw = build_backbone(config, data)  # loads the checkpoint, freezes all but the last k groups
    runet = build_runet(backbone.dim, trial.spec.n_classes, width=width, dropout=float(config.get("dropout", 0.25)))
    model = BackboneRUNet(backbone, runet)
    crop = int(config.get("crop_size", CROP))
    if crop < 1:
        raise ValueError(f"crop_size must be >= 1 pixel, got {crop}")

    def epoch_fn(model, opt, loss_fn, split, gen, device):  # noqa: ANN001, ANN202 - loop.EpochFn
        windows = crop_windows(split, crop, gen)  # drawn before the epoch's order, as the in-memory crops were
        return train_epoch(model, opt, loss_fn, split, settings, gen, device, windows=windows)

    extra = {"model_name": f"hypersl-runet-{width}", "backbone_hash": trial.backbone_hash}
    return trial.fit(model, raw, backbone=backbone, backbone_lr=float(config.get("backbone_lr", settings.lr)),
                     extra=extra, epoch_fn=with_fresh_stats(epoch_fn, backbone),
                     eval_fn=with_fresh_stats(evaluate, backbone))
