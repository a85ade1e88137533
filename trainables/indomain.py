"""Ray Tune function trainable of the ``indomain`` strategy: RU-Net from scratch on raw cubes.

Reads top to bottom: config -> data -> model -> (nothing frozen) -> epochs -> report.
``report`` and ``get_checkpoint`` are parameters so tests call this as a plain
function; inside Tune they default to ``ray.tune.report`` / ``ray.tune.get_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle
from study.data.specs import get_spec
from study.models.runet import build_runet
from study.train.loop import TrainSettings, fit, seed_everything, tune_hooks
from study.train.threads import configure_threads


def train_indomain(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one RU-Net configuration; reports val metrics every epoch (test only when final)."""
    report, get_checkpoint = tune_hooks(report, get_checkpoint)
    configure_threads(config)
    spec = get_spec(data.dataset)
    settings = TrainSettings.from_config(config)
    width = config.get("width", "full")
    seed_everything(settings.seed)
    model = build_runet(data.n_bands, spec.n_classes, width=width, dropout=float(config.get("dropout", 0.25)))
    on_features = data.backbone_hash is not None  # HyperSL-RU-Net: the same RU-Net on feature channels
    extra = {"model_name": f"{'hypersl-' if on_features else ''}runet-{width}", "backbone_hash": data.backbone_hash}
    return fit(model, data, spec, settings, report, get_checkpoint=get_checkpoint, extra=extra)
