"""Ray Tune function trainable of the ``indomain`` strategy: RU-Net from scratch on raw cubes.

Reads top to bottom: config -> data -> model -> (nothing frozen) -> epochs -> report.
``report`` and ``get_checkpoint`` are parameters so tests call this as a plain
function; inside Tune they default to ``ray.tune.report`` / ``ray.tune.get_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle
from study.models.runet import build_runet
from study.train.trial import trial_setup


def train_indomain(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one RU-Net configuration; reports val metrics every epoch (test only when final)."""
    trial = trial_setup(config, data, report, get_checkpoint)
    width = config.get("width", "full")
    model = build_runet(data.n_bands, trial.spec.n_classes, width=width, dropout=float(config.get("dropout", 0.25)),
                        raw_input=True)
    extra = {"model_name": f"runet-{width}", "backbone_hash": trial.backbone_hash}
    return trial.fit(model, data, extra=extra)
