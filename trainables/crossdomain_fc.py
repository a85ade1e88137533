"""Ray Tune function trainable of the ``crossdomain-fc`` strategy: HyperSL-FC on per-pixel features.

HyperSL-FC (``shared/reference/benchmark.md`` §4.1 item 3): BatchNorm1d(D) ->
Linear(D, K) on frozen HyperSL features, AdamW, one step per 8,192-pixel
sub-batch. The driver hands this trainable a :class:`DataBundle` whose images
already *are* the features, (N, H, W, D), read from the feature cache; the
trainable never sees HyperSL (freeze depth k = 0), so the same code trains on
any cached feature set. ``data.backbone_hash``, when the bundle carries it, goes
into every report so each result row names the backbone its features came from.

Reads top to bottom: config -> data -> model -> (backbone frozen upstream) -> epochs -> report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle
from study.train.pixel_loop import train_pixel_head


def train_crossdomain_fc(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one HyperSL-FC head configuration; reports val metrics every epoch (test only when final)."""
    return train_pixel_head(config, data, report, get_checkpoint, model_name="hypersl-fc")
