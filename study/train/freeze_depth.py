"""The one training path of the strategies that put a head on HyperSL features, at any freeze depth.

Freeze depth k (``config["freeze_depth"]``, default 0; the number of HyperSL's last layer groups that
train, :mod:`study.models.freezing`) picks the body, the same way for every such strategy:

- k = 0: the bundle's images already *are* the cached per-pixel features (N, H, W, D); the head trains on
  them and never sees HyperSL, so the same code trains on any cached feature set (``backbone_lr`` and the
  backbone keys of the config are ignored);
- k > 0: HyperSL from ``config["backbone_path"]`` runs in the trial on the raw spectra of the same samples
  (``data.raw``), its last k groups at ``backbone_lr``, the head at ``lr``; the backbone's chunk statistics
  are refreshed before each epoch and evaluation when its stem trains (:mod:`study.train.raw_spectra`,
  ``docs/freeze_depth.md``). val/test are recomputed on whole images.
- k = 0 with ``config["features"] == "compute"`` (``--features compute``, or ``auto`` so decided): the frozen
  HyperSL runs in the trial on the raw spectra as at k > 0, its features rounded to the cache's dtype
  (``config["feature_dtype"]``), and the head trains exactly as on the cache: the same epoch function,
  batches, flips and random draws (loading the backbone draws nothing the trial sees), so the results equal
  the cached path's within fp32 rounding. No feature file is read or written.

Every report carries ``model_name`` and ``backbone_hash``, so each result row names its model and backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from study.data.bundle import DataBundle
from study.models.hypersl_partial import PartialHyperSL
from study.train.loop import EpochFn, EvalFn, Report, evaluate, image_epoch
from study.train.raw_spectra import build_backbone, with_fresh_stats
from study.train.trial import TrialSetup, trial_setup

#: (input channels, classes) -> the head: D cached features at k = 0, the backbone's D at k > 0
Head = Callable[[int, int], nn.Module]
#: the trial's epoch function, made once its settings are known
EpochFactory = Callable[[TrialSetup], EpochFn]


def _image_epochs(trial: TrialSetup) -> EpochFn:
    """The image-level epoch over whole images (``loop.fit``'s own)."""
    return image_epoch(trial.settings)


def train_on_hypersl(
    config: Mapping[str, Any],
    data: DataBundle,
    report: Report | None,
    get_checkpoint: Callable[[], Any] | None,
    *,
    model_name: str,
    head: Head,
    join: Callable[[PartialHyperSL, nn.Module], nn.Module],
    epoch_fn: EpochFactory = _image_epochs,
    backbone_epoch_fn: EpochFactory | None = None,
    eval_fn: EvalFn = evaluate,
    overrides: Mapping[str, Any] | None = None,
    loader_images: int | None = None,
) -> dict:
    """Train ``head`` on cached features (k = 0), or ``join(backbone, head)`` on raw spectra (k > 0, and k = 0
    with ``config["features"] == "compute"``).

    ``epoch_fn`` makes the trial's epoch (``backbone_epoch_fn``, if given, at k > 0); ``eval_fn``,
    ``overrides`` and ``loader_images`` go to ``trial_setup`` and ``loop.fit`` as a trainable would pass them.
    """
    trial = trial_setup(config, data, report, get_checkpoint, overrides=overrides)
    extra = {"model_name": model_name, "backbone_hash": trial.backbone_hash}
    if int(config.get("freeze_depth", 0)) == 0:
        if config.get("features", "cache") == "compute":
            return _computed_features(config, data, trial, head, join, epoch_fn, eval_fn, extra, loader_images)
        model = head(data.n_bands, trial.spec.n_classes)
        return trial.fit(model, data, extra=extra, epoch_fn=epoch_fn(trial), eval_fn=eval_fn,
                         loader_images=loader_images)
    backbone, raw = build_backbone(config, data)  # loads the checkpoint, freezes all but the last k groups
    model = join(backbone, head(backbone.dim, trial.spec.n_classes))
    epochs = with_fresh_stats((backbone_epoch_fn or epoch_fn)(trial), backbone)
    return trial.fit(model, raw, backbone=backbone, backbone_lr=float(config.get("backbone_lr", trial.settings.lr)),
                     extra=extra, epoch_fn=epochs, eval_fn=with_fresh_stats(eval_fn, backbone),
                     loader_images=loader_images)


def _computed_features(config: Mapping[str, Any], data: DataBundle, trial: TrialSetup, head: Head,
                       join: Callable[[PartialHyperSL, nn.Module], nn.Module], epoch_fn: EpochFactory,
                       eval_fn: EvalFn, extra: dict[str, Any], loader_images: int | None) -> dict:
    """k = 0 on features the trial computes: ``join(frozen backbone, head)`` trained as the head on the cache."""
    # building the backbone initialises a HyperSL before loading its weights: torch's generator is put back, so
    # the head's initial weights and RU-Net's dropout draw what they draw on the cached path
    with torch.random.fork_rng(devices=[]):
        backbone, raw = build_backbone(config, data)
    dtype = str(config.get("feature_dtype", "float32"))
    backbone.store_dtype = getattr(torch, dtype)  # the features the cache would hold (float16 by default)
    model = join(backbone, head(backbone.dim, trial.spec.n_classes))
    return trial.fit(model, raw, extra=extra, epoch_fn=epoch_fn(trial), eval_fn=eval_fn, loader_images=loader_images)
