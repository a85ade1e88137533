"""Ray Tune function trainable of the ``crossmodality`` strategy: an RGB foundation ViT bridged to the cube.

DINOv2 ViT (:mod:`study.models.vit`, timm's names; pretrained weights from
``config["rgb_weights"]``) on a 3-channel bridge of the C-band cube
(:mod:`study.models.rgb_bridge`: pseudo-RGB or a learned 1x1 projection
initialised to it), patch tokens -> linear or small decoder head -> logits at
full resolution (:mod:`study.models.vit_seg`). The same epoch loop as every
other strategy (``study.train.loop.fit``): metrics, checkpoints, ASHA reports.

Reads top to bottom: config -> data (bridge scaling fitted on the training
subset only) -> model -> freeze -> epochs -> report.

Config keys: searched ``head_lr``, ``backbone_lr``, ``weight_decay``,
``freeze_depth``, ``bridge``, ``head``; constants set by the driver
``vit_size``, ``rgb_weights`` (path or None), ``rgb_weights_hash``,
``allow_random_init``, optional ``rgb_bands`` (``wavelength`` | ``hs3bench``).
Every report carries ``backbone_pretrained`` and ``backbone_hash`` (short sha256
of the weights file, None for a random init), which end up in every result row.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle
from study.data.specs import get_spec
from study.errors import HsiStudyError
from study.models.rgb_bridge import build_bridge
from study.models.vit import VisionTransformer, build_vit
from study.models.vit_seg import ViTSegmenter, build_head, param_groups, set_freeze_depth
from study.models.vit_weights import load_vit, missing_weights_message
from study.train.loop import TrainSettings, fit, seed_everything, tune_hooks
from study.train.threads import configure_threads


def backbone_of(config: dict[str, Any]) -> tuple[VisionTransformer, str, str | None]:
    """(ViT, size, weights hash or None): pretrained from ``rgb_weights``, else random only when allowed."""
    path, size = config.get("rgb_weights"), config.get("vit_size")
    if path:
        vit, info = load_vit(path, size, sha=config.get("rgb_weights_hash"))
        return vit, info.size, info.sha
    if not config.get("allow_random_init", False):
        raise HsiStudyError(missing_weights_message(size))
    return build_vit(size or "small"), size or "small", None


def train_crossmodality(
    config: dict[str, Any],
    data: DataBundle,
    report: Callable[..., Any] | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
) -> dict:
    """Train one crossmodality configuration; reports val metrics every epoch (test only when final)."""
    report, get_checkpoint = tune_hooks(report, get_checkpoint)
    configure_threads(config)
    spec = get_spec(data.dataset)
    settings = TrainSettings.from_config(ChainMap({"lr": config["head_lr"]}, config))  # fit's default lr: the head's
    seed_everything(settings.seed)

    bridge_kind = str(config.get("bridge", "pseudo-rgb"))
    bridge = build_bridge(bridge_kind, data.train.images, spec, str(config.get("rgb_bands", "wavelength")),
                          data.wavelengths)
    vit, size, sha = backbone_of(config)
    model = ViTSegmenter(bridge, vit, build_head(str(config.get("head", "linear")), vit.cfg.dim, spec.n_classes))

    set_freeze_depth(model, int(config.get("freeze_depth", 0)))
    groups = param_groups(model, settings.lr, float(config.get("backbone_lr", settings.lr)), settings.weight_decay)

    extra = {"model_name": f"dinov2-vit-{size}", "backbone_hash": sha, "backbone_pretrained": sha is not None}
    return fit(model, data, spec, settings, report, params=groups, get_checkpoint=get_checkpoint, extra=extra)
