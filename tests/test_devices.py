"""Which device a trial uses, and how much of it: Ray's assignment inside Ray, the user's choice outside it.

Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` alone for a worker that requests no GPU, so torch in a ``--gpus off``
trial on a GPU node sees the node's GPUs; ``devices.pick_device`` must ask Ray. A fractional GPU share is
accounting only in Ray: ``trial_setup`` caps the CUDA allocator at it. Mocks of ``ray`` and ``torch.cuda``
stand in for the GPU node here; the ``gpu``-marked tests run the same on a real one.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import ray
import torch

from study.train import devices
from study.train.devices import CUDA_CONTEXT_BYTES, limit_gpu_memory, pick_device, ray_gpu_ids, ray_gpu_share
from study.train.loop import random_hflip
from study.train.trial import trial_setup

GIB = 1024**3


def _in_ray_worker(monkeypatch: pytest.MonkeyPatch, gpu_ids: list, gpu_share: float,
                   mode: int = ray.WORKER_MODE) -> None:
    """This process as a Ray worker (trial actor or task) that Ray gave ``gpu_ids`` / ``gpu_share``."""
    ctx = SimpleNamespace(worker=SimpleNamespace(mode=mode),
                          get_assigned_resources=lambda: {"CPU": 1.0, **({"GPU": gpu_share} if gpu_share else {})})
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: ctx)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: list(gpu_ids))


def _gpu_node(monkeypatch: pytest.MonkeyPatch, total: int = 24 * GIB) -> list[tuple[float, int]]:
    """torch sees a CUDA device of ``total`` bytes; returns the recorded memory-fraction calls."""
    calls: list[tuple[float, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=total))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)
    return calls


# ---- item 1: a zero-GPU worker on a GPU node trains on the CPU ------------------------------------------


def test_a_gpus_off_trial_on_a_gpu_node_picks_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu_node(monkeypatch)
    _in_ray_worker(monkeypatch, gpu_ids=[], gpu_share=0.0)
    assert ray_gpu_ids() == [] and ray_gpu_share() == 0.0
    assert pick_device() == torch.device("cpu")


def test_a_ray_worker_with_a_gpu_picks_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu_node(monkeypatch)
    _in_ray_worker(monkeypatch, gpu_ids=[0], gpu_share=0.25)  # a fractional share names its GPU too
    assert pick_device() == torch.device("cuda")


def test_outside_a_ray_worker_the_device_is_the_user_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver (``SCRIPT_MODE``: the local feature export) or a script: CUDA whenever torch sees one."""
    _gpu_node(monkeypatch)
    _in_ray_worker(monkeypatch, gpu_ids=[], gpu_share=0.0, mode=ray.SCRIPT_MODE)
    assert ray_gpu_ids() is None and pick_device() == torch.device("cuda")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert ray_gpu_ids() is None and pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_a_real_zero_gpu_ray_task_on_a_gpu_node_picks_the_cpu(ray_session) -> None:
    """In a real Ray worker (the detection is Ray's, not a mock); torch is told it sees a GPU, as on a GPU node."""

    def probe() -> tuple[str, list | None, float | None]:
        import torch

        from study.train.devices import pick_device, ray_gpu_ids, ray_gpu_share

        real = torch.cuda.is_available
        torch.cuda.is_available = lambda: True
        try:
            return pick_device().type, ray_gpu_ids(), ray_gpu_share()
        finally:
            torch.cuda.is_available = real

    task = ray_session.remote(num_cpus=1, num_gpus=0)(probe)
    assert ray_session.get(task.remote()) == ("cpu", [], 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_node_a_zero_gpu_ray_task_and_trial_use_the_cpu(ray_session, tiny_root: Path) -> None:
    """On a GPU node: torch sees the GPU in a zero-GPU task (Ray 2.60), pick_device still says cpu, and a whole
    ``--gpus off`` trial reports ``device = cpu``; a task with a GPU uses it, capped at its fractional share."""
    from trainable_helpers import tiny_hyko2_bundle

    if ray_session.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("this Ray has no GPU resource")
    bundle = tiny_hyko2_bundle(tiny_root)
    config = dict(lr=3e-3, weight_decay=1e-4, dropout=0.1, max_epochs=1, batch_size=2, width="tiny", seed=0,
                  final=True, patience=None, num_threads=1)

    def trial() -> tuple[bool, str, str]:
        import torch

        from study.train.devices import pick_device
        from trainables.indomain import train_indomain

        reports: list[dict] = []
        train_indomain(config, bundle, report=lambda m, checkpoint=None: reports.append(dict(m)),
                       get_checkpoint=lambda: None)
        return torch.cuda.is_available(), pick_device().type, reports[-1]["device"]

    def shared() -> tuple[str, float | None, float]:
        import torch

        from study.train.devices import limit_gpu_memory, pick_device

        device = pick_device()
        fraction = limit_gpu_memory(device)
        return device.type, fraction, torch.cuda.get_per_process_memory_fraction()

    _, device, reported = ray_session.get(ray_session.remote(num_cpus=1, num_gpus=0)(trial).remote())
    assert device == "cpu" and reported == "cpu"
    kind, fraction, cap = ray_session.get(ray_session.remote(num_cpus=1, num_gpus=0.5)(shared).remote())
    assert kind == "cuda" and fraction is not None and 0.25 <= fraction < 0.5 and cap == pytest.approx(fraction)


# ---- item 11: a fractional GPU share caps the trial's CUDA memory -----------------------------------------


def test_a_fractional_share_caps_the_allocator_less_the_cuda_context(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _gpu_node(monkeypatch, total=24 * GIB)
    assert limit_gpu_memory(torch.device("cuda"), 0.25) == pytest.approx(0.25 - CUDA_CONTEXT_BYTES / (24 * GIB))
    assert calls == [(pytest.approx(0.25 - 1 / 24), 0)] and isinstance(calls[0][0], float)
    calls.clear()
    limit_gpu_memory(torch.device("cuda", 1), 0.5)
    assert calls[0][1] == 1
    calls.clear()
    _gpu_node(monkeypatch, total=2 * GIB)  # a small device: never less than half the share
    assert limit_gpu_memory(torch.device("cuda"), 0.25) == 0.125
    for device, share in ((torch.device("cuda"), 1.0), (torch.device("cuda"), 0.0), (torch.device("cpu"), 0.25)):
        assert limit_gpu_memory(device, share) is None
    assert limit_gpu_memory(torch.device("cuda")) is None  # outside Ray: no share, no cap


@pytest.mark.parametrize(("share", "capped"), [(0.25, True), (0.5, True), (1.0, False)])
def test_trial_setup_caps_cuda_memory_at_the_trial_s_gpu_share(monkeypatch: pytest.MonkeyPatch, share: float,
                                                               capped: bool) -> None:
    calls = _gpu_node(monkeypatch)
    _in_ray_worker(monkeypatch, gpu_ids=["0"], gpu_share=share)
    monkeypatch.setattr("study.train.trial.configure_threads", lambda config: None)
    config = {"lr": 1e-3, "max_epochs": 1, "batch_size": 2, "seed": 0}
    trial_setup(config, SimpleNamespace(dataset="hyko2", backbone_hash=None), report=lambda *a, **k: None,
                get_checkpoint=None)
    assert [f for f, _ in calls] == ([pytest.approx(share - CUDA_CONTEXT_BYTES / (24 * GIB))] if capped else [])


def test_a_zero_gpu_trial_on_a_gpu_node_caps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _gpu_node(monkeypatch)
    _in_ray_worker(monkeypatch, gpu_ids=[], gpu_share=0.0)
    assert devices.limit_gpu_memory(pick_device()) is None and calls == []


# ---- item 11: random_hflip copies only the flipped samples ------------------------------------------------


def _old_hflip(x: torch.Tensor, y: torch.Tensor, p: float,
               gen: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous implementation: the whole batch flipped and selected with torch.where."""
    if p <= 0:
        return x, y
    flip = torch.from_numpy(gen.random(x.shape[0]) < p).to(x.device)
    if not bool(flip.any()):
        return x, y
    return (torch.where(flip[:, None, None, None], x.flip(-1), x),
            torch.where(flip[:, None, None], y.flip(-1), y))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_random_hflip_gives_the_old_output_and_draws(p: float) -> None:
    data = np.random.default_rng(1)
    for seed in range(20):
        x = torch.from_numpy(data.standard_normal((6, 3, 4, 5)).astype(np.float32))
        y = torch.from_numpy(data.integers(0, 9, (6, 4, 5)))
        g_old, g_new = np.random.default_rng(seed), np.random.default_rng(seed)
        ex, ey = _old_hflip(x.clone(), y.clone(), p, g_old)
        gx, gy = random_hflip(x.clone(), y.clone(), p, g_new)
        assert torch.equal(gx, ex) and torch.equal(gy, ey)
        assert g_new.bit_generator.state == g_old.bit_generator.state  # the same draws: later epochs unchanged


def test_random_hflip_flips_in_place_without_copying_the_batch() -> None:
    """Seed 0, p = 0.5 over 8 samples flips some, not all: the result is the input's storage, and only the
    flipped samples change."""
    gen = np.random.default_rng(0)
    flips = np.random.default_rng(0).random(8) < 0.5
    assert 0 < flips.sum() < 8
    x = torch.arange(8 * 2 * 3 * 4, dtype=torch.float32).reshape(8, 2, 3, 4)
    y = torch.arange(8 * 3 * 4).reshape(8, 3, 4)
    x0, y0, ptr_x, ptr_y = x.clone(), y.clone(), x.data_ptr(), y.data_ptr()
    gx, gy = random_hflip(x, y, 0.5, gen)
    assert gx.data_ptr() == ptr_x and gy.data_ptr() == ptr_y  # no new batch
    for i, f in enumerate(flips):
        assert torch.equal(gx[i], x0[i].flip(-1) if f else x0[i])
        assert torch.equal(gy[i], y0[i].flip(-1) if f else y0[i])
