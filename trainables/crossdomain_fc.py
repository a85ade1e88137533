"""Ray Tune function trainable of the ``crossdomain-fc`` strategy: HyperSL-FC on per-pixel features.

HyperSL-FC (``docs/reference.md`` §R16 item 3): BatchNorm1d(D) ->
Linear(D, K) on HyperSL features, AdamW, one step per 8,192-pixel sub-batch.
Freeze depth k (``config["freeze_depth"]``, default 0; the number of HyperSL's
last layer groups that train, :mod:`study.models.freezing`) picks the body:

- k = 0: the bundle's images already *are* the cached features (N, H, W, D); the
  trainable never sees HyperSL, so the same code trains on any cached feature set
  (``backbone_lr`` and the backbone keys of the config are ignored);
- k > 0: HyperSL from ``config["backbone_path"]`` runs in the trial on the raw
  spectra of the same samples (``data.raw``), its last k groups at
  ``backbone_lr``, the head at ``lr``; each sub-batch of raw pixels runs through
  the backbone first (:mod:`study.train.raw_spectra`, ``docs/freeze_depth.md``).

Every report carries ``backbone_hash``, so each result row names its backbone.
Reads top to bottom: config -> (k) -> data -> model -> freeze -> epochs -> report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle
from study.models.heads import PixelFC
from study.models.hypersl_partial import BackbonePixelFC
from study.train.pixel_loop import evaluate_pixels, pixel_epoch, pixel_overrides
from study.train.raw_spectra import build_backbone, with_fresh_stats
from study.train.trial import trial_setup

MODEL_NAME = "hypersl-fc"


def train_crossdomain_fc(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one HyperSL-FC configuration; reports val metrics every epoch (test only when final)."""
    if int(config.get("freeze_depth", 0)) == 0:
        return _train_on_cached_features(config, data, report, get_checkpoint)
    return _train_with_backbone(config, data, report, get_checkpoint)


def _train_on_cached_features(config: dict[str, Any], data: DataBundle, report: Callable[..., Any] | None,
                              get_checkpoint: Callable[[], Any] | None) -> dict:
    """k = 0: the head alone on the cached features."""
    trial = trial_setup(config, data, report, get_checkpoint, overrides=pixel_overrides(config))
    model = PixelFC(data.n_bands, trial.spec.n_classes, batchnorm=bool(config.get("batchnorm", True)))
    extra = {"model_name": MODEL_NAME, "backbone_hash": trial.backbone_hash}
    return trial.fit(model, data, extra=extra, epoch_fn=pixel_epoch(config, trial.spec), eval_fn=evaluate_pixels,
                     loader_images=1)


def _train_with_backbone(config: dict[str, Any], data: DataBundle, report: Callable[..., Any] | None,
                         get_checkpoint: Callable[[], Any] | None) -> dict:
    """k > 0: raw spectra -> HyperSL (last k groups trainable) -> head, one step per sub-batch of pixels."""
    trial = trial_setup(config, data, report, get_checkpoint, overrides=pixel_overrides(config))
    backbone, raw = build_backbone(config, data)  # loads the checkpoint, freezes all but the last k groups
    head = PixelFC(backbone.dim, trial.spec.n_classes, batchnorm=bool(config.get("batchnorm", True)))
    model = BackbonePixelFC(backbone, head)
    epoch_fn = with_fresh_stats(pixel_epoch(config, trial.spec), backbone)
    eval_fn = with_fresh_stats(evaluate_pixels, backbone)
    extra = {"model_name": MODEL_NAME, "backbone_hash": trial.backbone_hash}
    return trial.fit(model, raw, backbone=backbone, backbone_lr=float(config.get("backbone_lr", trial.settings.lr)),
                     extra=extra, epoch_fn=epoch_fn, eval_fn=eval_fn, loader_images=1)
