"""The per-pixel epoch and evaluation (HyperSL-FC, in-domain FC) that ``loop.fit`` runs for per-pixel trials.

The cross-domain paper trains its spectral classifiers by manual optimisation
over sub-batches of pixels (``docs/reference.md`` §R16 item 3):

- an epoch walks the shuffled training images in *loaded batches* (HyKo2 8,
  HSI-Drive 32, HCV2 4 images), concatenates each batch's pixels in raster order
  inside each image into (P, D), and takes one AdamW step per contiguous
  ``sub_batch`` pixels (8,192 in the paper);
- a sub-batch whose pixels are all ignore-labelled is skipped (its loss would be
  0/0). It is skipped before the forward pass, so BatchNorm's running statistics
  come only from sub-batches that train;
- no augmentation: a flip only reorders pixels, and the paper's 1×1-patch data
  has none;
- images stream one at a time from the split's loader (:mod:`study.data.stream`); a
  loaded batch's pixels are regrouped into the same ``sub_batch`` steps as if the
  batch had been concatenated (a step may span two images, the batch's remainder
  is its last step), so a trial holds one image plus one step, not the batch;
- selection and metrics are those of ``loop.fit`` (val mIoU every epoch, best-val
  state, test once at the end of the final phase, one confusion matrix per split).

Only the epoch (:func:`pixel_epoch`) and the evaluation (:func:`evaluate_pixels`)
are per-pixel: trainables pass them to ``loop.fit``, so the driver, the result
store and ASHA see exactly the same per-epoch report keys as for the
segmentation strategies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from study.data.specs import DatasetSpec
from study.data.stream import BatchStream, to_device
from study.train.loop import EpochFn, PendingLosses, forward
from study.train.metrics import ConfusionAccumulator
from study.train.settings import TrainSettings

#: Images per loaded batch of the paper's per-pixel arm (docs/reference.md §R16 item 3).
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
    amp = str(config.get("autocast", "auto"))
    if sub_batch < 2:
        raise ValueError(f"sub_batch must be >= 2 pixels (BatchNorm needs 2 to train), got {sub_batch}")
    if ipb < 1:
        raise ValueError(f"images_per_batch must be >= 1, got {ipb}")

    def epoch_fn(model, opt, loss_fn, split, gen, device):  # noqa: ANN001, ANN202 - loop.EpochFn
        return train_pixel_epoch(model, opt, loss_fn, split, gen, device, sub_batch, ipb, amp)

    return epoch_fn


Pixels = tuple[torch.Tensor, torch.Tensor, np.ndarray]  # (P, D) on device, (P,) on device, (P,) host labels


def _image_pixels(images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Pixels:
    """One loader batch (B, H, W, D) + (B, H, W) -> its pixels in raster order (P, D), labels (P,), host labels."""
    host = labels.reshape(-1).cpu().numpy()  # a device placement's labels come back (small): decided on the host
    x = to_device(images.reshape(-1, images.shape[-1]), device)
    return x, to_device(labels.reshape(-1), device), host


def regroup(pieces: Iterable[tuple[Pixels, bool]], step: int) -> Iterator[Pixels]:
    """Contiguous ``step``-pixel chunks of the concatenated pieces; a piece flagged True ends a group,
    whose remainder is emitted as its last (shorter) chunk. Holds at most one piece plus one step."""
    carry: list[Pixels] = []
    held = 0
    for piece, ends_group in pieces:
        carry.append(piece)
        held += piece[2].size
        if held >= step or ends_group:
            x = torch.cat([c[0] for c in carry]) if len(carry) > 1 else carry[0][0]
            y = torch.cat([c[1] for c in carry]) if len(carry) > 1 else carry[0][1]
            h = np.concatenate([c[2] for c in carry]) if len(carry) > 1 else carry[0][2]
            n_out = held if ends_group else held - held % step
            for s in range(0, n_out, step):
                e = min(s + step, n_out)
                yield x[s:e], y[s:e], h[s:e]
            carry = [] if n_out == held else [(x[n_out:], y[n_out:], h[n_out:])]
            held -= n_out


def trains(host_labels: np.ndarray, ignore_index: int) -> bool:
    """A sub-batch trains if it has a labelled pixel (else its loss is 0/0) and >= 2 pixels (a 1-pixel
    remainder cannot be batch-normalised in train mode). Skipped before the forward pass, so BatchNorm's
    running statistics come only from sub-batches that train."""
    return host_labels.size >= 2 and bool((host_labels != ignore_index).any())


def _grouped(split: BatchStream, order: np.ndarray, group: int,
             device: torch.device) -> Iterator[tuple[Pixels, bool]]:
    """The images of ``order`` streamed one by one, flagged at the end of every ``group`` images."""
    n = len(order)
    for j, (images, labels) in enumerate(split.batches([[int(i)] for i in order])):
        yield _image_pixels(images, labels, device), (j + 1) % group == 0 or j + 1 == n


def train_pixel_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.CrossEntropyLoss,
    split: BatchStream,
    gen: np.random.Generator,
    device: torch.device,
    sub_batch: int,
    images_per_batch: int,
    amp: str = "auto",
) -> float:
    """One pass over the shuffled training images, one optimizer step per trainable sub-batch; mean loss.

    A sub-batch trains when it has >= 2 pixels (BatchNorm) and a labelled one, decided
    on the host labels, so the device never syncs to skip one. Losses are checked
    every ``loop.LOSS_CHECK_EVERY`` steps rather than per step: HCV2 has ~78k steps
    per epoch and a host sync per step would stall the GPU. A non-finite loss still
    stops the trial (FloatingPointError) before the epoch reports.
    """
    model.train()
    order = gen.permutation(len(split))
    losses = PendingLosses(device, opt.param_groups[0]["lr"])  # on the device, no host sync per step
    for x, y, host in regroup(_grouped(split, order, images_per_batch, device), sub_batch):
        if not trains(host, loss_fn.ignore_index):
            continue
        loss = loss_fn(forward(model, x.float(), amp), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.add(loss)
    return losses.mean()


@torch.inference_mode()
def evaluate_pixels(model: nn.Module, split: BatchStream, spec: DatasetSpec, device: torch.device,
                    settings: TrainSettings) -> dict:
    """Metrics of per-pixel predictions on whole images of a split, from one confusion matrix."""
    model.eval()
    acc = ConfusionAccumulator(spec.n_classes, spec.ignore_index)
    order = np.arange(len(split))
    for x, y, _ in regroup(_grouped(split, order, settings.eval_batch_size, device), EVAL_PIXELS):
        acc.add(forward(model, x.float(), settings.autocast).argmax(1), y)
    return acc.compute()
