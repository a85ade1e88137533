"""Ray Tune function trainable of the ``crossdomain-fc`` strategy: HyperSL-FC on per-pixel features.

HyperSL-FC (``docs/reference.md`` §R16 item 3): BatchNorm1d(D) ->
Linear(D, K) on HyperSL features, AdamW, one step per 8,192-pixel sub-batch.
Freeze depth k (``config["freeze_depth"]``, default 0) picks the body as for every
HyperSL strategy (:mod:`study.train.freeze_depth`):

- k = 0: the bundle's images already *are* the cached features (N, H, W, D); the
  trainable never sees HyperSL, so the same code trains on any cached feature set
  (``backbone_lr`` and the backbone keys of the config are ignored);
- k > 0: HyperSL from ``config["backbone_path"]`` runs in the trial on the raw
  spectra of the same samples (``data.raw``), its last k groups at
  ``backbone_lr``, the head at ``lr``; each sub-batch of raw pixels runs through
  the backbone first (:mod:`study.train.raw_spectra`, ``docs/freeze_depth.md``).

Every report carries ``backbone_hash``, so each result row names its backbone.
Reads top to bottom: config -> head -> (k: study.train.freeze_depth) -> data -> freeze -> epochs -> report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from study.data.bundle import DataBundle
from study.models.heads import PixelFC
from study.models.hypersl_partial import BackbonePixelFC
from study.train.freeze_depth import train_on_hypersl
from study.train.pixel_loop import evaluate_pixels, pixel_epoch, pixel_overrides

MODEL_NAME = "hypersl-fc"


def train_crossdomain_fc(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one HyperSL-FC configuration; reports val metrics every epoch (test only when final)."""

    def head(channels: int, n_classes: int) -> nn.Module:
        return PixelFC(channels, n_classes, batchnorm=bool(config.get("batchnorm", True)))

    return train_on_hypersl(config, data, report, get_checkpoint, model_name=MODEL_NAME, head=head,
                            join=BackbonePixelFC, epoch_fn=lambda trial: pixel_epoch(config, trial.spec),
                            eval_fn=evaluate_pixels, overrides=pixel_overrides(config), loader_images=1)
