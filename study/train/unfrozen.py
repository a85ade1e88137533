"""Freeze depth k > 0 for the cross-domain strategies: HyperSL's last k layer groups train in the trial.

Decision (issue #3): a k > 0 trial gets the **raw spectra + the backbone weights**
(:class:`study.data.bundle.BackboneInputs`, attached by the driver to every
feature bundle) and runs the frozen prefix itself under ``no_grad``; it does
*not* read a cache of the frozen prefix's tokens. Numbers behind it (bytes per
pixel, ``(1+L)·D`` tokens in float16 vs L raw bands in float32):

=========================  ===========  ===========  ==============
per pixel                  HyKo2 L=15   HSI-Drive 25  HCV2 L=128
=========================  ===========  ===========  ==============
raw spectrum (+ chunk id)      64 B        104 B          516 B
k = 0 feature cache (D=256)   512 B        512 B          512 B
prefix tokens, D=256 small  8,192 B     13,312 B       66,048 B
prefix tokens, D=64 ``cpu`` 2,048 B      3,328 B       16,512 B
=========================  ===========  ===========  ==============

Per real image that is 1.06 GB (HyKo2), 1.18 GB (HSI-Drive) and 44 GB (HCV2)
of tokens for the released ``small`` backbone, 16-130x the k = 0 cache, and one
such cache per searched k (the prefix differs for every k). What it would save:
the prefix forward, i.e. with k = 1 on ``small`` about 1.25 -> 0.375 forward
passes per trained pixel (~3.3x). Storage that grows to terabytes (HCV2) to save
a constant factor of compute is the wrong trade; compute is instead bounded by
the search space (k <= 2, see ``search_spaces/crossdomain*.py``) and by crops
(RU-Net). Measured 2026-11-24 on the shared 2-core CPU box, one thread, the
embedded ``cpu`` backbone (D=64, 3 layers, HyKo2-like 15 bands): inference
~3.8k px/s, a training step ~2.6k px/s at k = 1 and ~2.0k px/s at k = 2. On the
``--smoke`` data (6 train images of 32x48 px, val 4,608 px) one epoch takes
0.01 s (FC) / 0.05 s (tiny RU-Net) at k = 0, 4.2 s / 4.0 s at k = 1 and
6.4 s / 3.9 s at k = 2. Extrapolated to ``--demo`` at fraction 1.0 (327,680 train
+ 98,304 val px): ~150 s (k = 1) and ~190 s (k = 2) per epoch, against < 1 s at
k = 0. A token cache (1.1 GB per searched k for the demo) would save only
1.2-1.7x there: with 3 layers the frozen prefix is at most 2/3 of one forward.

What a k > 0 trial does:

- **crossdomain-fc** (HyperSL-FC): exactly the k = 0 epoch of
  :func:`study.train.pixel_loop.train_pixel_epoch` (same shuffled loaded
  batches, one AdamW step per contiguous ``sub_batch`` of pixels, all-ignore
  sub-batches skipped), but each sub-batch of raw pixels runs through the
  backbone first; memory is bounded by ``sub_batch`` (gradient checkpointing
  beyond ``GRAD_CHUNK`` pixels). The head trains at ``lr``, the backbone's
  trainable groups at ``backbone_lr``.
- **crossdomain** (HyperSL-RU-Net): the RU-Net epoch of ``loop.train_epoch``
  (batches, hflip p = 0.1) on one random ``crop_size``² crop per training image
  per epoch (config ``crop_size``, default :data:`CROP`; the whole image when it
  is smaller). The crop bounds compute per step (a real HyKo2 image is 129,540
  per-pixel transformer passes, benchmark.md §5); the features of the crop's
  pixels are computed on the fly in gradient-checkpointed chunks of
  ``GRAD_CHUNK`` pixels, so memory is bounded too and gradients flow into the
  last k groups exactly (no accumulation approximation).
- **val/test** are recomputed with the trained suffix on whole images under
  ``inference_mode`` (never the cached k = 0 features).
- **BatchNorm**: the stem uses the export's per-chunk statistics (chunk mode) or
  the running buffers, see :mod:`study.models.unfrozen`; each pixel carries its
  export chunk id as one extra input channel, so flips, crops and batching in
  the shared loops move it with the pixel. A trainable stem (k = all groups,
  explicit configs only) in chunk mode recomputes the table with the current
  weights at the start of every epoch and every evaluation.
- **Checkpoints**: the backbone is a sub-module of the trained model, so the
  loop's per-epoch ``loop.mutable_state(model)`` (trainable parameters and all
  buffers; the frozen groups are rebuilt from ``DataBundle.backbone``) and the
  optimizer with its two parameter groups hold the trainable groups; a resumed
  trial is identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from study.data.bundle import BackboneInputs, DataBundle, SplitArrays
from study.data.specs import get_spec
from study.models.unfrozen import BackbonePixelFC, BackboneRUNet, UnfrozenHyperSL, chunk_id_map, chunks_per_image
from study.train.loop import (
    EpochFn,
    EvalFn,
    Report,
    TrainSettings,
    evaluate,
    fit,
    pick_device,
    seed_everything,
    train_epoch,
    tune_hooks,
)
from study.train.pixel_loop import (
    SUB_BATCH,
    default_images_per_batch,
    evaluate_pixels,
    pixel_settings,
    train_pixel_epoch,
)
from study.train.threads import configure_threads

#: Default side of the random training crop of a k > 0 HyperSL-RU-Net trial (pixels).
CROP = 128


@dataclass(frozen=True)
class ChunkedSplit(SplitArrays):
    """Raw spectra whose batches carry every pixel's export chunk id as one extra, last channel (float32)."""

    chunk_ids: np.ndarray  # (N, H, W) int32

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(self.images[idx], dtype=np.float32)
        return np.concatenate([images, self.chunk_ids[idx][..., None].astype(np.float32)], axis=-1), self.labels[idx]


def backbone_inputs(checkpoint: str | Path, raw: DataBundle, bn_mode: str, chunk_size: int) -> BackboneInputs:
    """What the driver attaches to a feature bundle so that its trials can run k > 0 (weights on CPU)."""
    from study.models.checkpoints import load_hypersl

    model = load_hypersl(checkpoint)
    return BackboneInputs(weights={k: v.detach().cpu() for k, v in model.state_dict().items()},
                          config=dict(model.config.as_dict()), bn_mode=bn_mode, chunk_size=int(chunk_size),
                          wavelengths=np.asarray(raw.wavelengths, dtype=np.float32),
                          train=raw.train, val=raw.val, test=raw.test)


def build_backbone(config: Mapping[str, Any], data: DataBundle) -> tuple[UnfrozenHyperSL, DataBundle]:
    """The trial's backbone (last ``freeze_depth`` groups trainable, statistics ready, on the trial's device)
    and a bundle of :class:`ChunkedSplit` raw spectra with the feature bundle's identity."""
    from study.models.checkpoints import load_state_strict
    from study.models.hypersl import HyperSL, HyperSLConfig

    inputs = data.backbone
    if inputs is None:
        raise ValueError("freeze_depth > 0 needs the raw spectra and the HyperSL weights (DataBundle.backbone); "
                         "the driver attaches them to feature bundles, or set freeze_depth=0")
    hypersl = HyperSL(HyperSLConfig(**inputs.config))
    load_state_strict(hypersl, dict(inputs.weights), source="DataBundle.backbone")
    backbone = UnfrozenHyperSL(hypersl, int(config["freeze_depth"]), inputs.wavelengths, inputs.bn_mode)
    splits, offset = [], 0
    for split in (inputs.train, inputs.val, inputs.test):
        n, h, w = split.labels.shape
        ids = chunk_id_map(n, h, w, inputs.chunk_size, offset)
        offset += n * chunks_per_image(h, w, inputs.chunk_size)
        splits.append(ChunkedSplit(images=split.images, labels=split.labels, names=split.names, chunk_ids=ids))
    backbone.set_sources([s.images for s in splits], inputs.chunk_size)
    backbone.to(pick_device())
    backbone.refresh_stats()
    return backbone, replace(data, train=splits[0], val=splits[1], test=splits[2])


def param_groups(head: torch.nn.Module, backbone: UnfrozenHyperSL, lr: float, backbone_lr: float) -> list[dict]:
    """AdamW groups: the head at ``lr``, the backbone's trainable groups at ``backbone_lr``."""
    groups = [{"params": [p for p in head.parameters() if p.requires_grad], "lr": lr}]
    if trainable := backbone.trainable_parameters():
        groups.append({"params": trainable, "lr": backbone_lr})
    return groups


def with_fresh_stats(fn: Callable[..., Any], backbone: UnfrozenHyperSL) -> Callable[..., Any]:
    """``fn`` (an epoch or eval function, model first) preceded by a statistics refresh when the stem trains
    in chunk mode; otherwise ``fn`` itself (the table of a frozen stem never changes)."""
    if not (backbone.stem_trainable and backbone.bn_mode == "chunk"):
        return fn

    def wrapped(*args: Any) -> Any:
        backbone.refresh_stats()
        return fn(*args)

    return wrapped


def random_crops(split: ChunkedSplit, crop: int, gen: np.random.Generator) -> ChunkedSplit:
    """One random ``crop``² window per image (the whole image when it is not larger), drawn from ``gen``."""
    n, h, w = split.labels.shape
    ch, cw = min(crop, h), min(crop, w)
    if (ch, cw) == (h, w):
        return split
    rows, cols = gen.integers(0, h - ch + 1, size=n), gen.integers(0, w - cw + 1, size=n)
    win = [(slice(r, r + ch), slice(c, c + cw)) for r, c in zip(rows, cols, strict=True)]
    return ChunkedSplit(images=np.stack([split.images[i][win[i]] for i in range(n)]),
                        labels=np.stack([split.labels[i][win[i]] for i in range(n)]), names=split.names,
                        chunk_ids=np.stack([split.chunk_ids[i][win[i]] for i in range(n)]))


def _extra(model_name: str, data: DataBundle) -> dict[str, Any]:
    return {"model_name": model_name, "backbone_hash": data.backbone_hash}


def train_unfrozen_fc(config: Mapping[str, Any], data: DataBundle, report: Report | None,
                      get_checkpoint: Callable[[], Any] | None, model_name: str = "hypersl-fc") -> dict:
    """HyperSL-FC with the last ``config['freeze_depth']`` HyperSL groups trainable (see module docstring)."""
    from study.models.heads import PixelFC

    report, get_checkpoint = tune_hooks(report, get_checkpoint)
    configure_threads(config)
    spec = get_spec(data.dataset)
    settings = pixel_settings(config)
    seed_everything(settings.seed)
    backbone, chunked = build_backbone(config, data)
    head = PixelFC(backbone.dim, spec.n_classes, batchnorm=bool(config.get("batchnorm", True)))
    model = BackbonePixelFC(backbone, head)
    sub_batch = int(config.get("sub_batch", SUB_BATCH))
    ipb = int(config.get("images_per_batch") or default_images_per_batch(spec))
    if sub_batch < 2 or ipb < 1:
        raise ValueError(f"sub_batch >= 2 and images_per_batch >= 1 must hold, got {sub_batch} and {ipb}")

    def epoch_fn(model, opt, loss_fn, split, gen, device):  # noqa: ANN001, ANN202 - loop.EpochFn
        return train_pixel_epoch(model, opt, loss_fn, split, gen, device, sub_batch, ipb)

    groups = param_groups(head, backbone, settings.lr, float(config.get("backbone_lr", settings.lr)))
    epoch: EpochFn = with_fresh_stats(epoch_fn, backbone)
    evaluate_fn: EvalFn = with_fresh_stats(evaluate_pixels, backbone)
    return fit(model, chunked, spec, settings, report, params=groups, get_checkpoint=get_checkpoint,
               extra=_extra(model_name, data), epoch_fn=epoch, eval_fn=evaluate_fn)


def train_unfrozen_runet(config: Mapping[str, Any], data: DataBundle, report: Report | None,
                         get_checkpoint: Callable[[], Any] | None) -> dict:
    """HyperSL-RU-Net with the last ``config['freeze_depth']`` HyperSL groups trainable (see module docstring)."""
    from study.models.runet import build_runet

    report, get_checkpoint = tune_hooks(report, get_checkpoint)
    configure_threads(config)
    spec = get_spec(data.dataset)
    settings = TrainSettings.from_config(config)
    width = config.get("width", "full")
    seed_everything(settings.seed)
    backbone, chunked = build_backbone(config, data)
    runet = build_runet(backbone.dim, spec.n_classes, width=width, dropout=float(config.get("dropout", 0.25)))
    model = BackboneRUNet(backbone, runet)
    crop = int(config.get("crop_size", CROP))
    if crop < 1:
        raise ValueError(f"crop_size must be >= 1 pixel, got {crop}")

    def epoch_fn(model, opt, loss_fn, split, gen, device):  # noqa: ANN001, ANN202 - loop.EpochFn
        return train_epoch(model, opt, loss_fn, random_crops(split, crop, gen), settings, gen, device)

    groups = param_groups(runet, backbone, settings.lr, float(config.get("backbone_lr", settings.lr)))
    epoch: EpochFn = with_fresh_stats(epoch_fn, backbone)
    evaluate_fn: EvalFn = with_fresh_stats(evaluate, backbone)
    return fit(model, chunked, spec, settings, report, params=groups, get_checkpoint=get_checkpoint,
               extra=_extra(f"hypersl-runet-{width}", data), epoch_fn=epoch, eval_fn=evaluate_fn)
