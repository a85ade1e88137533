"""Ray Tune function trainable of the ``crossdomain-fc`` strategy: HyperSL-FC on per-pixel features.

HyperSL-FC (``shared/reference/benchmark.md`` §4.1 item 3): BatchNorm1d(D) ->
Linear(D, K) on frozen HyperSL features, AdamW, one step per 8,192-pixel
sub-batch. Freeze depth k (``config["freeze_depth"]``, default 0) picks the path:

- k = 0: the driver's :class:`DataBundle` images already *are* the features,
  (N, H, W, D), read from the feature cache; the trainable never sees HyperSL,
  so the same code trains on any cached feature set (``backbone_lr`` is ignored);
- k > 0: the last k HyperSL layer groups train at ``backbone_lr``, the head at
  ``lr``, on features computed per sub-batch from the raw spectra the driver
  attaches (``DataBundle.backbone``); see :mod:`study.train.unfrozen`.

``data.backbone_hash``, when the bundle carries it, goes into every report so
each result row names the backbone its features came from.

Reads top to bottom: config -> (k) -> data -> model -> freeze -> epochs -> report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle
from study.train.pixel_loop import train_pixel_head
from study.train.unfrozen import train_unfrozen_fc


def train_crossdomain_fc(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one HyperSL-FC head configuration; reports val metrics every epoch (test only when final)."""
    if int(config.get("freeze_depth", 0)) == 0:
        return train_pixel_head(config, data, report, get_checkpoint, model_name="hypersl-fc")
    return train_unfrozen_fc(config, data, report, get_checkpoint, model_name="hypersl-fc")
