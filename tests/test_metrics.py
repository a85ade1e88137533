"""Confusion-matrix metrics against hand-computed cases (docs/reference.md §R10 semantics)."""

from __future__ import annotations

import math
from fractions import Fraction as Fr

import numpy as np
import pytest
import torch

from study.train.metrics import ConfusionAccumulator, confusion_matrix, metrics_from_confusion

# 3 classes + ignore slot 3. Pixels 6 and 7 have target == ignore and are dropped; pixels 4 and 8
# predict the ignore class on valid pixels (errors).
TARGET = [0, 0, 0, 1, 1, 2, 3, 3, 0, 1]
PRED = [0, 0, 1, 1, 3, 2, 0, 1, 3, 1]
# rows = target, cols = prediction, after dropping target == 3
CM = [
    [2, 1, 0, 1],
    [0, 2, 0, 1],
    [0, 0, 1, 0],
    [0, 0, 0, 0],
]
# class 0: tp 2, fp 0, fn 2 -> IoU 2/4, recall 2/4, F1 4/6
# class 1: tp 2, fp 1, fn 1 -> IoU 2/4, recall 2/3, F1 4/6
# class 2: tp 1, fp 0, fn 0 -> IoU 1,   recall 1,   F1 1
# class 3 (ignore): fp 2, excluded from mIoU; counts as a 0 in AA and F1 (torchmetrics 1.9.0 does so)
EXPECTED = {
    "iou": [Fr(1, 2), Fr(1, 2), Fr(1)],
    "miou": (Fr(1, 2) + Fr(1, 2) + 1) / 3,  # 2/3
    "oa": Fr(5, 8),  # 5 correct of 8 valid pixels; ignore predictions count in the 8
    "macc": (Fr(1, 2) + Fr(2, 3) + 1 + 0) / 4,  # 13/24, torchmetrics' value
    "macro_f1": (Fr(2, 3) + Fr(2, 3) + 1 + 0) / 4,  # 7/12
}


def _close(a: float, b: Fr | float) -> bool:
    return math.isclose(a, float(b), rel_tol=1e-12, abs_tol=1e-12)


def test_confusion_matrix_drops_ignore_targets_and_keeps_ignore_predictions():
    cm = confusion_matrix(np.array(PRED), np.array(TARGET), n_classes=4, ignore_index=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, np.array(CM))
    assert cm.sum() == 8


def test_hand_computed_case():
    m = metrics_from_confusion(np.array(CM), ignore_index=3)
    assert _close(m["miou"], EXPECTED["miou"])
    assert _close(m["oa"], EXPECTED["oa"])
    assert _close(m["macc"], EXPECTED["macc"])
    assert _close(m["macro_f1"], EXPECTED["macro_f1"])
    assert m["n_pixels"] == 8
    assert len(m["iou_per_class"]) == 4
    for got, want in zip(m["iou_per_class"][:3], EXPECTED["iou"], strict=True):
        assert _close(got, want)
    assert math.isnan(m["iou_per_class"][3])


def test_ignore_predictions_count_as_errors():
    # Same targets, but the two ignore-class predictions on valid pixels become correct.
    pred = list(PRED)
    pred[4], pred[8] = 1, 0
    m = metrics_from_confusion(confusion_matrix(np.array(pred), np.array(TARGET), 4, 3), 3)
    assert _close(m["oa"], Fr(7, 8))
    assert m["oa"] > EXPECTED["oa"]


def test_ignore_row_in_given_matrix_is_ignored():
    cm = np.array(CM)
    cm[3] = [5, 6, 7, 8]  # a caller that forgot to drop ignore targets
    m = metrics_from_confusion(cm, ignore_index=3)
    assert _close(m["miou"], EXPECTED["miou"]) and m["n_pixels"] == 8


def test_class_absent_from_prediction_and_target_is_excluded():
    # 3 classes + ignore 3; class 2 appears nowhere.
    cm = confusion_matrix(np.array([0, 1, 1, 1]), np.array([0, 1, 0, 1]), n_classes=4, ignore_index=3)
    m = metrics_from_confusion(cm, ignore_index=3)
    # class 0: tp 1, fn 1 -> IoU 1/2, recall 1/2, F1 2/3; class 1: tp 2, fp 1 -> IoU 2/3, recall 1, F1 4/5
    assert _close(m["miou"], (Fr(1, 2) + Fr(2, 3)) / 2)  # 7/12, not divided by 3
    assert _close(m["macc"], (Fr(1, 2) + 1) / 2)
    assert _close(m["macro_f1"], (Fr(2, 3) + Fr(4, 5)) / 2)
    assert _close(m["oa"], Fr(3, 4))
    assert math.isnan(m["iou_per_class"][2]) and math.isnan(m["iou_per_class"][3])


def test_class_predicted_but_absent_from_target_counts_with_zero():
    # No ignore index; class 2 is predicted once but never in the target.
    cm = confusion_matrix(np.array([0, 2, 1, 1]), np.array([0, 0, 1, 1]), n_classes=3, ignore_index=None)
    m = metrics_from_confusion(cm, ignore_index=None)
    assert m["iou_per_class"][2] == 0.0
    assert _close(m["miou"], (Fr(1, 2) + 1 + 0) / 3)
    assert _close(m["macc"], (Fr(1, 2) + 1 + 0) / 3)
    assert _close(m["macro_f1"], (Fr(2, 3) + 1 + 0) / 3)
    assert _close(m["oa"], Fr(3, 4))


def test_perfect_prediction_is_one():
    target = np.array([[0, 1, 2], [2, 3, 1]])
    pred = np.where(target == 3, 0, target)  # whatever is predicted on ignore pixels does not matter
    m = metrics_from_confusion(confusion_matrix(pred, target, 4, 3), 3)
    for key in ("miou", "oa", "macc", "macro_f1"):
        assert m[key] == 1.0
    assert m["n_pixels"] == 5


def test_empty_split_gives_nan_not_crash():
    target = np.full((2, 3), 3)
    cm = confusion_matrix(np.zeros((2, 3), dtype=np.int64), target, 4, 3)
    assert cm.sum() == 0
    m = metrics_from_confusion(cm, 3)
    assert m["n_pixels"] == 0
    assert all(math.isnan(m[k]) for k in ("miou", "oa", "macc", "macro_f1"))
    assert len(m["iou_per_class"]) == 4 and all(math.isnan(v) for v in m["iou_per_class"])
    acc = ConfusionAccumulator(4, 3)
    assert math.isnan(acc.compute()["miou"])


def test_ignore_index_outside_class_range():
    # HCV2-style raw 255 that was not remapped: dropped, and no class is excluded for it.
    target = np.array([0, 1, 255, 2])
    pred = np.array([0, 1, 0, 2])
    cm = confusion_matrix(pred, target, 3, 255)
    m = metrics_from_confusion(cm, 255)
    assert cm.sum() == 3 and m["miou"] == 1.0 and not any(math.isnan(v) for v in m["iou_per_class"])


def _same_metrics(a: dict, b: dict) -> bool:
    def flat(m: dict) -> list[float]:
        return [m["miou"], m["oa"], m["macc"], m["macro_f1"], *m["iou_per_class"]]

    return np.allclose(flat(a), flat(b), equal_nan=True) and a["n_pixels"] == b["n_pixels"]


def test_accumulation_over_batches_equals_one_shot():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(6, 7, 9))
    pred = rng.integers(0, 5, size=(6, 7, 9))
    one_shot = confusion_matrix(pred, target, 5, 4)
    acc = ConfusionAccumulator(5, 4)
    for i in range(0, 6, 2):
        acc.add(torch.from_numpy(pred[i : i + 2]), torch.from_numpy(target[i : i + 2]))
    acc.add(pred[:0], target[:0])  # an empty numpy batch is harmless
    np.testing.assert_array_equal(acc.matrix, one_shot)
    assert _same_metrics(acc.compute(), metrics_from_confusion(one_shot, 4))
    acc.reset()
    assert acc.matrix.sum() == 0


def test_torch_and_numpy_inputs_agree_and_scores_are_argmaxed():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 5, 4, generator=gen)  # (B, K, H, W)
    target = torch.randint(0, 6, (3, 5, 4), generator=gen)
    from_torch = confusion_matrix(logits, target, 6, 0)
    from_numpy = confusion_matrix(logits.argmax(1).numpy(), target.numpy(), 6, 0)
    mixed = confusion_matrix(logits.argmax(1), target.numpy(), 6, 0)
    np.testing.assert_array_equal(from_torch, from_numpy)
    np.testing.assert_array_equal(from_torch, mixed)
    assert from_torch.dtype == np.int64 and from_torch.sum() == int((target != 0).sum())


def test_out_of_range_labels_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="pred labels"):
        confusion_matrix(np.array([0, 4]), np.array([0, 1]), 4, None)
    with pytest.raises(ValueError, match="target labels"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, -1]), 4, 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), dtype=int), np.zeros((3, 2), dtype=int), 4, None)
    with pytest.raises(ValueError, match="square"):
        metrics_from_confusion(np.zeros((2, 3), dtype=int), None)
