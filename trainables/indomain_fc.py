"""Ray Tune function trainable of the ``indomain-fc`` strategy: the per-pixel head on raw spectra.

The in-domain counterpart of HyperSL-FC, so spectral classification is compared
fairly: the same head, loop, sub-batches and selection, only the input differs
(the C raw bands instead of HyperSL features). The paper's own in-domain ``fc``
baseline is Linear(C, K) without BatchNorm at lr 1e-3 with 4,096-pixel
sub-batches (``shared/reference/benchmark.md`` §4.1 item 3); we keep
BatchNorm1d by default (``config["batchnorm"]``) because it is part of the
HyperSL-FC head and because it standardises the raw values, which the paper
feeds unscaled. ``batchnorm=False`` and ``sub_batch=4096`` give the paper's
``fc`` exactly.

Reads top to bottom: config -> data -> model -> (nothing frozen) -> epochs -> report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle
from study.data.specs import get_spec
from study.models.heads import PixelFC
from study.train.loop import seed_everything
from study.train.pixel_loop import SUB_BATCH, fit_pixels, pixel_settings
from study.train.threads import configure_threads


def train_indomain_fc(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one per-pixel head on raw spectra; reports val metrics every epoch (test only when final)."""
    if report is None:
        from ray import tune

        report, get_checkpoint = tune.report, tune.get_checkpoint
    configure_threads(config)
    spec = get_spec(data.dataset)
    settings = pixel_settings(config)
    batchnorm = bool(config.get("batchnorm", True))
    seed_everything(settings.seed)
    model = PixelFC(data.n_bands, spec.n_classes, batchnorm=batchnorm)
    return fit_pixels(
        model, data, spec, settings, report,
        get_checkpoint=get_checkpoint,
        sub_batch=int(config.get("sub_batch", SUB_BATCH)),
        images_per_batch=config.get("images_per_batch"),
        extra={"model_name": "fc-bn" if batchnorm else "fc", "backbone_hash": getattr(data, "backbone_hash", None)},
    )
