"""Ray Tune function trainable of the ``crossmodality`` strategy: an RGB foundation ViT bridged to the cube.

DINOv2 ViT (:mod:`study.models.vit`, timm's names; pretrained weights from
``config["backbone_path"]``) on a 3-channel bridge of the C-band cube
(:mod:`study.models.rgb_bridge`: pseudo-RGB or a learned 1x1 projection
initialised to it), patch tokens -> linear or small decoder head -> logits at
full resolution (:mod:`study.models.vit_seg`). The same epoch loop as every
other strategy (``study.train.loop.fit``): metrics, checkpoints, ASHA reports.

Reads top to bottom: config -> data (bridge scaling fitted on the training
subset only) -> model -> freeze -> epochs -> report.

Config keys: searched ``head_lr``, ``backbone_lr``, ``weight_decay``,
``freeze_depth`` (trainable ViT layer groups, :mod:`study.models.freezing`),
``bridge``, ``head``; constants set by the driver ``vit_size``,
``backbone_path`` (path or None), ``backbone_hash``, ``allow_random_init``,
optional ``rgb_bands`` (``wavelength`` | ``hs3bench``).
Every report carries ``backbone_pretrained`` and ``backbone_hash`` (short sha256
of the weights file, None for a random init), which end up in every result row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.bundle import DataBundle, pixel_sample
from study.errors import HsiStudyError
from study.models.freezing import set_trainable_depth
from study.models.rgb_bridge import MAX_FIT_PIXELS as FIT_PIXELS
from study.models.rgb_bridge import build_bridge
from study.models.vit import VisionTransformer, build_vit
from study.models.vit_seg import ViTSegmenter, build_head
from study.models.vit_weights import load_vit, missing_weights_message
from study.train.trial import trial_setup


def backbone_of(config: dict[str, Any]) -> tuple[VisionTransformer, str, str | None]:
    """(ViT, size, weights hash or None): pretrained from ``backbone_path``, else random only when allowed."""
    path, size = config.get("backbone_path"), config.get("vit_size")
    if path:
        vit, info = load_vit(path, size, sha=config.get("backbone_hash"))
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
    trial = trial_setup(config, data, report, get_checkpoint, overrides={"lr": config["head_lr"]})  # fit's lr: head's

    pixels = pixel_sample(data.train, FIT_PIXELS)  # the training pixels the scaling fit reads, streamed
    bridge = build_bridge(str(config.get("bridge", "pseudo-rgb")), pixels, trial.spec,
                          str(config.get("rgb_bands", "wavelength")), data.wavelengths)
    vit, size, sha = backbone_of(config)
    model = ViTSegmenter(bridge, vit, build_head(str(config.get("head", "linear")), vit.cfg.dim, trial.spec.n_classes))
    set_trainable_depth(model.vit, int(config.get("freeze_depth", 0)))

    extra = {"model_name": f"dinov2-vit-{size}", "backbone_hash": sha, "backbone_pretrained": sha is not None}
    return trial.fit(model, data, backbone=model.vit, backbone_lr=float(config.get("backbone_lr", trial.settings.lr)),
                     extra=extra)
