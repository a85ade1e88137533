"""Ray Tune function trainable of the ``indomain-fc`` strategy: the per-pixel head on raw spectra.

The in-domain counterpart of HyperSL-FC, so spectral classification is compared
fairly: the same head, loop, sub-batches, optimizer groups and selection, only
the input differs (the C raw bands instead of HyperSL features). The paper's own
in-domain ``fc`` baseline is Linear(C, K) without BatchNorm at lr 1e-3 with
4,096-pixel sub-batches (``docs/reference.md`` §R16 item 3); we keep
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
from study.models.heads import PixelFC
from study.train.pixel_loop import evaluate_pixels, pixel_epoch, pixel_overrides
from study.train.trial import trial_setup


def train_indomain_fc(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one per-pixel head on raw spectra; reports val metrics every epoch (test only when final)."""
    trial = trial_setup(config, data, report, get_checkpoint, overrides=pixel_overrides(config))
    batchnorm = bool(config.get("batchnorm", True))
    model = PixelFC(data.n_bands, trial.spec.n_classes, batchnorm=batchnorm)
    extra = {"model_name": "fc-bn" if batchnorm else "fc", "backbone_hash": trial.backbone_hash}
    return trial.fit(model, data, extra=extra, epoch_fn=pixel_epoch(config, trial.spec), eval_fn=evaluate_pixels,
                     loader_images=1)
