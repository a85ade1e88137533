"""The per-pixel epoch and evaluation (HyperSL-FC, in-domain FC) that ``loop.fit`` runs for per-pixel trials.

The cross-domain paper trains its spectral classifiers by manual optimisation
over sub-batches of pixels (``shared/reference/benchmark.md`` §4.1 item 3):

- an epoch walks the shuffled training images in *loaded batches* (HyKo2 8,
  HSI-Drive 32, HCV2 4 images), concatenates each batch's pixels in raster order
  inside each image into (P, D), and takes one AdamW step per contiguous
  ``sub_batch`` pixels (8,192 in the paper);
- a sub-batch whose pixels are all ignore-labelled is skipped (its loss would be
  0/0). It is skipped before the forward pass, so BatchNorm's running statistics
  come only from sub-batches that train;
- no augmentation: a flip only reorders pixels, and the paper's 1×1-patch data
  has none;
- selection and metrics are those of ``loop.fit`` (val mIoU every epoch, best-val
  state, test once at the end of the final phase, one confusion matrix per split).

Only the epoch (:func:`pixel_epoch`) and the evaluation (:func:`evaluate_pixels`)
are per-pixel: trainables pass them to ``loop.fit``, so the driver, the result
store and ASHA see exactly the same per-epoch report keys as for the
segmentation strategies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from study.data.bundle import SplitArrays
from study.data.specs import DatasetSpec
from study.train.loop import EpochFn
from study.train.metrics import ConfusionAccumulator

#: Images per loaded batch of the paper's per-pixel arm (benchmark.md §4.1 item 3).
PIXEL_IMAGES_PER_BATCH: dict[str, int] = {"hyko2": 8, "hsidrive": 32, "hcv2": 4}
#: The paper's HyperSL-FC sub-batch (pixels per optimizer step).
SUB_BATCH = 8192
#: Pixels per forward pass in evaluation: bounds memory for HCV2-sized images without changing results.
EVAL_PIXELS = 262_144


def default_images_per_batch(spec: DatasetSpec) -> int:
    """The paper's loaded-batch size for ``spec`` (its RU-Net batch size for a dataset the paper lacks)."""
    return PIXEL_IMAGES_PER_BATCH.get(spec.name, spec.batch_size)


def pixel_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """``TrainSettings`` overrides of a per-pixel trial (for ``trial_setup(..., overrides=)``).

    ``batch_size`` (the RU-Net image batch the driver always sets) does not apply:
    the loaded batch is ``config['images_per_batch']`` (default per dataset), so it
    is recorded here only for completeness. ``hflip_p`` is 0 (see module docstring).
    """
    ipb = config.get("images_per_batch")
    return {"batch_size": int(ipb or config.get("batch_size", 0)), "hflip_p": 0.0}


def pixel_epoch(config: Mapping[str, Any], spec: DatasetSpec) -> EpochFn:
    """``loop.fit``'s epoch function of a per-pixel trial: ``sub_batch`` pixels per AdamW step
    (default the paper's 8,192), ``images_per_batch`` images per loaded batch (default per dataset)."""
    sub_batch = int(config.get("sub_batch", SUB_BATCH))
    ipb = int(config.get("images_per_batch") or default_images_per_batch(spec))
    if sub_batch < 2:
        raise ValueError(f"sub_batch must be >= 2 pixels (BatchNorm needs 2 to train), got {sub_batch}")
    if ipb < 1:
        raise ValueError(f"images_per_batch must be >= 1, got {ipb}")

    def epoch_fn(model, opt, loss_fn, split, gen, device):  # noqa: ANN001, ANN202 - loop.EpochFn
        return train_pixel_epoch(model, opt, loss_fn, split, gen, device, sub_batch, ipb)

    return epoch_fn


def _pixels(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, H, W, D) and labels (B, H, W) -> pixels (P, D) in their stored dtype and labels (P,) int64.

    Pixels stay in raster order inside each image, images keep the given order. The
    stored dtype (float16 feature caches) is kept until a sub-batch is used, so a
    loaded batch costs half the memory.
    """
    images = np.ascontiguousarray(images)
    x = torch.from_numpy(images.reshape(-1, images.shape[-1]))
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64).reshape(-1))
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _trainable_starts(labels: np.ndarray, sub_batch: int, ignore_index: int) -> list[int]:
    """Starts of the sub-batches that train: not all ignore-labelled and at least 2 pixels.

    Decided on the host labels, so the device never has to sync to skip one. A
    1-pixel remainder cannot be batch-normalised in train mode and is dropped.
    """
    chunks = ((s, labels[s : s + sub_batch]) for s in range(0, labels.size, sub_batch))
    return [s for s, chunk in chunks if chunk.size >= 2 and bool((chunk != ignore_index).any())]


def train_pixel_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.CrossEntropyLoss,
    split: SplitArrays,
    gen: np.random.Generator,
    device: torch.device,
    sub_batch: int,
    images_per_batch: int,
) -> float:
    """One pass over the shuffled training images, one optimizer step per trainable sub-batch; mean loss.

    Losses are checked once per loaded batch rather than per step: HCV2 has ~78k
    steps per epoch and a host sync per step would stall the GPU. A non-finite
    loss still stops the trial (FloatingPointError) before the epoch reports.
    """
    model.train()
    order = gen.permutation(len(split))
    losses: list[float] = []
    for start in range(0, len(order), images_per_batch):
        images, labels = split.batch(order[start : start + images_per_batch])  # shuffled order, not sorted
        starts = _trainable_starts(labels.reshape(-1), sub_batch, loss_fn.ignore_index)
        if not starts:
            continue
        x, y = _pixels(images, labels, device)
        batch_losses = []
        for s in starts:
            loss = loss_fn(model(x[s : s + sub_batch].float()), y[s : s + sub_batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            batch_losses.append(loss.detach())
        values = torch.stack(batch_losses).cpu().numpy()
        if not np.isfinite(values).all():
            bad = values[~np.isfinite(values)][0]
            lr = opt.param_groups[0]["lr"]
            raise FloatingPointError(f"training loss became {bad} (lr={lr:g}); trial stopped")
        losses.extend(values.tolist())
    return float(np.mean(losses)) if losses else float("nan")


@torch.inference_mode()
def evaluate_pixels(
    model: nn.Module, split: SplitArrays, spec: DatasetSpec, device: torch.device, batch_size: int
) -> dict:
    """Metrics of per-pixel predictions on whole images of a split, from one confusion matrix."""
    model.eval()
    acc = ConfusionAccumulator(spec.n_classes, spec.ignore_index)
    for start in range(0, len(split), batch_size):
        x, y = _pixels(*split.batch(np.arange(start, min(start + batch_size, len(split)))), device)
        for s in range(0, y.numel(), EVAL_PIXELS):
            acc.add(model(x[s : s + EVAL_PIXELS].float()).argmax(1), y[s : s + EVAL_PIXELS])
    return acc.compute()
