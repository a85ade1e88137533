"""The first GPU node (issue 28, items 2, 3, 6, 7, 8, 9, 10): what changes when CUDA is present, checked on a CPU.

No GPU runs here, so each CUDA branch is reached with what stands in for it: bf16 autocast on the CPU (the
trial's forward on CUDA), forced small export passes (the device-memory sizing), mocks of ``torch.cuda``. The
``gpu``-marked tests at the end run the same checks on a real device (deselected by default).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from study.features import export_image
from study.models.hypersl import build_hypersl
from study.models.hypersl_partial import PartialHyperSL
from study.models.precision import full_precision, ieee_fp32
from study.models.rgb_bridge import LearnedProjection
from study.models.runet import build_runet
from study.train.raw_spectra import chunk_id_map

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BANDS = 15
CHUNK = 40  # pixels per export chunk: a 6 x 10 image -> 2 chunks, the last one partial


def _raw_images(n: int = 2, h: int = 6, w: int = 10, seed: int = 0) -> np.ndarray:
    """Raw-count-like cubes (offset 2000, spread 1000): what bf16 rounds worst (docs/performance.md §3)."""
    return (2000 + 1000 * np.random.default_rng(seed).random((n, h, w, BANDS))).astype(np.float32)


def _wavelengths() -> np.ndarray:
    return np.linspace(450, 650, BANDS, dtype=np.float32)


def _backbone(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_hypersl("tiny").eval()


def _pixels(images: np.ndarray, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """All pixels of ``images`` as (P, C) spectra and their export chunk ids (P,)."""
    n, h, w, c = images.shape
    ids = chunk_id_map(n, h, w, chunk)
    return torch.from_numpy(images.reshape(-1, c)), torch.from_numpy(ids.reshape(-1)).long()


def _partial(k: int | str, images: np.ndarray, seed: int = 0) -> PartialHyperSL:
    hypersl = _backbone(seed)
    depth = len(hypersl.layer_groups()) if k == "all" else int(k)
    backbone = PartialHyperSL(hypersl, depth, _wavelengths(), "chunk")
    backbone.set_sources([images], CHUNK)
    return backbone


def _bf16() -> torch.autocast:
    """The trial's forward on CUDA (``autocast="auto"``), on the CPU."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


# ---- item 6: k > 0 trials see the features k = 0 reads, under the trial's bf16 autocast ------------------


def test_k0_features_under_bf16_autocast_equal_the_fp32_export() -> None:
    """The k = 0 arm reads the fp32 export; the k > 0 path with nothing trainable, run as a trial runs it (bf16
    autocast, statistics refreshed under it too), must compute those same features."""
    images = _raw_images()
    exported = np.stack([export_image(_backbone(), im, _wavelengths(), chunk_size=CHUNK) for im in images])
    backbone = _partial(0, images)
    x, ids = _pixels(images)
    with _bf16(), torch.no_grad():
        backbone.refresh_stats()
        z = backbone(x, ids)
    assert z.dtype == torch.float32
    np.testing.assert_allclose(z.numpy(), exported.reshape(-1, backbone.dim), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, "all"])
def test_k_prefix_under_bf16_autocast_is_the_fp32_prefix(k: int | str) -> None:
    """Stem + frozen blocks under autocast compute exactly the fp32 tokens (also with the stem training and
    gradients on); only the trainable blocks follow the autocast."""
    images = _raw_images()
    backbone = _partial(k, images)
    backbone.refresh_stats()
    x, ids = _pixels(images)
    with torch.no_grad():
        fp32 = backbone.prefix(x, ids)
    with _bf16():
        mixed = backbone.prefix(x, ids)
        z = backbone(x, ids)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, fp32)
    assert z.requires_grad  # the trainable blocks still train


def test_raw_input_layers_run_in_fp32_under_bf16_autocast() -> None:
    """RU-Net's first conv on raw cubes and the learned RGB bridge read raw values: fp32 under the autocast."""
    cube = torch.from_numpy(_raw_images(2, 32, 32).transpose(0, 3, 1, 2).copy())
    torch.manual_seed(0)
    runet = build_runet(BANDS, 4, width="tiny", raw_input=True).eval()
    first = runet.inc.double_conv[0]
    seen: list[torch.Tensor] = []
    first.register_forward_hook(lambda m, i, out: seen.append(out))
    with _bf16(), torch.no_grad():
        runet(cube)
    assert seen[0].dtype == torch.float32 and torch.equal(seen[0], first(cube).detach())

    bridge = LearnedProjection(BANDS, (14, 7, 0), torch.tensor([1e-3, 1e-3, 1e-3]), torch.tensor([-2.0, -2, -2]))
    with _bf16():
        out = bridge(cube)
    assert out.dtype == torch.float32 and torch.equal(out, bridge(cube))
    assert build_runet(BANDS, 4, width="tiny").raw_input is False  # RU-Net on features: the trial's autocast


def test_ieee_fp32_pins_cuda_convs_and_matmuls_and_restores_them() -> None:
    """cuDNN's fp32 convs default to TF32: an export or an fp32 island on CUDA runs them as IEEE fp32."""
    conv, mm = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, mm.fp32_precision
    conv.fp32_precision = "tf32"
    try:
        with ieee_fp32(torch.device("cuda")):
            assert (conv.fp32_precision, mm.fp32_precision) == ("ieee", "ieee")
        assert conv.fp32_precision == "tf32"
        with ieee_fp32("cpu"):  # the CPU computes IEEE fp32 anyway: nothing is touched
            assert conv.fp32_precision == "tf32"
        with _bf16(), full_precision("cpu"):
            assert not torch.is_autocast_enabled("cpu")
    finally:
        conv.fp32_precision, mm.fp32_precision = before


def test_the_export_runs_in_ieee_fp32_on_its_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import study.features.export as export

    devices: list[str] = []

    @contextmanager
    def recording(device):  # noqa: ANN001, ANN202
        devices.append(str(device))
        yield

    monkeypatch.setattr(export, "ieee_fp32", recording)
    export_image(_backbone(), _raw_images(1)[0], _wavelengths(), chunk_size=CHUNK)
    assert devices == ["cpu"]


# ---- item 2: the export's pass fits the device's free memory; features do not depend on the pass ---------

GIB = 1024**3


@pytest.mark.parametrize("bn_mode", ["chunk", "running"])
def test_export_features_are_the_same_for_every_pass_size(bn_mode: str) -> None:
    """Passes of part of a chunk (7, 13 px), one chunk, several chunks and the whole image give the features of
    today's one-chunk-per-pass CPU export: the stem still sees whole chunks, the transformer is per pixel."""
    image = _raw_images(1, 9, 11)[0]  # 99 px: chunks of 40, 40, 19
    model = _backbone()
    ref = export_image(model, image, _wavelengths(), bn_mode=bn_mode, chunk_size=CHUNK)
    seen: list[int] = []
    for pixels in (7, 13, CHUNK, 2 * CHUNK, 1000):
        got = export_image(model, image, _wavelengths(), bn_mode=bn_mode, chunk_size=CHUNK, compute_pixels=pixels,
                           on_chunk=seen.append)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
        assert sum(seen) == 99 and max(seen) <= max(pixels // CHUNK * CHUNK, min(pixels, CHUNK))
        seen.clear()


def _cuda_memory(monkeypatch: pytest.MonkeyPatch, free: int, reserved: int = 0, allocated: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (free, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i=None: allocated)


def test_the_gpu_pass_is_sized_from_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """HCV2 spectra (128 bands + the global token) through HyperSL-small (D = 256): 1.45 MB per pixel in fp32.
    The pass used to be 65,000 pixels on every GPU (94 GB: OOM on an A10G and an H100)."""
    from study.features.export import GPU_COMPUTE_PIXELS, PASS_MEMORY_SHARE, PASS_PEAK_FACTOR, pass_pixels

    cuda, tokens, dim = torch.device("cuda"), 129, 256
    per_px = {m: tokens * dim * 4 * f for m, f in PASS_PEAK_FACTOR.items()}
    for free_gib in (20, 70, 135):
        _cuda_memory(monkeypatch, free_gib * GIB, reserved=3 * GIB, allocated=1 * GIB)
        for mode in ("off", "bf16"):
            n = pass_pixels(tokens, dim, 5000, cuda, mode)
            assert n % 5000 == 0 and n <= GPU_COMPUTE_PIXELS
            assert n * per_px[mode] <= PASS_MEMORY_SHARE * (free_gib + 2) * GIB  # + the allocator's unused 2 GiB
            assert (n + 5000) * per_px[mode] > PASS_MEMORY_SHARE * (free_gib + 2) * GIB or n == 65000
    _cuda_memory(monkeypatch, 20 * GIB)
    assert pass_pixels(tokens, dim, 5000, cuda, "off") == 5000  # an A10G: one chunk of HCV2 in fp32
    assert pass_pixels(tokens, dim, 5000, cuda, "bf16") == 10000
    _cuda_memory(monkeypatch, 4 * GIB)  # less than one chunk fits: part of one, its tokens counted
    n = pass_pixels(tokens, dim, 5000, cuda)
    assert 0 < n < 5000 and n * per_px["off"] + 5000 * tokens * dim * 4 <= PASS_MEMORY_SHARE * 4 * GIB
    assert pass_pixels(tokens, dim, 5000, "cpu") == 5000  # a CPU: one chunk per pass, as before
    assert pass_pixels(tokens, dim, 5000, cuda, compute_pixels=12_345) == 10_000  # forced: whole chunks
    assert pass_pixels(tokens, dim, 5000, cuda, compute_pixels=123) == 123


def test_the_gpu_benchmark_keeps_the_bf16_export_row_when_fp32_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """One row's failure (fp32 out of memory) is that row's figure; the other row still comes back."""
    import study.features as features
    from benchmarks import gpu

    def fake_export(model, image, wl, *, autocast="off", **kw):  # noqa: ANN001, ANN003, ANN202
        if autocast == "off":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 94.00 GiB")
        return np.zeros((*image.shape[:2], 256), np.float32)

    monkeypatch.setattr(features, "export_image", fake_export)
    out = gpu.measure_export(60.0, pixels=64, device="cpu")
    rows = {r["autocast"]: r for r in out["rows"]}
    assert rows["bf16"]["pixels_s"] > 0 and "error" not in rows["bf16"]
    assert rows["off"]["error"].startswith("OutOfMemoryError: CUDA out of memory")


# ---- item 7: the trial checkpoint carries the CUDA generators when the trial uses CUDA --------------------


def _checkpoint_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda_in_use: bool) -> tuple[dict, list]:
    """checkpoint_state -> state.pt -> resume, with torch.cuda mocked as a trial on one GPU (or none) sees it."""
    from ray import tune

    from study.train.trial_state import CKPT_FILE, Progress, checkpoint_state, resume

    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored: list = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda_in_use)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [t.clone() for t in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.append(list(new)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # resumed where the trial sees one GPU
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    state = checkpoint_state(2, model, opt, Progress(), np.random.default_rng(0))
    torch.save(state, tmp_path / CKPT_FILE)
    progress = resume(lambda: tune.Checkpoint.from_directory(str(tmp_path)), model, opt, np.random.default_rng(1))
    assert progress.start_epoch == 3
    return state, restored


def test_a_cuda_trial_checkpoints_and_restores_the_cuda_generators(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state, restored = _checkpoint_roundtrip(tmp_path, monkeypatch, cuda_in_use=True)
    assert [t.tolist() for t in state["cuda_rng"]] == [list(range(16)), list(range(16, 32))]
    assert len(restored) == 1 and [t.tolist() for t in restored[0]] == [list(range(16))]  # the devices it has


def test_a_cpu_trial_on_a_gpu_node_keeps_no_cuda_generators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, restored = _checkpoint_roundtrip(tmp_path, monkeypatch, cuda_in_use=False)
    assert state["cuda_rng"] is None and restored == []


# ---- item 10: a frozen stem's chunk statistics are computed once per study, not once per k > 0 trial -------


def test_a_second_k_trial_reads_the_chunk_statistics_from_the_cache(tiny_root: Path, tiny_backbone: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from trainable_helpers import backbone_config, tiny_hyko2_bundle

    import study.models.hypersl_partial as partial
    from study.train.raw_spectra import STATS_FOLDER, build_backbone

    raw = tiny_hyko2_bundle(tiny_root)
    # the k = 0 features' split files live in the features' cache folder: here tmp_path
    data = replace(raw, train=replace(raw.train, path=str(tmp_path / "hyko2_train.h5")), raw=raw)
    calls: list[int] = []
    real = partial.chunk_stats
    monkeypatch.setattr(partial, "chunk_stats", lambda m, x: calls.append(len(x)) or real(m, x))
    config = {"freeze_depth": 1, **backbone_config(tiny_backbone)}

    first, _ = build_backbone(config, data)
    n_chunks = sum(-(-h * w // config["chunk_size"]) for s in (raw.train, raw.val, raw.test) for h, w in s.shapes)
    assert len(calls) == n_chunks == len(first.stats)
    assert len(list((tmp_path / STATS_FOLDER).glob("*.pt"))) == 3  # one file per split
    calls.clear()
    second, _ = build_backbone(config, data)
    assert calls == [] and torch.equal(second.stats, first.stats)  # read, not recomputed: the same table

    sub = replace(raw, train=replace(raw.train, names=raw.train.names[:2], sample_shapes=raw.train.shapes[:2]))
    third, _ = build_backbone(config, replace(data, raw=sub))  # another training subset: only its split is new
    per_image = -(-24 * 40 // config["chunk_size"])
    held_out = (len(raw.val) + len(raw.test)) * per_image
    assert len(calls) == 2 * per_image  # the two training images; val and test rows read from the cache
    assert torch.equal(third.stats[-held_out:], second.stats[-held_out:])
    calls.clear()
    trainable_stem, _ = build_backbone({**config, "freeze_depth": 3}, data)
    assert len(calls) == n_chunks  # a trainable stem's rows follow its weights: never from the cache
    torch.testing.assert_close(trainable_stem.stats, first.stats)


# ---- item 8: a GPU trial gets its share of the node's CPUs; losses stay on the device ---------------------


def test_gpu_trials_get_their_share_of_the_gpu_node_s_cpus() -> None:
    from study.strategies import get_strategy

    runet, fc = get_strategy("indomain"), get_strategy("crossdomain-fc")  # 1.0 and 0.25 GPU per trial
    assert runet.resources(True, cpus_per_gpu=12.0) == {"cpu": 12.0, "gpu": 1.0}  # g5.12xlarge: 48 CPUs, 4 GPUs
    assert fc.resources(True, cpus_per_gpu=12.0) == {"cpu": 3.0, "gpu": 0.25}
    assert fc.resources(True, cpus_per_gpu=2.0) == {"cpu": 1.0, "gpu": 0.25}  # never below the registry's CPUs
    assert runet.resources(True) == {"cpu": 1.0, "gpu": 1.0}  # no GPU node up yet: the registry's CPUs
    assert runet.resources(False, cpus_per_gpu=12.0) == {"cpu": 1.0}  # CPU trials: unchanged


def test_cpus_per_gpu_is_the_smallest_ratio_of_the_live_gpu_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from study.orchestration.ray_setup import cpus_per_gpu

    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}},  # the CPU head
             {"Alive": True, "Resources": {"CPU": 48.0, "GPU": 4.0}},
             {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 2.0, "GPU": 1.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert cpus_per_gpu() == 8.0
    monkeypatch.setattr(ray, "nodes", lambda: nodes[:1])
    assert cpus_per_gpu() is None


def test_a_trial_s_loader_uses_the_cpus_ray_gave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial config keeps the registry's ``num_threads`` (trial keys do not follow the cluster's shape); the
    loader's workers come from the CPUs Ray reserved, torch keeps the config's threads."""
    from types import SimpleNamespace

    import ray

    from study.train.trial import trial_setup

    ctx = SimpleNamespace(worker=SimpleNamespace(mode=ray.WORKER_MODE),
                          get_assigned_resources=lambda: {"CPU": 12.0, "GPU": 1.0})
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: ctx)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])  # the device stays the CPU here
    config = dict(lr=1e-3, max_epochs=1, batch_size=2, num_threads=1, seed=0)
    data = SimpleNamespace(dataset="hyko2", backbone_hash=None)
    trial = trial_setup(config, data, report=lambda m, checkpoint=None: None, get_checkpoint=lambda: None)
    from study.data.stream import MAX_WORKERS

    assert trial.settings.num_threads == 12  # 11 loader workers (at most MAX_WORKERS), one CPU computes
    assert trial.settings.loader(torch.device("cuda")).workers == min(MAX_WORKERS, 11)
    assert torch.get_num_threads() == 1 and config["num_threads"] == 1
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # outside Ray: the config's CPUs
    assert trial_setup(config, data, report=lambda m, checkpoint=None: None,
                       get_checkpoint=lambda: None).settings.num_threads == 1


def bundle_classes() -> int:
    from study.data.specs import get_spec

    return get_spec("hyko2").n_classes


class _HostReads(torch.Tensor):
    """A loss that counts how often the loop reads it (or anything computed from it) back to the host."""

    reads = 0

    def __bool__(self) -> bool:
        _HostReads.reads += 1
        return super().__bool__()

    def __float__(self) -> float:
        _HostReads.reads += 1
        return super().__float__()

    def item(self):  # noqa: ANN201 - Tensor.item
        _HostReads.reads += 1
        return super().item()


class _CountingLoss(torch.nn.CrossEntropyLoss):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, target).as_subclass(_HostReads)


def _reference_epoch(model, opt, loss_fn, split, settings, gen, device) -> float:  # noqa: ANN001
    """The image epoch as it was: loss checked and read back every step (the results must not change)."""
    from study.train.loop import epoch_plan, forward, random_hflip, to_tensors

    model.train()
    losses = []
    for images, labels in split.batches(epoch_plan(len(split), settings.batch_size, gen)):
        x, y = to_tensors(images, labels, device)
        x, y = random_hflip(x, y, settings.hflip_p, gen)
        loss = loss_fn(forward(model, x, settings.autocast), y)
        if torch.isnan(loss) and bool((y == loss_fn.ignore_index).all()):
            continue
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def test_the_image_epoch_keeps_losses_on_the_device_with_the_same_results(tiny_root: Path) -> None:
    from trainable_helpers import tiny_hyko2_bundle

    from study.data.stream import Streams
    from study.train.loop import LOSS_CHECK_EVERY, train_epoch
    from study.train.settings import TrainSettings

    bundle = tiny_hyko2_bundle(tiny_root)
    from study.data.specs import get_spec

    spec_ignore = get_spec("hyko2").ignore_index
    settings = TrainSettings(lr=1e-2, weight_decay=0.0, max_epochs=1, batch_size=1, seed=0, hflip_p=0.5)
    cpu = torch.device("cpu")
    runs = []
    for epoch_fn in (_reference_epoch, None):
        torch.manual_seed(0)
        model = build_runet(bundle.n_bands, bundle_classes(), width="tiny")
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr)
        loss_fn = _CountingLoss(ignore_index=spec_ignore)
        _HostReads.reads = 0
        with Streams(bundle.train, bundle.val, bundle.test, settings.loader(cpu)) as streams:
            gen = np.random.default_rng(0)
            if epoch_fn is None:
                mean = train_epoch(model, opt, loss_fn, streams.train, settings, gen, cpu)
            else:
                mean = epoch_fn(model, opt, loss_fn, streams.train, settings, gen, cpu)
        runs.append((mean, _HostReads.reads, model.state_dict()))
    (ref_mean, ref_reads, ref_state), (mean, reads, state) = runs
    assert len(bundle.train) <= LOSS_CHECK_EVERY and ref_reads >= 2 * len(bundle.train)  # the old loop: per step
    assert reads == 0  # read back once per LOSS_CHECK_EVERY steps, from the device buffer, not the loss
    assert mean == ref_mean and all(torch.equal(state[k], ref_state[k]) for k in state)


def test_a_non_finite_loss_still_stops_the_image_epoch(tiny_root: Path) -> None:
    from trainable_helpers import tiny_hyko2_bundle

    from study.data.stream import Streams
    from study.train.loop import train_epoch
    from study.train.settings import TrainSettings

    bundle = tiny_hyko2_bundle(tiny_root)
    settings = TrainSettings(lr=1e-2, weight_decay=0.0, max_epochs=1, batch_size=2, seed=0)
    model = build_runet(bundle.n_bands, bundle_classes(), width="tiny")
    with torch.no_grad():
        model.outc.conv.bias.fill_(float("nan"))
    with Streams(bundle.train, bundle.val, bundle.test, settings.loader(torch.device("cpu"))) as streams, \
            pytest.raises(FloatingPointError, match="training loss became nan"):
        train_epoch(model, torch.optim.AdamW(model.parameters()), torch.nn.CrossEntropyLoss(ignore_index=-1),
                    streams.train, settings, np.random.default_rng(0), torch.device("cpu"))


# ---- items 3 and 9: cached CUDA memory is given back after a local export and after every trial -----------


def test_release_device_memory_empties_both_caching_allocators(monkeypatch: pytest.MonkeyPatch) -> None:
    from study.train.devices import release_device_memory

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("device"))
    monkeypatch.setattr(torch.accelerator, "empty_host_cache", lambda: calls.append("pinned host"))
    assert release_device_memory(torch.device("cuda", 0)) and calls == ["sync", "device", "pinned host"]
    calls.clear()
    assert not release_device_memory("cpu") and calls == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # a CPU trial on a GPU node: nothing to free
    assert not release_device_memory("cuda") and calls == []


def test_a_local_export_deletes_its_model_and_frees_the_device(tiny_root: Path, tiny_backbone: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --address the export runs in the driver, on GPU 0, which Ray then gives to trials."""
    import weakref

    import study.features.cache as cache

    models: list[weakref.ref] = []
    freed: list[tuple[str, bool]] = []
    real_load = cache.load_hypersl

    def load(path):  # noqa: ANN001, ANN202
        model = real_load(path)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(cache, "load_hypersl", load)
    monkeypatch.setattr(cache, "release_device_memory",
                        lambda device: freed.append((str(device), all(m() is None for m in models))))
    cache.ensure_features(tmp_path, tiny_backbone, tiny_root, "hyko2", ["val"], chunk_size=400, progress=False)
    assert len(models) == 1 and freed == [("cpu", True)]  # once, after the model is gone
    cache.ensure_features(tmp_path, tiny_backbone, tiny_root, "hyko2", ["val"], chunk_size=400, progress=False)
    assert freed == [("cpu", True)]  # a cache hit loads nothing and frees nothing


def test_every_trial_gives_its_cached_device_memory_back(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray reuses trial actors: the pinned host cache of one trial (~7 GiB for an HCV2 feature trial) would stay."""
    from trainable_helpers import run, tiny_hyko2_bundle

    import study.train.trial as trial_module
    from trainables.indomain import train_indomain

    freed: list[str] = []
    monkeypatch.setattr(trial_module, "release_device_memory", lambda device: freed.append(str(device)))
    config = dict(lr=3e-3, weight_decay=1e-4, dropout=0.1, max_epochs=1, batch_size=2, width="tiny", seed=0,
                  final=False, patience=None, num_threads=1)
    run(train_indomain, config, tiny_hyko2_bundle(tiny_root))
    assert freed == ["cpu"]
    config["lr"] = -1.0  # a failing trial frees too
    with pytest.raises(ValueError, match="learning rate"):
        run(train_indomain, config, tiny_hyko2_bundle(tiny_root))
    assert freed == ["cpu", "cpu"]


# ---- the same on a real GPU -------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_k_path_under_autocast_equals_the_gpu_and_cpu_exports() -> None:
    """On CUDA: the k = 0 features of the k > 0 path under the trial's autocast equal the GPU export, which equals
    the CPU export (IEEE fp32, no TF32); the k = 1 prefix under autocast is the fp32 prefix."""
    from study.data.stream import autocast

    cuda = torch.device("cuda")
    images = _raw_images(2, 64, 80)
    cpu = np.stack([export_image(_backbone(), im, _wavelengths(), chunk_size=CHUNK) for im in images])
    model = _backbone().to(cuda)
    on_gpu = np.stack([export_image(model, im, _wavelengths(), chunk_size=CHUNK, device=cuda) for im in images])
    np.testing.assert_allclose(on_gpu, cpu, rtol=1e-4, atol=1e-4)
    for k in (0, 1):
        backbone = _partial(k, images).to(cuda)
        x, ids = (t.to(cuda) for t in _pixels(images))
        with autocast(cuda, "auto"), torch.no_grad():
            backbone.refresh_stats()
            z = backbone(x, ids)
            prefix = backbone.prefix(x, ids)
        if k == 0:
            np.testing.assert_allclose(z.cpu().numpy(), on_gpu.reshape(-1, backbone.dim), rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            assert prefix.dtype == torch.float32 and torch.allclose(prefix, backbone.prefix(x, ids))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("autocast", ["off", "bf16"])
def test_gpu_export_of_an_hcv2_image_fits_with_the_default_pass(autocast: str) -> None:
    """An HCV2-sized image (711 x 944 x 128) through HyperSL-small with the default pass size: no OOM, and the
    measured peak of a pass stays within PASS_PEAK_FACTOR activations (the estimate the sizing relies on)."""
    from study.data.specs import get_spec
    from study.features.export import PASS_PEAK_FACTOR, pass_pixels

    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = build_hypersl("small").to(cuda)
    wl = get_spec("hcv2").wavelength_array()
    image = (2000 + 1000 * np.random.default_rng(0).random((711, 944, wl.size))).astype(np.float32)
    step = pass_pixels(wl.size + 1, 256, 5000, cuda, autocast)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    feats = export_image(model, image, wl, chunk_size=5000, device=cuda, autocast=autocast)
    assert feats.shape == (711, 944, 256) and np.isfinite(feats).all()
    out_bytes = 711 * 944 * 256 * 4
    activation = step * (wl.size + 1) * 256 * 4
    factor = (torch.cuda.max_memory_allocated() - base - out_bytes) / activation
    print(f"measured pass peak factor ({autocast}): {factor:.2f} at {step} px per pass")
    assert factor <= PASS_PEAK_FACTOR[autocast] * 1.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_resumed_trial_equals_the_uninterrupted_one_within_the_stated_tolerance(tiny_root: Path,
                                                                                   tmp_path: Path) -> None:
    """RU-Net (dropout draws on the GPU) resumed from its epoch-2 checkpoint on CUDA: epoch 3 agrees with the
    uninterrupted run within docs/design.md §7's GPU tolerance (train loss rtol 1e-3, val mIoU 0.01 absolute)."""
    from ray import tune
    from trainable_helpers import run, tiny_hyko2_bundle

    from trainables.indomain import train_indomain

    bundle = tiny_hyko2_bundle(tiny_root)
    config = dict(lr=3e-3, weight_decay=1e-4, dropout=0.25, max_epochs=3, batch_size=2, width="tiny", seed=0,
                  final=False, patience=None, num_threads=1)
    full = run(train_indomain, config, bundle, keep=tmp_path)
    assert full.metrics[-1]["device"].startswith("cuda")
    state = torch.load(tmp_path / "epoch2" / "state.pt", map_location="cpu", weights_only=True)
    assert state["cuda_rng"] is not None
    resumed = run(train_indomain, config, bundle, ckpt=tune.Checkpoint.from_directory(str(tmp_path / "epoch2")))
    a, b = full.metrics[-1], resumed.metrics[0]
    assert b["epoch"] == 3
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert abs(b["val_miou"] - a["val_miou"]) <= 0.01
