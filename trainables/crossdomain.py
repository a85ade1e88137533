"""Ray Tune function trainable of the ``crossdomain`` strategy: HyperSL-RU-Net.

Freeze depth k (``config["freeze_depth"]``, default 0) picks the path:

- k = 0: the backbone is frozen and its per-pixel features come from the cache;
  the driver's bundle already holds them as images (N, H, W, D), so this is
  exactly the ``indomain`` RU-Net trainable on D feature channels (as before
  freeze depth was searched; ``backbone_lr`` is ignored);
- k > 0: the last k HyperSL layer groups train at ``backbone_lr`` together with
  the RU-Net at ``lr``, on features computed in the trial from the raw spectra
  the driver attaches (``DataBundle.backbone``); see :mod:`study.train.unfrozen`
  for the data, memory and BatchNorm decisions.

Reads top to bottom: config -> (k) -> data -> model -> freeze -> epochs -> report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle
from study.train.unfrozen import train_unfrozen_runet
from trainables.indomain import train_indomain


def train_crossdomain(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one HyperSL-RU-Net configuration; reports val metrics every epoch (test only when final)."""
    if int(config.get("freeze_depth", 0)) == 0:
        return train_indomain(config, data, report, get_checkpoint)
    return train_unfrozen_runet(config, data, report, get_checkpoint)
