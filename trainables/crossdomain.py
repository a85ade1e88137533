"""Ray Tune function trainable of the ``crossdomain`` strategy: HyperSL-RU-Net.

An RU-Net on HyperSL's per-pixel features. Freeze depth k (``config["freeze_depth"]``, default 0) picks the
body as for every HyperSL strategy (:mod:`study.train.freeze_depth`):

- k = 0: the bundle's images are the cached per-pixel features (N, H, W, D) and
  an RU-Net trains on them exactly as ``indomain`` trains on raw bands
  (``backbone_lr`` and the backbone keys of the config are ignored);
- k > 0: HyperSL from ``config["backbone_path"]`` runs in the trial on the raw
  spectra of the same samples (``data.raw``), its last k groups at
  ``backbone_lr`` with the RU-Net at ``lr``, on one random ``crop_size``² crop
  per training image per epoch (:func:`study.train.raw_spectra.crop_epoch`; the crop bounds
  per-step compute, ``docs/freeze_depth.md``); val/test are recomputed on whole images.

Reads top to bottom: config -> head -> (k: study.train.freeze_depth) -> data -> freeze -> epochs -> report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from study.data.bundle import DataBundle
from study.models.hypersl_partial import BackboneRUNet
from study.models.runet import build_runet
from study.train.freeze_depth import train_on_hypersl
from study.train.raw_spectra import crop_epoch


def train_crossdomain(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one HyperSL-RU-Net configuration; reports val metrics every epoch (test only when final)."""
    width = config.get("width", "full")

    def runet(channels: int, n_classes: int) -> nn.Module:
        return build_runet(channels, n_classes, width=width, dropout=float(config.get("dropout", 0.25)))

    return train_on_hypersl(config, data, report, get_checkpoint, model_name=f"hypersl-runet-{width}", head=runet,
                            join=BackboneRUNet, backbone_epoch_fn=lambda trial: crop_epoch(config, trial.settings))
