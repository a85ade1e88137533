"""The loop's parts one by one, where mutation testing found them unpinned (issue 29, docs/testing.md).

The epoch plan, the evaluation batch rule, the pending-loss buffer (one host read per 64 steps, the first
non-finite loss named), unlabelled batches skipped (not the rest of the epoch), the forward precision, the
tensors a batch becomes, and what ``fit`` takes from its settings: the seed, ``compile``, the backbone's lr.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from trainable_helpers import Recorder, tiny_hyko2_bundle

from study.data.specs import get_spec
from study.train.loop import (
    LOSS_CHECK_EVERY,
    PendingLosses,
    all_ignored,
    epoch_plan,
    eval_images,
    fit,
    forward,
    random_hflip,
    to_tensors,
    train_epoch,
    tune_hooks,
)
from study.train.settings import TrainSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = get_spec("hyko2")
CPU = torch.device("cpu")


def _settings(**kw) -> TrainSettings:
    base = dict(lr=0.05, weight_decay=0.0, max_epochs=1, batch_size=1, seed=0, patience=None, final=False,
                num_threads=1, loader_workers=0, hflip_p=0.0)
    return TrainSettings(**{**base, **kw})


def test_tune_hooks_are_the_callers_or_ray_tunes() -> None:
    from ray import tune

    def report(*_a, **_k) -> None: ...

    def get() -> None: ...

    assert tune_hooks(report, get) == (report, get)
    assert tune_hooks(None, None) == (tune.report, tune.get_checkpoint)


def test_a_batch_becomes_float32_images_channels_first_and_int64_labels() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 3, 4, 5))  # float64 (B, H, W, C)
    labels = rng.integers(0, 7, size=(2, 3, 4)).astype(np.int16)
    for im, lb in ((images, labels), (torch.from_numpy(images).half(), torch.from_numpy(labels))):
        x, y = to_tensors(im, lb, CPU)
        assert x.dtype == torch.float32 and x.shape == (2, 5, 3, 4) and x.is_contiguous()
        assert y.dtype == torch.int64 and y.shape == (2, 3, 4)
        np.testing.assert_array_equal(y.numpy(), labels)
        expected = np.asarray(im.float() if isinstance(im, torch.Tensor) else im, dtype=np.float32)
        np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), expected)


def test_forward_precision_follows_the_mode() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(6, 3, 1)
    x = torch.randn(2, 6, 4, 4) * 100
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x).float()
        assert torch.equal(forward(model, x), fp32)  # default "auto": fp32 on a CPU
        assert torch.equal(forward(model, x, "off"), fp32)
        out = forward(model, x, "bf16")
    assert out.dtype == torch.float32 and torch.equal(out, bf16) and not torch.equal(out, fp32)
    with pytest.raises(ValueError, match="autocast must be auto, bf16 or off"):
        forward(model, x, "fp8")


@pytest.mark.parametrize(("shapes", "batch", "expected"), [
    ([(711, 944)], 8, 3),  # HCV2: 3 images of 671,184 px fit 2^21
    ([(64, 64), (711, 944)], 8, 3),  # the largest image decides
    ([(100, 100)], 8, 8),
    ([(2000, 2000)], 8, 1),  # one image over the bound: still one per batch
    ([], 5, 5),
])
def test_eval_images_bounds_the_pixels_per_batch(shapes, batch, expected) -> None:
    n = eval_images(shapes, batch)
    assert n == expected and isinstance(n, int)


def test_epoch_plan_is_the_generators_permutation_cut_into_sorted_batches() -> None:
    perm = np.random.default_rng(4).permutation(10)
    expected = [sorted(perm[0:4].tolist()), sorted(perm[4:8].tolist()), sorted(perm[8:10].tolist())]
    assert epoch_plan(10, 4, np.random.default_rng(4)) == expected
    windows = [(i, 2 * i, 3, 5) for i in range(10)]
    with_windows = epoch_plan(10, 4, np.random.default_rng(4), windows)
    assert with_windows == [[(i, *windows[i]) for i in b] for b in expected]


def test_pending_losses_are_read_back_once_per_64_steps_in_order() -> None:
    values = np.arange(150, dtype=np.float32) / 7
    losses = PendingLosses(CPU, 1e-3)
    for v in values[:10]:
        losses.add(torch.tensor(v))
    assert losses.n == 10 and losses.values == []  # nothing read back yet: no host sync per step
    for v in values[10:]:
        losses.add(torch.tensor(v))
    assert losses.n == 150 - 2 * LOSS_CHECK_EVERY and len(losses.values) == 2 * LOSS_CHECK_EVERY
    assert losses.mean() == pytest.approx(float(np.mean(values)), rel=1e-6)
    assert losses.values == values.tolist() and losses.n == 0


def test_the_first_non_finite_loss_stops_the_trial_by_name() -> None:
    losses = PendingLosses(CPU, 0.5)
    for v in (1.0, float("inf"), float("nan")):
        losses.add(torch.tensor(v))
    with pytest.raises(FloatingPointError, match=re.escape("training loss became inf (lr=0.5); trial stopped")):
        losses.check()


def test_an_epoch_without_steps_has_a_nan_mean_and_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(PendingLosses(CPU, 1e-3).mean())


def test_all_ignored_means_every_pixel() -> None:
    assert all_ignored(np.full((2, 3), 255), 255)
    assert not all_ignored(np.array([[255, 0]]), 255)
    assert all_ignored(torch.full((1, 2), 7), 7) and not all_ignored(torch.zeros(1, 2), 7)


class FakeSplit:
    """Three 4 x 4 samples with 2 bands; ``unlabelled`` is all ignore. Records the keys it was asked for."""

    def __init__(self, unlabelled: int, n: int = 3) -> None:
        rng = np.random.default_rng(1)
        self.images = rng.normal(size=(n, 4, 4, 2)).astype(np.float32)
        self.labels = rng.integers(0, 3, size=(n, 4, 4))
        self.labels[unlabelled] = 255
        self.keys: list = []

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, plan):  # noqa: ANN001, ANN201 - BatchStream
        for keys in plan:
            self.keys.append(list(keys))
            idx = [k[0] if isinstance(k, tuple) else k for k in keys]
            yield self.images[idx], self.labels[idx]


def _epoch(split: FakeSplit, settings: TrainSettings, model: nn.Module | None = None,
           windows: list | None = None) -> tuple[float, int]:
    torch.manual_seed(0)
    model = model or nn.Conv2d(2, 3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr)
    steps = []
    opt.register_step_post_hook(lambda *_: steps.append(1))
    loss = train_epoch(model, opt, nn.CrossEntropyLoss(ignore_index=255), split, settings,
                       np.random.default_rng(settings.seed), CPU, windows)
    return loss, len(steps)


def test_an_unlabelled_batch_is_skipped_and_the_epoch_goes_on() -> None:
    first = int(np.random.default_rng(0).permutation(3)[0])  # the epoch's first batch (batch size 1, seed 0)
    loss, steps = _epoch(FakeSplit(unlabelled=first), _settings())
    assert steps == 2 and np.isfinite(loss)


def test_train_epoch_passes_the_crop_windows_to_the_stream() -> None:
    split = FakeSplit(unlabelled=0)
    windows = [(0, 0, 4, 4), (0, 1, 4, 3), (1, 0, 3, 4)]
    _epoch(split, _settings(batch_size=3), windows=windows)
    assert split.keys == [[(i, *windows[i]) for i in range(3)]]


def test_a_nan_loss_names_the_trials_lr() -> None:
    model = nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        model.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=re.escape("training loss became nan (lr=0.25)")):
        _epoch(FakeSplit(unlabelled=0), _settings(lr=0.25), model=model)


def test_the_epoch_runs_at_the_configured_precision() -> None:
    split = FakeSplit(unlabelled=0)
    split.images *= 300  # raw-scale values: bf16 rounding shows in the loss
    off, _ = _epoch(split, _settings(autocast="off"))
    bf16, _ = _epoch(split, _settings(autocast="bf16"))
    assert off != bf16


@pytest.fixture(scope="module")
def bundle(tiny_root: Path):
    return tiny_hyko2_bundle(tiny_root)


def _fit(bundle, tmp_path: Path | None = None, backbone_lr: float | None = None, **kw) -> tuple[Recorder, nn.Module]:
    """One epoch of a two-layer model; with ``backbone_lr`` its first layer is the backbone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(SPEC.n_bands, 4, 1), nn.Conv2d(4, SPEC.n_classes, 1))
    rec = Recorder(keep=tmp_path)
    fit(model, bundle, SPEC, _settings(batch_size=2, hflip_p=0.5, **kw), rec,
        backbone=model[0] if backbone_lr is not None else None, backbone_lr=backbone_lr)
    return rec, model


def test_fit_draws_from_the_settings_seed(bundle) -> None:
    runs = [_fit(bundle, seed=s)[0].metrics[0]["train_loss"] for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_fit_compiles_the_model_when_asked(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **_: compiled.append(m) or m)
    _, model = _fit(bundle, compile=True)
    assert compiled == [model]
    compiled.clear()
    _fit(bundle)
    assert compiled == []


def test_fit_trains_the_backbone_at_its_own_lr(bundle, tmp_path: Path) -> None:
    _fit(bundle, tmp_path, backbone_lr=1e-4)
    state = torch.load(tmp_path / "epoch1" / "state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert sorted({g["lr"] for g in groups}) == [1e-4, 0.05]
    assert sum(len(g["params"]) for g in groups if g["lr"] == 1e-4) == 2  # the backbone's weight and bias


def test_a_zero_flip_probability_draws_nothing() -> None:
    gen = np.random.default_rng(0)
    x, y = torch.zeros(3, 1, 2, 2), torch.zeros(3, 2, 2, dtype=torch.long)
    random_hflip(x, y, 0.0, gen)
    assert gen.random() == np.random.default_rng(0).random()  # the epoch's later draws are not shifted


REPORT_KEYS = ["epoch", "train_loss", "val_miou", "val_oa", "val_macc", "val_macro_f1", "val_iou_per_class",
               "best_val_miou", "best_epoch", "wall_s", "device_s", "device", "node_id", "n_params", "max_epochs",
               "data_placement", "data_placement_why", "is_last"]


def test_every_epoch_reports_the_same_row_and_only_the_last_one_is_tested(bundle, tmp_path: Path) -> None:
    rec = Recorder(keep=tmp_path)
    torch.manual_seed(0)
    model = nn.Conv2d(SPEC.n_bands, SPEC.n_classes, 1)
    fit(model, bundle, SPEC, _settings(batch_size=2, max_epochs=3, final=True, checkpoint_every=2), rec,
        extra={"arm": "x"})
    first, second, last = rec.metrics
    test_keys = ["test_miou", "test_oa", "test_macc", "test_macro_f1", "test_iou_per_class"]
    assert list(first) == [*REPORT_KEYS, "arm"] and list(second) == list(first)
    assert list(last) == [*REPORT_KEYS, "arm", *test_keys]
    assert first["device"] == "cpu" and first["max_epochs"] == 3 and first["arm"] == "x"
    assert first["n_params"] == SPEC.n_bands * SPEC.n_classes + SPEC.n_classes
    assert first["data_placement"] in ("device", "memory", "stream") and first["data_placement_why"]
    assert 0 < first["device_s"] < second["device_s"] < last["device_s"] <= last["wall_s"] < 600
    assert first["wall_s"] < second["wall_s"] < last["wall_s"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch2", "epoch3"]  # checkpoint_every=2 + the last


def test_an_epoch_without_a_step_fails_the_trial_by_name(bundle) -> None:
    with pytest.raises(FloatingPointError, match=re.escape(
            "epoch 1 took no training step (training loss nan): the training subset has no labelled pixel; "
            "trial failed")):
        fit(nn.Conv2d(SPEC.n_bands, SPEC.n_classes, 1), bundle, SPEC, _settings(), Recorder(),
            epoch_fn=lambda *_: float("nan"))


def test_a_trial_resumed_after_its_last_epoch_reports_nothing(bundle, tmp_path: Path) -> None:
    from ray import tune

    _fit(bundle, tmp_path)
    ckpt = tune.Checkpoint.from_directory(str(tmp_path / "epoch1"))
    rec = Recorder()
    model = nn.Sequential(nn.Conv2d(SPEC.n_bands, 4, 1), nn.Conv2d(4, SPEC.n_classes, 1))
    assert fit(model, bundle, SPEC, _settings(batch_size=2), rec, get_checkpoint=lambda: ckpt) == {}
    assert rec.metrics == []


def test_fit_sizes_the_loaders_and_the_placement_from_its_settings(bundle, monkeypatch) -> None:
    import study.train.loop as loop

    seen: dict = {}
    real_open, real_place = loop.open_streams, loop.trial_placement

    def spy_open(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        seen["open"] = (args[-1], kw)
        return real_open(*args, **kw)

    def spy_place(*args):  # noqa: ANN002, ANN202
        seen["place"] = args
        return real_place(*args)

    monkeypatch.setattr(loop, "open_streams", spy_open)
    monkeypatch.setattr(loop, "trial_placement", spy_place)
    torch.manual_seed(0)
    model = nn.Conv2d(SPEC.n_bands, SPEC.n_classes, 1)
    fit(model, bundle, SPEC, _settings(batch_size=2, eval_batch_size=5, loader_memory_gib=3.0), Recorder())
    shapes = [*bundle.val.shapes, *bundle.test.shapes]
    assert seen["open"] == (CPU, {"train_batch": 2, "eval_batch": eval_images(shapes, 5)})
    assert seen["place"][2:] == (CPU, model, 3.0)
    fit(model, bundle, SPEC, _settings(batch_size=2), Recorder(), loader_images=1)
    assert seen["open"] == (CPU, {"train_batch": 1, "eval_batch": 1})  # the per-pixel models read one image


def test_cudnn_autotuning_is_switched_on_for_cuda_only(monkeypatch) -> None:
    import study.train.loop as loop

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(loop, "pick_device", lambda: CPU)
    assert loop._training_device() == CPU and torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(loop, "pick_device", lambda: torch.device("cuda", 0))
    assert loop._training_device() == torch.device("cuda", 0) and torch.backends.cudnn.benchmark is True


def test_the_optimizer_is_adamw_with_the_one_group_rule() -> None:
    from study.train.loop import build_optimizer

    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    opt = build_optimizer(model, _settings(lr=0.05, weight_decay=0.1), model[0], 1e-4)
    assert isinstance(opt, torch.optim.AdamW)
    groups = sorted(((g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups), reverse=True)
    assert groups == [(0.05, 0.1, 1), (0.05, 0.0, 1), (1e-4, 0.1, 1), (1e-4, 0.0, 1)]  # weights decay, biases not
    assert {g["eps"] for g in opt.param_groups} == {1e-8}


def test_device_time_adds_up_over_epochs() -> None:
    import time

    from study.train.loop import timed_epoch
    from study.train.trial_state import Progress

    progress = Progress(device_s=5.0)
    t0 = time.perf_counter()
    loss, val = timed_epoch(3, lambda: (time.sleep(0.02), 0.5)[1], lambda: {"miou": 0.1}, CPU, progress)
    spent = time.perf_counter() - t0
    assert (loss, val) == (0.5, {"miou": 0.1}) and 5.02 <= progress.device_s <= 5.0 + spent
