"""Segmentation metrics from one confusion matrix per split (numpy + torch, no torchmetrics).

The study reports what the cross-domain paper's code reports (torchmetrics,
``task="multiclass"``, ``docs/reference.md`` §R10): statistics are
accumulated over the whole split and reduced once, never averaged per image.
Keeping the (K, K) int64 matrix instead of running means makes batches, images
and workers add up exactly, and lets per-class IoU be stored with every result.

Semantics:
- pixels whose *target* is ``ignore_index`` are dropped before counting;
- predictions of the ignore class on valid pixels stay: they are errors (they
  lower OA and the true class's recall/IoU);
- mIoU averages over every class except the ignore class that has
  tp + fp + fn > 0 in the split. A class predicted but absent from the target
  therefore counts with IoU = recall = F1 = 0.
- mean accuracy (AA) and macro F1 follow torchmetrics 1.9.0 exactly (checked by
  running it), including its one quirk: when the ignore class is *predicted* on
  valid pixels, it counts as one more class with recall = F1 = 0. The paper's AA
  and F1 numbers are computed that way, so ours are comparable with them.
  All four metrics equal torchmetrics' on the hand-computed and random cases.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _check_args(n_classes: int, ignore_index: int | None) -> None:
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"`n_classes >= 1` must hold, got n_classes={n_classes!r}")
    if ignore_index is not None and not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")


def _labels_from(pred: ArrayLike, target: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Accept label maps (B, H, W) or scores (B, K, H, W) for ``pred``: argmax over dim 1."""
    if pred.ndim == target.ndim + 1:
        pred = pred.argmax(1) if isinstance(pred, Tensor) else np.argmax(pred, axis=1)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            "pred must have the target's shape (labels) or (B, K, ...) scores, "
            f"got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    return pred, target


def _check_range(name: str, lo: int, hi: int, n_classes: int) -> None:
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"{name} labels must lie in [0, {n_classes - 1}] (or equal ignore_index for the target), "
            f"got values in [{lo}, {hi}]"
        )


def _confusion_torch(pred: Tensor, target: Tensor, n_classes: int, ignore_index: int | None) -> Tensor:
    """(…) label tensors on any device -> (K, K) int64 tensor on that device."""
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if target.numel():
        # One host sync per batch for validation; bincount on CUDA syncs for its size anyway.
        stats = torch.stack([pred.min(), pred.max(), target.min(), target.max()]).tolist()
        _check_range("pred", stats[0], stats[1], n_classes)
        _check_range("target", stats[2], stats[3], n_classes)
    counts = torch.bincount(target * n_classes + pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def _confusion_numpy(pred: np.ndarray, target: np.ndarray, n_classes: int, ignore_index: int | None) -> np.ndarray:
    """(…) label arrays -> (K, K) int64 array."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64, copy=False)
    target = np.asarray(target).reshape(-1).astype(np.int64, copy=False)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if target.size:
        _check_range("pred", int(pred.min()), int(pred.max()), n_classes)
        _check_range("target", int(target.min()), int(target.max()), n_classes)
    counts = np.bincount(target * n_classes + pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64, copy=False)


def confusion_matrix(pred: ArrayLike, target: ArrayLike, n_classes: int, ignore_index: int | None) -> np.ndarray:
    """Confusion matrix of one batch: (K, K) int64, rows = target class, cols = predicted class.

    ``pred``: labels with the target's shape, e.g. (B, H, W), or scores (B, K, H, W)
    (argmax over dim 1). ``target``: labels (B, H, W). Torch inputs are counted
    with ``bincount`` on their device and only the (K, K) result is copied back.
    Pixels whose target equals ``ignore_index`` are dropped; any other label
    outside [0, K) raises ValueError instead of being silently miscounted.
    """
    _check_args(n_classes, ignore_index)
    pred, target = _labels_from(pred, target)
    if isinstance(pred, Tensor) or isinstance(target, Tensor):
        pred_t = pred if isinstance(pred, Tensor) else torch.from_numpy(np.asarray(pred))
        target_t = target if isinstance(target, Tensor) else torch.from_numpy(np.asarray(target))
        return _confusion_torch(pred_t, target_t, n_classes, ignore_index).cpu().numpy().astype(np.int64)
    return _confusion_numpy(pred, target, n_classes, ignore_index)


class ConfusionAccumulator:
    """Sums confusion matrices batch by batch over a split.

    Torch batches are accumulated on their own device (no host copy per batch);
    ``matrix`` returns the (K, K) int64 numpy total. Mixing numpy and torch
    batches is allowed.
    """

    def __init__(self, n_classes: int, ignore_index: int | None) -> None:
        _check_args(n_classes, ignore_index)
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Start a new split."""
        self._host = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)
        self._device: Tensor | None = None

    def add(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Count one batch: ``pred`` (B, H, W) labels or (B, K, H, W) scores, ``target`` (B, H, W)."""
        pred, target = _labels_from(pred, target)
        if isinstance(pred, Tensor) or isinstance(target, Tensor):
            pred_t = pred if isinstance(pred, Tensor) else torch.from_numpy(np.asarray(pred))
            target_t = target if isinstance(target, Tensor) else torch.from_numpy(np.asarray(target))
            cm = _confusion_torch(pred_t.detach(), target_t.detach(), self.n_classes, self.ignore_index)
            if self._device is None:
                self._device = cm
            else:
                self._device = self._device + cm.to(self._device.device)
        else:
            self._host += _confusion_numpy(pred, target, self.n_classes, self.ignore_index)

    @property
    def matrix(self) -> np.ndarray:
        """(K, K) int64 total so far; rows = target, cols = prediction."""
        if self._device is None:
            return self._host.copy()
        return self._host + self._device.cpu().numpy().astype(np.int64)

    def compute(self) -> dict:
        """``metrics_from_confusion`` of the total so far."""
        return metrics_from_confusion(self.matrix, self.ignore_index)


def _nan_result(n_classes: int, n_pixels: int) -> dict:
    nan = float("nan")
    return {
        "miou": nan,
        "oa": nan,
        "macc": nan,
        "macro_f1": nan,
        "iou_per_class": [nan] * n_classes,
        "n_pixels": n_pixels,
    }


def metrics_from_confusion(cm: np.ndarray, ignore_index: int | None) -> dict:
    """Reduce a (K, K) confusion matrix (rows = target) to the study's metrics.

    Returns ``miou``, ``oa``, ``macc`` (mean recall), ``macro_f1`` as floats in
    [0, 1]; ``iou_per_class`` (K floats, nan for the ignore class and for classes
    absent from both prediction and target); ``n_pixels`` (valid pixels counted).
    A row for the ignore class, if the caller built the matrix without dropping
    it, is zeroed first, so the result never depends on ignored pixels. No valid
    pixels (or no included class) -> nan metrics rather than an exception, so an
    empty split shows up in the results instead of killing a trial.
    """
    cm = np.array(cm, dtype=np.int64, copy=True)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1:
        raise ValueError(f"confusion matrix must be square (K, K) with K >= 1, got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("confusion matrix entries must be non-negative counts")
    k = cm.shape[0]
    has_ignore_class = ignore_index is not None and 0 <= ignore_index < k
    if has_ignore_class:
        cm[ignore_index, :] = 0
    total = int(cm.sum())
    if total == 0:
        return _nan_result(k, 0)

    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    included = (tp + fp + fn) > 0
    if has_ignore_class:
        included[ignore_index] = False

    def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        # den == 0 only for classes with no target pixels: recall 0 by convention (torchmetrics).
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    # torchmetrics' Accuracy/F1 keep the ignore class when it was predicted (fp > 0), scoring 0.
    included_acc = included.copy()
    if has_ignore_class and fp[ignore_index] > 0:
        included_acc[ignore_index] = True

    iou = _ratio(tp, tp + fp + fn)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    iou_per_class = [float(v) if inc else math.nan for v, inc in zip(iou, included, strict=True)]
    # total > 0 means some non-ignore target row is non-empty, so `included` is never all False.
    return {
        "miou": float(iou[included].mean()),
        "oa": float(tp.sum() / total),
        "macc": float(recall[included_acc].mean()),
        "macro_f1": float(f1[included_acc].mean()),
        "iou_per_class": iou_per_class,
        "n_pixels": total,
    }
