"""The streaming data plane: what travels, the sample order, loader workers, the GPU path's precision."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from trainable_helpers import Recorder, tiny_hyko2_bundle

from study.data.bundle import DataBundle, SplitRef, in_memory, materialize, pixel_sample
from study.data.stream import LoaderSettings, SplitStream, autocast, batch_bytes
from study.train.loop import epoch_plan, eval_images, forward
from study.train.settings import TrainSettings
from trainables.indomain import train_indomain
from trainables.indomain_fc import train_indomain_fc

CONFIG = dict(lr=3e-3, weight_decay=1e-4, dropout=0.1, max_epochs=2, batch_size=2, width="tiny", seed=0,
              final=True, patience=None, num_threads=1)
FC = dict(lr=1e-2, weight_decay=1e-4, max_epochs=2, batch_size=2, seed=0, final=True, patience=None,
          num_threads=1, sub_batch=100, images_per_batch=3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle(tiny_root: Path) -> DataBundle:
    return tiny_hyko2_bundle(tiny_root)


def test_the_bundle_is_a_description_not_data(bundle) -> None:
    assert all(isinstance(s, SplitRef) for s in (bundle.train, bundle.val, bundle.test))
    size = len(pickle.dumps(bundle))
    data_bytes = sum(materialize(s).images.nbytes for s in (bundle.train, bundle.val, bundle.test))
    assert size < 20_000 < data_bytes  # paths, names, shapes, wavelengths: independent of the pixels
    assert bundle.n_bands == materialize(bundle.train).images.shape[-1]


def _old_order(n: int, batch: int, seed: int) -> list[list[int]]:
    """The in-memory loop's batches: one permutation per epoch, each batch's indices sorted."""
    order = np.random.default_rng(seed).permutation(n)
    return [sorted(order[s : s + batch].tolist()) for s in range(0, n, batch)]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_the_in_memory_batches_in_the_same_order(bundle, workers) -> None:
    arrays = materialize(bundle.train)
    plan = epoch_plan(len(arrays), 4, np.random.default_rng(5))
    assert plan == _old_order(len(arrays), 4, 5)
    stream = SplitStream(bundle.train, LoaderSettings(workers=workers))
    try:
        for _ in range(2):  # persistent workers serve a second epoch with a new plan
            got = list(stream.batches(plan))
            assert len(got) == len(plan)
            for (x, y), idx in zip(got, plan, strict=True):
                ex, ey = arrays.batch(np.array(idx))
                np.testing.assert_array_equal(x.numpy(), ex)
                np.testing.assert_array_equal(y.numpy(), ey)
            plan = plan[::-1]
    finally:
        stream.close()


def test_streaming_leaves_torch_global_rng_alone(bundle) -> None:
    """Dropout draws from torch's global RNG: a loader must not advance it, or a seed's results move."""
    torch.manual_seed(3)
    before = torch.get_rng_state()
    stream = SplitStream(bundle.val, LoaderSettings())
    list(stream.sequential(2))
    list(stream.sequential(3))
    assert torch.equal(torch.get_rng_state(), before)


def test_results_do_not_depend_on_workers_or_on_streaming(bundle) -> None:
    runs = []
    for data, workers in ((bundle, 0), (bundle, 2), (in_memory(bundle), 0)):
        rec = Recorder()
        train_indomain({**CONFIG, "loader_workers": workers}, data, report=rec, get_checkpoint=lambda: None)
        runs.append([(m["train_loss"], m["val_miou"], m.get("test_miou")) for m in rec.metrics])
    assert runs[0] == runs[1] == runs[2]


def test_pixel_loop_streams_with_workers_to_the_same_result(bundle) -> None:
    runs = []
    for workers in (0, 2):
        rec = Recorder()
        train_indomain_fc({**FC, "loader_workers": workers}, bundle, report=rec, get_checkpoint=lambda: None)
        runs.append([(m["train_loss"], m["val_miou"], m.get("test_miou")) for m in rec.metrics])
    assert runs[0] == runs[1] and np.isfinite(runs[0][0][0])


def test_pixel_sample_is_the_strided_subsample_of_the_whole_split(bundle) -> None:
    flat = materialize(bundle.train).images.reshape(-1, bundle.n_bands)
    for max_pixels in (flat.shape[0] // 3, 777, 10**9):
        step = max(1, flat.shape[0] // max_pixels)
        np.testing.assert_array_equal(pixel_sample(bundle.train, max_pixels), flat[::step])


def test_loader_settings_follow_the_trial_cpus() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert LoaderSettings.for_trial({"num_threads": 1}, cpu) == LoaderSettings(0, 2, False)
    assert LoaderSettings.for_trial({"num_threads": 4}, cuda) == LoaderSettings(3, 2, True, decode_device="cuda")
    assert LoaderSettings.for_trial({"num_threads": 4, "loader_workers": 1}, cpu).workers == 1
    settings = TrainSettings.from_config({"lr": 1e-3, "max_epochs": 1, "batch_size": 2, "num_threads": 3,
                                          "compile": True})
    assert settings.loader(cpu).workers == 2 and settings.compile and settings.autocast == "auto"
    assert TrainSettings.from_config({"lr": 1e-3, "max_epochs": 1, "batch_size": 2, "num_threads": 3,
                                      "loader_memory_gib": 0.5}).loader(cpu).memory_bytes == 2**29


def test_loader_memory_is_bounded_by_fewer_workers_then_less_prefetch(bundle) -> None:
    """HCV2 batches are GBs: workers x prefetch x batch must stay within the trial's loader memory."""
    gib = 1024**3
    s = LoaderSettings(workers=7, prefetch=2, memory_bytes=2 * gib)
    assert s.bounded(70 * 1024**2) == (7, 2)  # 8 HSI-Drive images: no limit
    assert s.bounded(600 * 1024**2) == (3, 1)  # three batches fit
    assert s.bounded(gib) == (2, 1)
    assert s.bounded(int(5.5 * gib)) == (1, 1)  # 8 HCV2 feature images: one worker, one batch
    assert LoaderSettings(workers=0).bounded(int(5.5 * gib)) == (0, 0)  # in-process: one batch at a time
    one = batch_bytes(bundle.val, 1)
    h, w = bundle.val.shapes[0]
    assert one == h * w * (4 * bundle.val.n_channels + 8)
    stream = SplitStream(bundle.val, LoaderSettings(workers=3, prefetch=2, memory_bytes=5 * one), batch_images=2)
    assert (stream.loader.num_workers, stream.loader.prefetch_factor) == (2, 1)
    expect = [labels.numpy() for _, labels in SplitStream(bundle.val, LoaderSettings()).sequential(2)]
    assert [labels.numpy().tolist() for _, labels in stream.sequential(2)] == [e.tolist() for e in expect]
    stream.close()


def test_evaluation_batches_are_bounded_in_pixels() -> None:
    assert eval_images([(216, 409)] * 3, 8) == 8 and eval_images([(254, 510)], 8) == 8
    assert eval_images([(711, 944), (700, 900)], 8) == 3 and eval_images([(4000, 4000)], 8) == 1
    assert eval_images([(16, 24)], 2) == 2


class _DtypeProbe(nn.Module):
    """Records the dtype its Linear computes in (bf16 under autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        self.seen.append(out.dtype)
        return out


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_path_runs_bf16_forward_and_returns_fp32() -> None:
    probe, x = _DtypeProbe(), torch.randn(5, 4)
    assert forward(probe, x, "bf16").dtype == torch.float32 and probe.seen[-1] == torch.bfloat16
    assert forward(probe, x, "auto").dtype == torch.float32 and probe.seen[-1] == torch.float32  # CPU: fp32
    ctx = autocast(torch.device("cuda"), "auto")  # what a CUDA trial gets (not entered: no GPU needed)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="autocast"):
        autocast(torch.device("cpu"), "fp16")


def test_a_trial_trains_under_bf16_autocast_within_noise(bundle) -> None:
    """The autocast branch of the whole loop (bf16 on CPU stands in for CUDA): same metrics to within noise."""
    runs = {}
    for mode in ("off", "bf16"):
        rec = Recorder()
        train_indomain({**CONFIG, "autocast": mode}, bundle, report=rec, get_checkpoint=lambda: None)
        runs[mode] = rec.metrics[-1]
    assert np.isfinite(runs["bf16"]["train_loss"])
    assert runs["bf16"]["train_loss"] == pytest.approx(runs["off"]["train_loss"], rel=0.05)
    assert runs["bf16"]["train_loss"] != runs["off"]["train_loss"]  # the bf16 path really ran


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_trial_streams_pinned_batches_under_bf16(bundle) -> None:
    stream = SplitStream(bundle.train, LoaderSettings.for_trial({"num_threads": 3}, torch.device("cuda")))
    try:
        x, _ = next(stream.sequential(2))
        assert x.is_pinned()
    finally:
        stream.close()
    runs = {}
    for mode in ("off", "auto"):
        rec = Recorder()
        train_indomain({**CONFIG, "autocast": mode, "num_threads": 3}, bundle, report=rec,
                       get_checkpoint=lambda: None)
        runs[mode] = rec.metrics[-1]
        assert runs[mode]["device"].startswith("cuda")
    assert runs["auto"]["train_loss"] == pytest.approx(runs["off"]["train_loss"], rel=0.05)


def test_loader_memory_flag_reaches_the_trials_and_is_checked(tiny_root: Path, tmp_path: Path, capsys) -> None:
    from study.data.specs import get_spec
    from study.orchestration import trial_constants
    from study.run import build_parser, config_from_args, main

    argv = ["--smoke", "--dataset", "hyko2", "--data-root", str(tiny_root), "--results", str(tmp_path / "r")]
    spec = get_spec("hyko2")
    cfg = config_from_args(build_parser().parse_args([*argv, "--loader-memory-gib", "0.5"]))
    assert trial_constants(cfg, 4, spec, "c", 2)["loader_memory_gib"] == 0.5
    plain = config_from_args(build_parser().parse_args(argv))
    assert "loader_memory_gib" not in trial_constants(plain, 4, spec, "c", 2)
    assert main([*argv, "--loader-memory-gib", "0"]) == 2
    err = capsys.readouterr().err
    assert "--loader-memory-gib must be > 0 GiB" in err and err.count("\n") == 1
