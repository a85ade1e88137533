"""Edges of the metrics module that mutation testing found unpinned (issue 29, docs/testing.md).

The argument rules and their messages word for word, one class, one pixel, ignore_index = K, numpy score
maps, numpy-only and mixed numpy/torch accumulation, and that the caller's matrix is never modified.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matching import whole

from study.train.metrics import ConfusionAccumulator, confusion_matrix, metrics_from_confusion

RANGE = "{name} labels must lie in [0, {top}] (or equal ignore_index for the target), got values in [{lo}, {hi}]"


@pytest.mark.parametrize("bad", [0, -3, 2.0, "4"])
def test_n_classes_must_be_a_positive_int(bad):
    message = whole(f"`n_classes >= 1` must hold, got n_classes={bad!r}")
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.zeros(3, dtype=int), np.zeros(3, dtype=int), bad, None)
    with pytest.raises(ValueError, match=message):
        ConfusionAccumulator(bad, None)


def test_ignore_index_must_be_an_int_or_none():
    message = whole("ignore_index must be an int or None, got '255'")
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.zeros(3, dtype=int), np.zeros(3, dtype=int), 4, "255")
    with pytest.raises(ValueError, match=message):
        ConfusionAccumulator(4, "255")


def test_one_class_is_a_valid_problem():
    cm = confusion_matrix(np.zeros((2, 3), dtype=int), np.zeros((2, 3), dtype=int), 1, None)
    np.testing.assert_array_equal(cm, [[6]])
    m = metrics_from_confusion(cm, None)
    assert (m["miou"], m["oa"], m["macc"], m["macro_f1"], m["iou_per_class"], m["n_pixels"]) == (
        1.0, 1.0, 1.0, 1.0, [1.0], 6)


def test_a_single_valid_pixel_is_scored_not_treated_as_empty():
    m = metrics_from_confusion(np.array([[1, 0], [0, 0]]), None)
    assert m["miou"] == 1.0 and m["oa"] == 1.0 and m["n_pixels"] == 1
    m = metrics_from_confusion(np.array([[0, 1], [0, 0]]), None)  # the one pixel is wrong
    assert m["miou"] == 0.0 and m["oa"] == 0.0 and m["n_pixels"] == 1


def test_ignore_index_equal_to_the_class_count_is_outside_the_matrix():
    cm = np.array([[3, 1], [0, 2]])
    m = metrics_from_confusion(cm, 2)  # labels 0, 1; 2 = ignore (a common convention): nothing to drop
    assert m == metrics_from_confusion(cm, None)
    assert m["oa"] == 5 / 6 and m["n_pixels"] == 6


def test_the_callers_matrix_is_not_modified():
    cm = np.array([[3, 1, 0], [0, 2, 1], [4, 4, 4]], dtype=np.int64)
    before = cm.copy()
    m = metrics_from_confusion(cm, 2)
    np.testing.assert_array_equal(cm, before)
    assert m["n_pixels"] == 7


def test_out_of_range_messages_word_for_word_on_both_paths():
    for as_input in (np.asarray, torch.as_tensor):
        with pytest.raises(ValueError, match=whole(RANGE.format(name="pred", top=3, lo=0, hi=4))):
            confusion_matrix(as_input([0, 4]), as_input([0, 1]), 4, None)
        with pytest.raises(ValueError, match=whole(RANGE.format(name="pred", top=3, lo=-1, hi=1))):
            confusion_matrix(as_input([-1, 1]), as_input([0, 1]), 4, None)
        with pytest.raises(ValueError, match=whole(RANGE.format(name="target", top=3, lo=-1, hi=1))):
            confusion_matrix(as_input([0, 1]), as_input([-1, 1]), 4, 3)
        with pytest.raises(ValueError, match=whole(RANGE.format(name="target", top=3, lo=0, hi=5))):
            confusion_matrix(as_input([0, 1]), as_input([0, 5]), 4, None)


def test_shape_and_count_messages_word_for_word():
    shape = whole("pred must have the target's shape (labels) or (B, K, ...) scores, got pred (2, 3) and target "
                   "(3, 2)")
    with pytest.raises(ValueError, match=shape):
        confusion_matrix(np.zeros((2, 3), dtype=int), np.zeros((3, 2), dtype=int), 4, None)
    with pytest.raises(ValueError, match=whole("confusion matrix entries must be non-negative counts")):
        metrics_from_confusion(np.array([[1, -1], [0, 2]]), None)
    with pytest.raises(ValueError, match="must be square"):
        metrics_from_confusion(np.zeros((0, 0), dtype=int), None)


def test_numpy_score_maps_are_argmaxed_over_the_class_axis():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(2, 5, 3, 4))  # (B, K, H, W), every axis a different length
    target = rng.integers(0, 5, size=(2, 3, 4))
    expected = confusion_matrix(scores.argmax(1), target, 5, None)
    np.testing.assert_array_equal(confusion_matrix(scores, target, 5, None), expected)
    acc = ConfusionAccumulator(5, None)
    acc.add(scores, target)
    np.testing.assert_array_equal(acc.matrix, expected)


def _batches(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, size=(4, 3, 5)), rng.integers(0, 5, size=(4, 3, 5))  # 4 = the ignore label


def test_numpy_batches_add_up_with_ignore_pixels_dropped():
    pred, target = _batches()
    one_shot = confusion_matrix(pred, target, 5, 4)
    assert (target == 4).any() and one_shot[4].sum() == 0
    acc = ConfusionAccumulator(5, 4)
    for i in range(4):
        acc.add(pred[i : i + 1], target[i : i + 1])
    assert acc.matrix.dtype == np.int64
    np.testing.assert_array_equal(acc.matrix, one_shot)


@pytest.mark.parametrize("pred_tensor", [True, False])
def test_mixed_numpy_and_torch_inputs_count_the_same(pred_tensor):
    pred, target = _batches(1)
    one_shot = confusion_matrix(pred, target, 5, 4)
    pred_in = torch.from_numpy(pred) if pred_tensor else pred
    target_in = target if pred_tensor else torch.from_numpy(target)
    np.testing.assert_array_equal(confusion_matrix(pred_in, target_in, 5, 4), one_shot)
    acc = ConfusionAccumulator(5, 4)
    acc.add(pred_in[:2], target_in[:2])
    acc.add(pred[2:], target[2:])  # numpy batches after torch ones: one total
    assert acc.matrix.dtype == np.int64
    np.testing.assert_array_equal(acc.matrix, one_shot)
