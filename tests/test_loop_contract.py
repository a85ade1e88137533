"""The training loop's paper protocol, checked through the public ``fit`` (docs/reference.md §R8–§R9).

"≤ 500 epochs, early stopping on val mIoU with patience 30, test the best-val checkpoint": a run whose
validation mIoU peaks early must stop exactly ``patience`` epochs after the peak, and its test metrics must
be those of the peak epoch's weights, not the last epoch's. The validation mIoU is scripted (the evaluation
itself is the product's, its mIoU replaced by the script) so the peak is known; everything else — optimizer
steps, the weights, the test evaluation — is real. Also: resuming mid-patience keeps the count, and the
random flip (p = 0.1 per sample) flips image and labels together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from trainable_helpers import Recorder, tiny_hyko2_bundle

from study.data.specs import get_spec
from study.data.stream import Streams
from study.train.loop import evaluate, fit, random_hflip
from study.train.settings import TrainSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = get_spec("hyko2")
#: val mIoU per epoch: the peak at epoch 2, never reached again
VAL_MIOU = [0.10, 0.50, 0.20, 0.30, 0.45, 0.49, 0.40, 0.30, 0.20, 0.10, 0.05, 0.01]
PEAK, PATIENCE, MAX_EPOCHS = 2, 3, len(VAL_MIOU)


@pytest.fixture(scope="module")
def bundle(tiny_root: Path):
    return tiny_hyko2_bundle(tiny_root)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(SPEC.n_bands, SPEC.n_classes, kernel_size=1)


def _settings(**kw) -> TrainSettings:
    base = dict(lr=0.05, weight_decay=0.0, max_epochs=MAX_EPOCHS, batch_size=2, seed=0, patience=PATIENCE,
                final=True, num_threads=1, loader_workers=0)
    return TrainSettings(**{**base, **kw})


class ScriptedVal:
    """``eval_fn``: the product's evaluation; on the val split its mIoU is replaced by the script (:data:`VAL_MIOU`).

    Records the weights each evaluation saw: ``val_states[e]`` after epoch e, ``test_state`` at the test."""

    def __init__(self, test_names: tuple[str, ...], first_epoch: int = 1,
                 val_miou: tuple[float, ...] | list[float] = tuple(VAL_MIOU)) -> None:
        self.test_names = tuple(test_names)
        self.val_miou = list(val_miou)
        self.epoch = first_epoch - 1
        self.val_states: dict[int, dict[str, torch.Tensor]] = {}
        self.test_state: dict[str, torch.Tensor] | None = None

    def __call__(self, net, split, spec, device, settings) -> dict:  # noqa: ANN001 - EvalFn
        metrics = evaluate(net, split, spec, device, settings)
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if tuple(split.names) == self.test_names:
            self.test_state = state
            return metrics
        self.epoch += 1
        self.val_states[self.epoch] = state
        return {**metrics, "miou": self.val_miou[self.epoch - 1]}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _test_metrics_of(state: dict[str, torch.Tensor], bundle, settings: TrainSettings) -> dict:
    """An independent evaluation of ``state`` on the test split (fresh model, fresh stream)."""
    model = _model()
    model.load_state_dict(state)
    with Streams(bundle.train, bundle.val, bundle.test, settings.loader(torch.device("cpu"))) as streams:
        test = streams.test()
        try:
            return evaluate(model, test, SPEC, torch.device("cpu"), settings)
        finally:
            test.close()


def test_stops_patience_epochs_after_the_peak_and_tests_the_peak_weights(bundle, tmp_path: Path) -> None:
    settings = _settings()
    script = ScriptedVal(bundle.test.names)
    rec = Recorder(keep=tmp_path)
    last = fit(_model(), bundle, SPEC, settings, rec, eval_fn=script)

    # early stopping: exactly PATIENCE epochs after the peak, not max_epochs
    assert [m["epoch"] for m in rec.metrics] == list(range(1, PEAK + PATIENCE + 1))
    assert last["is_last"] and last["best_epoch"] == PEAK and last["best_val_miou"] == VAL_MIOU[PEAK - 1]
    assert [m["is_last"] for m in rec.metrics] == [False] * (PEAK + PATIENCE - 1) + [True]

    # the weights changed after the peak, so testing the last ones would be a different evaluation
    assert not _same(script.val_states[PEAK], script.val_states[PEAK + PATIENCE])
    # the test evaluation saw the peak epoch's weights ...
    assert script.test_state is not None and _same(script.test_state, script.val_states[PEAK])
    # ... and its metrics are an independent evaluation of the peak epoch's state
    expected = _test_metrics_of(script.val_states[PEAK], bundle, settings)
    for key in ("miou", "oa", "macc", "macro_f1"):
        assert last[f"test_{key}"] == pytest.approx(expected[key]), key
    # the checkpoint of the last epoch carries that best state
    saved = torch.load(tmp_path / f"epoch{PEAK + PATIENCE}" / "state.pt", weights_only=True)
    assert saved["best_epoch"] == PEAK and _same(saved["best_state"], script.val_states[PEAK])


def test_without_patience_it_runs_every_epoch_and_still_tests_the_best(bundle) -> None:
    script = ScriptedVal(bundle.test.names)
    rec = Recorder()
    last = fit(_model(), bundle, SPEC, _settings(patience=None), rec, eval_fn=script)
    assert [m["epoch"] for m in rec.metrics] == list(range(1, MAX_EPOCHS + 1))
    assert last["best_epoch"] == PEAK and _same(script.test_state, script.val_states[PEAK])


def test_a_later_better_epoch_restarts_the_count(bundle) -> None:
    """Peak at 2, a new best at 4 (patience 3): the run ends at 7, not at 5."""
    script = ScriptedVal(bundle.test.names, val_miou=[0.10, 0.50, 0.20, 0.60, 0.30, 0.20, 0.10, 0.05, 0.01, 0.01,
                                                      0.01, 0.01])
    rec = Recorder()
    last = fit(_model(), bundle, SPEC, _settings(), rec, eval_fn=script)
    assert [m["epoch"] for m in rec.metrics][-1] == 4 + PATIENCE and last["best_epoch"] == 4
    assert _same(script.test_state, script.val_states[4])


def test_resuming_mid_patience_keeps_the_count_and_the_best_state(bundle, tmp_path: Path) -> None:
    from ray import tune

    full_script = ScriptedVal(bundle.test.names)
    full = Recorder(keep=tmp_path)
    full_last = fit(_model(), bundle, SPEC, _settings(), full, eval_fn=full_script)

    # resume after epoch PEAK + 1: one epoch without improvement already counted
    ckpt = tune.Checkpoint.from_directory(str(tmp_path / f"epoch{PEAK + 1}"))
    script = ScriptedVal(bundle.test.names, first_epoch=PEAK + 2)
    resumed = Recorder()
    last = fit(_model(), bundle, SPEC, _settings(), resumed, get_checkpoint=lambda: ckpt, eval_fn=script)
    assert [m["epoch"] for m in resumed.metrics] == list(range(PEAK + 2, PEAK + PATIENCE + 1))
    assert last["best_epoch"] == PEAK
    assert _same(script.test_state, full_script.val_states[PEAK])
    for key in ("test_miou", "test_oa", "test_macc", "test_macro_f1"):
        assert last[key] == pytest.approx(full_last[key]), key


def test_random_flip_flips_image_and_labels_together_with_p_0_1() -> None:
    b, c, h, w = 4000, 2, 3, 5
    cols = torch.arange(w, dtype=torch.float32)
    x = cols.expand(b, c, h, w).clone() + 10 * torch.arange(c, dtype=torch.float32)[None, :, None, None]
    y = torch.arange(w).expand(b, h, w).clone()
    fx, fy = random_hflip(x.clone(), y.clone(), 0.1, np.random.default_rng(0))
    flipped_x = torch.all(fx == x.flip(-1), dim=(1, 2, 3))
    kept_x = torch.all(fx == x, dim=(1, 2, 3))
    flipped_y = torch.all(fy == y.flip(-1), dim=(1, 2))
    kept_y = torch.all(fy == y, dim=(1, 2))
    assert bool(torch.all(flipped_x ^ kept_x)) and bool(torch.all(flipped_y ^ kept_y))  # whole samples only
    assert torch.equal(flipped_x, flipped_y)  # image and mask flipped together
    rate = flipped_x.float().mean().item()
    assert 0.08 < rate < 0.12  # p = 0.1 per sample (4000 draws: sd 0.005)
    # the draw is the generator's: p compared with one uniform per sample
    expected = torch.from_numpy(np.random.default_rng(0).random(b) < 0.1)
    assert torch.equal(flipped_x, expected)
    fx0, fy0 = random_hflip(x.clone(), y.clone(), 0.0, np.random.default_rng(0))
    assert torch.equal(fx0, x) and torch.equal(fy0, y)
    fx1, fy1 = random_hflip(x.clone(), y.clone(), 1.0, np.random.default_rng(0))
    assert torch.equal(fx1, x.flip(-1)) and torch.equal(fy1, y.flip(-1))


def test_training_applies_the_configured_flip(bundle) -> None:
    """hflip_p reaches the epoch: p = 1 trains on mirrored images, so the first epoch's loss differs from p = 0."""
    losses = []
    for p in (0.0, 1.0):
        rec = Recorder()
        fit(_model(), bundle, SPEC, _settings(max_epochs=1, hflip_p=p, final=False, patience=None), rec)
        losses.append(rec.metrics[0]["train_loss"])
    assert losses[0] != losses[1]
