"""The shared epoch loop every segmentation trainable uses.

One loop, so that every strategy is trained, selected and evaluated the same way (docs/reference.md
§R8–§R9): AdamW with one weight-decay rule (:mod:`study.models.freezing`), cross-entropy with ``ignore_index``
(mean over valid pixels), random horizontal flip with p = 0.1 per sample, validation mIoU every epoch (ASHA needs
a report every epoch to be able to stop a trial), best-validation checkpoint, and the test split evaluated exactly
once, with that checkpoint, and only in the final (re-training) phase — tuning never sees test data.

Batches come from the trial's data placement (:mod:`study.data.placement`: held on the device, one shared host
copy per node, or streamed from the HDF5 files by DataLoader workers); the epoch draws its sample order and flips
from the trial's numpy Generator as the in-memory loop did, so a seed gives the same batches whatever the
placement or worker count. On CUDA forward passes run under bf16 autocast (loss and metrics in fp32) with
non-blocking copies from pinned memory and ``cudnn.benchmark``; ``compile: true`` in the config wraps the model
in ``torch.compile``. CPU stays fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from study.data.bundle import DataBundle
from study.data.placement import open_streams
from study.data.specs import DatasetSpec
from study.data.stream import BatchStream, Key, autocast, to_device
from study.models.freezing import param_groups
from study.train.data_placement import trial_placement
from study.train.devices import pick_device, ray_node_id
from study.train.metrics import confusion_matrix, metrics_from_confusion
from study.train.settings import TrainSettings
from study.train.trial_state import (
    Progress,
    checkpoint_state,
    load_mutable_state,
    resume,
    save_trial_checkpoint,
)

Report = Callable[..., Any]
#: (model, optimizer, loss_fn, train stream, numpy Generator, device) -> mean training loss of the epoch
EpochFn = Callable[[nn.Module, torch.optim.Optimizer, nn.Module, BatchStream, np.random.Generator, torch.device],
                   float]
#: (model, split stream, spec, device, settings) -> metrics of one confusion matrix over the split
EvalFn = Callable[[nn.Module, BatchStream, DatasetSpec, torch.device, "TrainSettings"], dict]
#: Pixels per RU-Net evaluation batch at most (8 HSI-Drive or HyKo2 images; 3 of HCV2 at 711 x 944).
EVAL_BATCH_PIXELS = 2**21


def tune_hooks(
    report: Report | None, get_checkpoint: Callable[[], Any] | None
) -> tuple[Report, Callable[[], Any] | None]:
    """Ray Tune's report/get_checkpoint unless the caller (a test, a benchmark) passes its own."""
    if report is None:
        from ray import tune

        return tune.report, tune.get_checkpoint
    return report, get_checkpoint


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_tensors(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, C) float + (B, H, W) int -> (B, C, H, W) float32 and (B, H, W) int64 on ``device``.

    Copied first (non-blocking from pinned memory), permuted where it lands."""
    x = torch.as_tensor(images).float() if isinstance(images, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(images, dtype=np.float32))
    y = labels.long() if isinstance(labels, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(labels, dtype=np.int64))
    x, y = to_device(x, device), to_device(y, device)
    return x.permute(0, 3, 1, 2).contiguous(), y


def forward(model: nn.Module, x: torch.Tensor, mode: str = "auto") -> torch.Tensor:
    """``model(x)`` under the trial's autocast (bf16 on CUDA), returned as fp32 for loss and metrics."""
    with autocast(x.device, mode):
        out = model(x)
    return out.float()


def random_hflip(
    x: torch.Tensor, y: torch.Tensor, p: float, gen: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip image (B, C, H, W) and mask (B, H, W) jointly along W, each sample with probability p.

    In place, and only the drawn samples are copied (not the whole batch, +5.5 GB for an HCV2 feature batch):
    the caller owns ``x`` and ``y`` (the training step's fresh batch). One draw of B uniforms per call."""
    if p <= 0:
        return x, y
    flip = gen.random(x.shape[0]) < p
    if not flip.any():
        return x, y
    idx = torch.from_numpy(np.flatnonzero(flip)).to(x.device)
    x.index_copy_(0, idx, x.index_select(0, idx).flip(-1))
    y.index_copy_(0, idx, y.index_select(0, idx).flip(-1))
    return x, y


@torch.inference_mode()
def evaluate(model: nn.Module, split: BatchStream, spec: DatasetSpec, device: torch.device,
             settings: TrainSettings) -> dict:
    """Metrics of ``model`` on a whole split, from one confusion matrix (not per-image means)."""
    model.eval()
    cm = np.zeros((spec.n_classes, spec.n_classes), dtype=np.int64)
    for images, labels in split.sequential(eval_images(split.shapes, settings.eval_batch_size)):
        x, y = to_tensors(images, labels, device)
        pred = forward(model, x, settings.autocast).argmax(1)
        cm += confusion_matrix(pred, y, spec.n_classes, spec.ignore_index)
    return metrics_from_confusion(cm, spec.ignore_index)


def eval_images(shapes: Sequence[tuple[int, int]], eval_batch_size: int) -> int:
    """Images per evaluation batch: ``eval_batch_size``, fewer when their pixels exceed EVAL_BATCH_PIXELS
    (HCV2: 3, not 8 images of 711 x 944 px; the metrics come from one confusion matrix either way)."""
    pixels = max((h * w for h, w in shapes), default=1)
    return max(1, min(eval_batch_size, EVAL_BATCH_PIXELS // pixels))


def epoch_plan(n: int, batch_size: int, gen: np.random.Generator,
               windows: list[tuple[int, int, int, int]] | None = None) -> list[list[Key]]:
    """The epoch's batches: a permutation from ``gen``, each batch's indices sorted (the in-memory order);
    with ``windows`` each key carries its sample's crop window."""
    order = gen.permutation(n)
    batches = [np.sort(order[s : s + batch_size]).tolist() for s in range(0, n, batch_size)]
    if windows is None:
        return batches
    return [[(i, *windows[i]) for i in b] for b in batches]


#: Training steps whose losses wait on the device between two host checks (one sync per this many steps).
LOSS_CHECK_EVERY = 64


class PendingLosses:
    """An epoch's training losses, kept on the device and read back every :data:`LOSS_CHECK_EVERY` steps.

    ``float(loss)`` or ``torch.isfinite(loss)`` per step is a host sync per step: the GPU idles while the next
    batch is prepared. The losses wait in one preallocated device buffer instead (not a list of scalar
    tensors: each small tensor allocated between a step's transients pins heap on a CPU, performance.md §7);
    a non-finite loss still stops the trial (FloatingPointError) before the epoch reports."""

    def __init__(self, device: torch.device, lr: float) -> None:
        self.buffer, self.n, self.lr = torch.empty(LOSS_CHECK_EVERY, device=device), 0, lr
        self.values: list[float] = []

    def add(self, loss: torch.Tensor) -> None:
        self.buffer[self.n] = loss.detach()
        self.n += 1
        if self.n == LOSS_CHECK_EVERY:
            self.check()

    def check(self) -> None:
        """Read the pending losses back (one host sync); FloatingPointError if one is not finite."""
        if not self.n:
            return
        values = self.buffer[: self.n].cpu().numpy()
        self.n = 0
        if not np.isfinite(values).all():
            bad = values[~np.isfinite(values)][0]
            raise FloatingPointError(f"training loss became {bad} (lr={self.lr:g}); trial stopped")
        self.values.extend(values.tolist())

    def mean(self) -> float:
        """The epoch's mean loss over the steps taken (nan if none)."""
        self.check()
        return float(np.mean(self.values)) if self.values else float("nan")


def all_ignored(labels: np.ndarray | torch.Tensor, ignore_index: int) -> bool:
    """Every pixel of the (host) batch is unlabelled: its loss is 0/0 and it has nothing to teach."""
    return bool((labels == ignore_index).all())


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    split: BatchStream,
    settings: TrainSettings,
    gen: np.random.Generator,
    device: torch.device,
    windows: list[tuple[int, int, int, int]] | None = None,
) -> float:
    """One pass over the shuffled training subset (``windows``: one crop per sample); mean loss over steps.

    No host sync per step: an unlabelled batch is recognised on its host labels, the losses wait on the
    device (:class:`PendingLosses`)."""
    model.train()
    losses = PendingLosses(device, settings.lr)
    for images, labels in split.batches(epoch_plan(len(split), settings.batch_size, gen, windows)):
        skip = all_ignored(labels, loss_fn.ignore_index)  # host labels: read before they are copied
        x, y = to_tensors(images, labels, device)
        x, y = random_hflip(x, y, settings.hflip_p, gen)
        loss = loss_fn(forward(model, x, settings.autocast), y)  # also when skipped: BN statistics as before
        if skip:
            continue  # every pixel of this batch is unlabelled: nothing to learn from
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.add(loss)
    return losses.mean()


def _prefixed(prefix: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("miou", "oa", "macc", "macro_f1", "iou_per_class")
    return {f"{prefix}_{k}": metrics[k] for k in keys}


def fit(
    model: nn.Module,
    data: DataBundle,
    spec: DatasetSpec,
    settings: TrainSettings,
    report: Report,
    *,
    backbone: nn.Module | None = None,
    backbone_lr: float | None = None,
    get_checkpoint: Callable[[], Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    epoch_fn: EpochFn | None = None,
    eval_fn: EvalFn = evaluate,
    loader_images: int | None = None,
) -> dict:
    """Train ``model``, reporting every epoch; in the final phase evaluate test once at the end.

    The AdamW groups come from :func:`study.models.freezing.param_groups`, the one
    weight-decay rule of every arm: trainable parameters of ``backbone`` (a
    sub-module of ``model``) at ``backbone_lr``, the rest at ``settings.lr``.
    ``epoch_fn``/``eval_fn`` replace the image-level epoch and evaluation
    (the per-pixel models pass theirs, with ``loader_images=1``: they read one image per loader batch;
    it bounds the loader's memory, default the training batch and :func:`eval_images`), so selection,
    early stopping, reports, checkpoints and resumption are one code path for every strategy. Returns the
    last reported metrics.
    """
    if epoch_fn is None:
        epoch_fn = image_epoch(settings)
    device = _training_device()
    gen = np.random.default_rng(settings.seed)
    model.to(device)
    net = torch.compile(model) if settings.compile else model  # forward passes; state stays ``model``'s
    opt = build_optimizer(model, settings, backbone, backbone_lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=spec.ignore_index)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    wall0 = time.perf_counter()
    progress = resume(get_checkpoint, model, opt, gen)

    eval_batch = loader_images or eval_images([*data.val.shapes, *data.test.shapes], settings.eval_batch_size)
    place = trial_placement(settings.data_placement, (data.train, data.val, data.test), device, model,
                            settings.loader_memory_gib)
    with open_streams(data.train, data.val, data.test, settings.loader(device), place.placement, device,
                      train_batch=loader_images or settings.batch_size, eval_batch=eval_batch) as streams:
        last: dict = {}
        about = {"device": str(device), "node_id": ray_node_id(), "n_params": n_params,
                 "max_epochs": settings.max_epochs, "data_placement": place.placement,
                 "data_placement_why": place.reason}
        for epoch in range(progress.start_epoch, settings.max_epochs + 1):
            train_loss, val = timed_epoch(epoch, lambda: epoch_fn(net, opt, loss_fn, streams.train, gen, device),
                                           lambda: eval_fn(net, streams.val, spec, device, settings), device, progress)
            progress.record(epoch, val["miou"], model)
            stop_early = settings.patience is not None and epoch - progress.best_epoch >= settings.patience
            last_epoch = epoch == settings.max_epochs or stop_early
            metrics = _epoch_metrics(epoch, train_loss, val, progress, time.perf_counter() - wall0, about,
                                     last_epoch, extra)
            if last_epoch and settings.final:
                metrics.update(_test_once(model, net, progress.best_state, streams, spec, device, settings, eval_fn))
            if last_epoch or epoch % settings.checkpoint_every == 0:
                save_trial_checkpoint(report, metrics, checkpoint_state(epoch, model, opt, progress, gen))
            else:
                report(metrics)
            last = metrics
            if last_epoch:
                break
        return last


def image_epoch(settings: TrainSettings) -> EpochFn:
    """fit's default epoch: :func:`train_epoch` over whole images, bound to the run's settings."""
    def epoch_fn(model, opt, loss_fn, split, gen, device):  # noqa: ANN001, ANN202 - EpochFn
        return train_epoch(model, opt, loss_fn, split, settings, gen, device)

    return epoch_fn


def _training_device() -> torch.device:
    """The run's device, with cuDNN autotuning on CUDA (fixed image sizes: the fastest kernels are picked once)."""
    device = pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image sizes: pick the fastest kernels once
    return device


def build_optimizer(model: nn.Module, settings: TrainSettings, backbone: nn.Module | None,
               backbone_lr: float | None) -> torch.optim.Optimizer:
    """AdamW over :func:`study.models.freezing.param_groups`, the one weight-decay rule of every arm."""
    groups = param_groups(model, settings.lr, settings.weight_decay, backbone=backbone, backbone_lr=backbone_lr)
    return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay, eps=1e-8)


def timed_epoch(epoch: int, train: Callable[[], float], validate: Callable[[], dict], device: torch.device,
                 progress: Progress) -> tuple[float, dict]:
    """Train one epoch and validate, adding their device time to ``progress`` (a step-less epoch is a failure)."""
    _sync(device)
    t0 = time.perf_counter()
    train_loss = train()
    if not math.isfinite(train_loss):  # no step was taken: training on nothing is a failure, not a result
        raise FloatingPointError(f"epoch {epoch} took no training step (training loss {train_loss}): the "
                                 "training subset has no labelled pixel; trial failed")
    val = validate()
    _sync(device)
    progress.device_s += time.perf_counter() - t0
    return train_loss, val


def _epoch_metrics(epoch: int, train_loss: float, val: Mapping[str, Any], progress: Progress, wall_s: float,
                   about: Mapping[str, Any], last_epoch: bool, extra: Mapping[str, Any] | None) -> dict:
    """One epoch's report: the row every strategy writes, keys in one order (``extra`` last)."""
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        **_prefixed("val", val),
        "best_val_miou": progress.best,
        "best_epoch": progress.best_epoch,
        "wall_s": wall_s,
        "device_s": progress.device_s,
        **about,
        "is_last": last_epoch,
        **(extra or {}),
    }


def _test_once(model: nn.Module, net: nn.Module, best_state: dict | None, streams: Any, spec: DatasetSpec,
               device: torch.device, settings: TrainSettings, eval_fn: EvalFn) -> dict:
    """The final phase's one test evaluation, with the best-validation weights loaded into ``model``."""
    if best_state is not None:
        load_mutable_state(model, best_state)
    test = streams.test()
    try:
        return _prefixed("test", eval_fn(net, test, spec, device, settings))
    finally:
        test.close()
