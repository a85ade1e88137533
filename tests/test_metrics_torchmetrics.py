"""The study's metrics against torchmetrics itself (docs/reference.md §R10: the cross-domain code's metrics are
torchmetrics 1.9, ``task="multiclass"``, ``num_classes`` incl. the ignore slot, ``ignore_index`` = ignore id).

OA = ``Accuracy(average="micro")``, AA = ``Accuracy(average="macro")``, F1 = ``F1Score(average="macro")``,
mIoU = ``JaccardIndex(average="macro")``. Random predictions and targets, with ignored pixels, classes absent
from the target, classes never predicted and the ignore class predicted on valid pixels, accumulated over
several batches (one confusion matrix per split, as the paper's metric objects accumulate). torchmetrics is a
test dependency only; without it these tests are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.train.metrics import ConfusionAccumulator, confusion_matrix, metrics_from_confusion

tm = pytest.importorskip("torchmetrics", reason="needs torchmetrics (pip install -e '.[dev]')")


def _reference(k: int, ignore: int | None) -> dict[str, object]:
    kw = dict(task="multiclass", num_classes=k, ignore_index=ignore)
    return {"oa": tm.Accuracy(average="micro", **kw), "macc": tm.Accuracy(average="macro", **kw),
            "macro_f1": tm.F1Score(average="macro", **kw), "miou": tm.JaccardIndex(average="macro", **kw)}


def _batches(rng: np.random.Generator, k: int, ignore: int | None, n_batches: int) -> list[tuple[torch.Tensor, ...]]:
    absent = set(rng.choice(k, size=max(1, k // 4), replace=False).tolist()) - {ignore}
    out = []
    for _ in range(n_batches):
        shape = (int(rng.integers(1, 4)), int(rng.integers(2, 9)), int(rng.integers(2, 9)))
        target = torch.from_numpy(rng.integers(0, k, size=shape))
        for a in absent:  # some classes never occur in the target
            target[target == a] = (a + 1) % k if (a + 1) % k not in absent else (ignore if ignore is not None else 0)
        good = torch.from_numpy(rng.random(shape) < rng.uniform(0.2, 0.8))
        pred = torch.where(good, target, torch.from_numpy(rng.integers(0, k, size=shape)))
        if ignore is not None:
            pred[pred == ignore] = ignore  # may predict the ignore class on valid pixels
            target[torch.from_numpy(rng.random(shape) < 0.15)] = ignore
        out.append((pred, target))
    return out


CASES = [(k, ignore, seed) for seed in range(12) for k, ignore in ((11, 0), (10, 9), (20, 19), (5, None), (4, 2))]


@pytest.mark.parametrize("k, ignore, seed", CASES)
def test_metrics_equal_torchmetrics_on_random_splits(k: int, ignore: int | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batches = _batches(rng, k, ignore, n_batches=int(rng.integers(1, 5)))
    ref = _reference(k, ignore)
    acc = ConfusionAccumulator(k, ignore)
    for pred, target in batches:
        for metric in ref.values():
            metric.update(pred, target)
        acc.add(pred, target)
    if acc.matrix.sum() == 0:
        return  # no valid pixel: we return nan, torchmetrics its own convention; not a case of the study
    ours = acc.compute()
    for key, metric in ref.items():
        assert ours[key] == pytest.approx(float(metric.compute()), abs=1e-6), (key, acc.matrix.tolist())


@pytest.mark.parametrize("seed", range(6))
def test_scores_input_and_numpy_labels_agree_with_torchmetrics(seed: int) -> None:
    """Logits (B, K, H, W) are reduced by argmax, as the paper's ``preds`` are; numpy labels count the same."""
    rng = np.random.default_rng(100 + seed)
    k, ignore = 10, 9
    logits = torch.from_numpy(rng.normal(size=(2, k, 6, 7)).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, k, size=(2, 6, 7)))
    ref = _reference(k, ignore)
    for metric in ref.values():
        metric.update(logits, target)
    cm = confusion_matrix(logits, target, k, ignore)
    np.testing.assert_array_equal(cm, confusion_matrix(logits.argmax(1).numpy(), target.numpy(), k, ignore))
    ours = metrics_from_confusion(cm, ignore)
    for key, metric in ref.items():
        assert ours[key] == pytest.approx(float(metric.compute()), abs=1e-6), key


def test_per_class_iou_equals_torchmetrics_where_the_class_counts() -> None:
    rng = np.random.default_rng(7)
    k, ignore = 11, 0
    pred, target = _batches(rng, k, ignore, 1)[0]
    per_class = tm.JaccardIndex(task="multiclass", num_classes=k, ignore_index=ignore, average="none")(pred, target)
    ours = metrics_from_confusion(confusion_matrix(pred, target, k, ignore), ignore)["iou_per_class"]
    for c in range(k):
        if not np.isnan(ours[c]):
            assert ours[c] == pytest.approx(float(per_class[c]), abs=1e-6), c
