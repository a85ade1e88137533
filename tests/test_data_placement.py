"""--data-placement: resident splits (device, one node-shared host copy) give the stream's batches to the bit, the
shared copy is written once per node and never used damaged, the auto rule, the flag, and the rows."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from trainable_helpers import Recorder, tiny_hyko2_bundle

from study.data.bundle import DataBundle, split_ref
from study.data.h5reader import H5Split
from study.data.placement import GIB, DeviceRoom, NodeRoom, cgroup_available, choose, held_bytes
from study.data.resident import ResidentStream, layout_of
from study.data.shared_copy import DIR_ENV, Section, open_copy, sweep
from study.data.specs import get_spec
from study.data.storage import storage_attrs, to_storage
from study.data.stream import LoaderSettings, SplitStream
from study.store import trial_rows
from study.store.records import TrialLog, trial_key
from trainables.indomain import train_indomain
from trainables.indomain_fc import train_indomain_fc

CONFIG = dict(lr=3e-3, weight_decay=1e-4, dropout=0.1, max_epochs=2, batch_size=2, width="tiny", seed=0,
              final=True, patience=None, num_threads=1)
FC = dict(lr=1e-2, weight_decay=1e-4, max_epochs=2, batch_size=2, seed=0, final=True, patience=None,
          num_threads=1, sub_batch=100, images_per_batch=3)
SPEC = get_spec("hyko2")
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _own_copy_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's node copies in a folder of its own (removed with tmp_path)."""
    folder = tmp_path / "shm"
    monkeypatch.setenv(DIR_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def bundle(tiny_root: Path) -> DataBundle:
    return tiny_hyko2_bundle(tiny_root)


def write_split(path: Path, shapes: list[tuple[int, int]], fmt: str = "cube", dtype: str = "float32",
                d: int = 3, seed: int = 0) -> Path:
    """A HyKo2 split file whose samples have the given sizes, stored as ``fmt`` / ``dtype``."""
    rng = np.random.default_rng(seed)
    raw_ids = [SPEC.raw_label_of(c) for c in range(SPEC.n_classes)]
    with h5py.File(path, "w") as f:
        f.attrs["wavelengths"] = SPEC.wavelength_array()
        for k, v in storage_attrs(fmt, dtype).items():
            f.attrs[k] = v
        for i, (h, w) in enumerate(shapes):
            g = f.create_group(f"s{i:02d}")
            if fmt == "pca":
                g["scores"] = to_storage(rng.normal(size=(h, w, d)).astype(np.float32), dtype)
                g["coefficients"] = rng.normal(size=(d, SPEC.n_bands)).astype(np.float32)
                g["means"] = rng.random(SPEC.n_bands).astype(np.float32)
            else:
                g["image"] = to_storage(rng.random((h, w, SPEC.n_bands)).astype(np.float32), dtype)
            g["labels"] = rng.choice(raw_ids, size=(h, w)).astype(np.uint8)
    return path


def stream_batches(split: object, plan: list[list], settings: LoaderSettings) -> list[tuple[np.ndarray, np.ndarray]]:
    stream = SplitStream(split, settings)  # type: ignore[arg-type]
    try:
        return [(x.numpy(), y.numpy()) for x, y in stream.batches(plan)]
    finally:
        stream.close()


def resident_batches(split: object, plan: list[list], placement: str,
                     settings: LoaderSettings) -> list[tuple[np.ndarray, np.ndarray]]:
    stream = ResidentStream(split, settings, placement, CPU)  # type: ignore[arg-type]
    try:
        return [(x.numpy().copy(), y.numpy().copy()) for x, y in stream.batches(plan)]
    finally:
        stream.close()


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b) and a
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.dtype == xb.dtype == np.float32 and ya.dtype == yb.dtype == np.int64
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize("placement", ["device", "memory"])
def test_resident_streams_yield_the_stream_batches(bundle, placement) -> None:
    split = bundle.train
    h, w = split.shapes[0]
    rng = np.random.default_rng(1)
    index_plan = [[0, 3], [1, 2, 5], [4]]
    window_plan = [[(i, int(rng.integers(0, h - 8)), int(rng.integers(0, w - 10)), 8, 10) for i in b]
                   for b in index_plan]
    for plan in (index_plan, window_plan):
        assert_same(resident_batches(split, plan, placement, LoaderSettings()),
                    stream_batches(split, plan, LoaderSettings()))
    resident = ResidentStream(split, LoaderSettings(), placement, CPU)
    x, y = next(resident.batches([[0]]))
    x.fill_(0)
    y.fill_(0)  # the loop flips batches in place: they must be copies, never views of the held samples
    again = next(resident.batches([[0]]))
    assert again[0].abs().sum() > 0 and len(resident) == len(split) and resident.shapes == split.shapes
    resident.close()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_mixed_shapes_and_narrow_storage_are_kept_exactly(tmp_path: Path, dtype: str) -> None:
    path = write_split(tmp_path / "hyko2_train.h5", [(6, 7), (5, 9), (6, 7), (4, 4)], dtype=dtype)
    split = split_ref(H5Split(path, SPEC, check_values=False))
    assert split.value_dtype == dtype  # kept in 2 bytes a value where the file stores 2
    assert layout_of(split).nbytes == sum(h * w for h, w in split.shapes) * (SPEC.n_bands * (4 if dtype ==
                                                                                            "float32" else 2) + 2)
    plan = [[0, 2], [1], [3], [(1, 1, 2, 3, 4)], [(0, 0, 0, 4, 4), (3, 0, 0, 4, 4)]]
    for placement in ("device", "memory"):
        assert_same(resident_batches(split, plan, placement, LoaderSettings()),
                    stream_batches(split, plan, LoaderSettings()))
    with pytest.raises(RuntimeError, match="differ in size"):
        resident_batches(split, [[0, 1]], "device", LoaderSettings())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_pca_files_decode_as_the_stream_decodes_them(tmp_path: Path, dtype: str) -> None:
    path = write_split(tmp_path / "hyko2_train.h5", [(6, 7), (6, 7), (5, 9)], fmt="pca", dtype=dtype)
    split = split_ref(H5Split(path, SPEC, check_values=False))
    lay = layout_of(split)
    assert lay.pca and lay.channels == 3 and lay.nbytes < sum(h * w * SPEC.n_bands * 4 for h, w in split.shapes)
    plan = [[0, 1], [2], [(0, 1, 1, 4, 5), (1, 0, 2, 4, 5)]]
    host = LoaderSettings()  # a CPU trial: the reader's decode on the host
    on_device = LoaderSettings(decode_device="cpu")  # a CUDA trial's path (decode_batch), run on the CPU
    for settings in (host, on_device):
        expect = stream_batches(split, plan, settings)
        for placement in ("device", "memory"):
            assert_same(resident_batches(split, plan, placement, settings), expect)
    reader = [H5Split(path, SPEC, check_values=False).read(i) for i in (0, 1)]
    np.testing.assert_array_equal(resident_batches(split, [[0, 1]], "memory", host)[0][0],
                                  np.stack([r[0] for r in reader]))


def _open_in_child(folder: str, barrier: multiprocessing.synchronize.Barrier, counter: str) -> None:
    """A process that opens the same copy as its siblings at the same moment; the fill counts its calls."""
    os.environ[DIR_ENV] = folder

    def fill(arrays: dict) -> None:
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        arrays["a"][:] = np.arange(arrays["a"].size, dtype=np.float32)
        arrays["b"][:] = 7

    barrier.wait()
    copy = open_copy("k1", [Section("a", "float32", 1000), Section("b", "int16", 10)], fill)
    ok = np.array_equal(copy.arrays["a"], np.arange(1000, dtype=np.float32)) and (copy.arrays["b"] == 7).all()
    copy.close()
    os._exit(0 if ok else 3)


def test_the_shared_copy_is_written_once_by_concurrent_processes(_own_copy_dir: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier, counter = ctx.Barrier(4), tmp_path / "writers.txt"
    procs = [ctx.Process(target=_open_in_child, args=(str(_own_copy_dir), barrier, str(counter))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(counter.read_text().split()) == 1  # one writer; the others mapped its copy
    assert sorted(p.name for p in _own_copy_dir.iterdir()) == ["k1.bin", "k1.lock"]  # no temporary file left


def test_a_damaged_or_partial_copy_is_not_used(_own_copy_dir: Path) -> None:
    sections = [Section("a", "float32", 100)]
    calls = []

    def fill(arrays: dict) -> None:
        calls.append(1)
        arrays["a"][:] = 1.5

    copy = open_copy("k2", sections, fill)
    assert copy.written and float(copy.arrays["a"].sum()) == 150
    copy.close()
    path = _own_copy_dir / "k2.bin"
    full = path.read_bytes()
    for damaged in (full[:-1], full[:-30] + b"\0" * 30, b"x" + full[1:]):  # truncated, no end marker, bad header
        path.write_bytes(damaged)
        copy = open_copy("k2", sections, fill)
        assert copy.written and float(copy.arrays["a"].sum()) == 150
        copy.close()
    again = open_copy("k2", sections, fill)
    assert not again.written and len(calls) == 4  # a whole copy is used as it is
    assert sweep(_own_copy_dir, idle_s=0) == []  # ``again`` still maps its copy: kept
    again.close()
    other = open_copy("k2", [Section("a", "float32", 101)], fill)  # another layout under the same name: rewritten
    assert other.written and other.arrays["a"].size == 101
    other.close()
    assert sweep(_own_copy_dir, idle_s=0) == [path] and not path.exists()


def test_placements_train_to_the_same_numbers(bundle) -> None:
    """The loops' whole results (losses, val and test metrics per epoch) do not depend on the placement."""
    for trainable, config in ((train_indomain, CONFIG), (train_indomain_fc, {**FC, "max_epochs": 1})):
        runs = {}
        for placement in ("stream", "memory", "device", "auto"):
            rec = Recorder()
            trainable({**config, "data_placement": placement}, bundle, report=rec, get_checkpoint=lambda: None)
            runs[placement] = [(m["train_loss"], m["val_miou"], m.get("test_miou")) for m in rec.metrics]
            assert {m["data_placement"] for m in rec.metrics} == {"memory" if placement == "auto" else placement}
        assert runs["stream"] == runs["memory"] == runs["device"] == runs["auto"]
        assert "fit in 0.5 of the node's free memory" in rec.metrics[0]["data_placement_why"]  # auto on a CPU


def test_the_auto_rule() -> None:
    room = NodeRoom(available_bytes=16 * GIB, shm_free_bytes=8 * GIB)
    gpu = DeviceRoom(share_bytes=80 * GIB, footprint_bytes=2 * GIB)
    c = choose("auto", 30 * GIB, gpu, room)
    assert c.placement == "device" and "fit in 0.5 of the trial's GPU share (80.00 GiB)" in c.reason
    c = choose("auto", 39 * GIB, gpu, room)  # 39 + 2 > 40: not on the device, and too much for the node
    assert c.placement == "stream" and "exceed 0.5 of the node's free memory" in c.reason and "GPU share" in c.reason
    c = choose("auto", 3 * GIB, DeviceRoom(4 * GIB, 1 * GIB), room)
    assert c.placement == "memory" and "/dev/shm (8.00 GiB)" in c.reason
    assert choose("auto", 3 * GIB, None, room).placement == "memory"  # a CPU trial: never device
    assert choose("auto", 5 * GIB, None, room).placement == "stream"  # > half of /dev/shm's 8 GiB
    there = NodeRoom(16 * GIB, 8 * GIB, present_bytes=4 * GIB)
    assert choose("auto", 5 * GIB, None, there).placement == "memory"  # 4 GiB of it already on the node
    capped = NodeRoom(16 * GIB, 8 * GIB, loader_cap_bytes=GIB)
    assert "exceed --loader-memory-gib" in choose("auto", 2 * GIB, None, capped).reason
    assert choose("stream", 1, gpu, room).placement == "stream"
    assert "asked for" in choose("memory", 1, None, room).reason
    with pytest.raises(ValueError, match="exceed the trial's GPU share .* use --data-placement auto or memory"):
        choose("device", 79 * GIB, gpu, room)
    with pytest.raises(ValueError, match="must be one of auto, device, memory, stream"):
        choose("gpu", 1, None, room)


def test_a_cgroup_limit_bounds_the_node_room(tmp_path: Path) -> None:
    """v1 and v2: limit less anonymous + shared memory in use, the smallest along the path; page cache free."""
    proc = tmp_path / "cgroup"
    v2 = tmp_path / "v2"
    (v2 / "a" / "b").mkdir(parents=True)
    (v2 / "a" / "memory.max").write_text(str(3 * GIB))
    (v2 / "a" / "memory.stat").write_text(f"anon {GIB}\nshmem {GIB // 2}\nfile {5 * GIB}\n")
    (v2 / "a" / "b" / "memory.max").write_text("max")
    proc.write_text("0::/a/b\n")
    assert cgroup_available(v2, proc) == 3 * GIB - GIB - GIB // 2
    v1 = tmp_path / "v1" / "memory" / "job"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(2 * GIB))
    (v1 / "memory.stat").write_text(f"total_rss {GIB}\ntotal_shmem 0\ntotal_cache {9 * GIB}\n")
    proc.write_text("4:memory:/job\n0::/\n")
    assert cgroup_available(tmp_path / "v1", proc) == GIB
    proc.write_text("4:cpu:/job\n")
    assert cgroup_available(tmp_path / "v1", proc) >= 2**60


def test_auto_streams_a_set_that_does_not_fit(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """What keeps the memory benchmark's capped runs streaming: a node without room gets stream."""
    import study.data.placement as placement

    monkeypatch.setattr(placement, "cgroup_available", lambda: 1000)
    rec = Recorder()
    train_indomain({**CONFIG, "max_epochs": 1}, bundle, report=rec, get_checkpoint=lambda: None)
    assert rec.metrics[0]["data_placement"] == "stream" and "exceed 0.5" in rec.metrics[0]["data_placement_why"]
    total, present = held_bytes([bundle.train, bundle.val, bundle.test])
    assert total > 1000 and present == 0


def test_rows_carry_the_placement_but_not_in_the_trial_identity() -> None:
    base = {"lr": 0.01, "cell_id": "c", "phase": "tune", "seed": 0, "max_epochs": 1}
    reports = [{"epoch": 1, "val_miou": 0.5, "train_loss": 1.0, "best_epoch": 1, "is_last": True,
                "data_placement": "memory", "data_placement_why": "fits"}]
    rows = {}
    for placement in (None, "memory", "stream"):
        config = {**base, **({"data_placement": placement} if placement else {})}
        log = TrialLog("t1", config, results=[dict(r) for r in reports])
        rows[placement] = trial_rows(log, {"cell_id": "c"})
        assert trial_key(config) == trial_key(base)
    assert rows[None] == rows["memory"] == rows["stream"]
    assert [r["data_placement"] for r in rows["memory"]] == ["memory", "memory"]  # the epoch and the trial row
    assert "data_placement" not in rows["memory"][0]["config_json"]


def test_the_flag_is_checked_shown_and_reaches_the_trials(tiny_root: Path, tmp_path: Path, capsys) -> None:
    from study.config import build_config
    from study.errors import ConfigError
    from study.orchestration import trial_constants
    from study.run import build_parser, config_from_args

    argv = ["--smoke", "--dataset", "hyko2", "--data-root", str(tiny_root), "--results", str(tmp_path / "r")]
    cfg = config_from_args(build_parser().parse_args([*argv, "--data-placement", "memory"]))
    plain = config_from_args(build_parser().parse_args(argv))
    assert cfg.runtime.data_placement == "memory" and plain.runtime.data_placement == "auto"
    assert cfg.study_id == plain.study_id  # results are the same whichever: not part of the id
    assert trial_constants(cfg, 4, SPEC, "c", 2)["data_placement"] == "memory"
    assert "data_placement" not in trial_constants(plain, 4, SPEC, "c", 2)
    with pytest.raises(ConfigError, match=r"--data-placement must be one of auto, device, memory, stream, got 'gpu'"):
        build_config("smoke", strategies=("indomain",), data_placement="gpu")
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--data-placement", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_device_placement_gathers_the_stream_batches_on_the_gpu(bundle, tmp_path: Path) -> None:
    cuda = torch.device("cuda")
    settings = LoaderSettings.for_trial({"num_threads": 1}, cuda)  # pinned memory, pca decoded on the GPU
    path = write_split(tmp_path / "hyko2_train.h5", [(6, 7), (6, 7), (6, 7)], fmt="pca", dtype="bfloat16")
    pca = split_ref(H5Split(path, SPEC, check_values=False))
    for split, plan in ((bundle.train, [[0, 3], [1, 2], [(4, 1, 2, 8, 8)]]), (pca, [[0, 2], [(1, 1, 1, 4, 4)]])):
        expect = [(x.cpu(), y.cpu()) for x, y in SplitStream(split, settings).batches(plan)]
        for placement in ("device", "memory"):
            got = list(ResidentStream(split, settings, placement, cuda).batches(plan))
            for (x, y), (ex, ey) in zip(got, expect, strict=True):
                assert torch.equal(x.cpu(), ex) and torch.equal(y.cpu(), ey)
                if placement == "device":
                    assert x.device.type == y.device.type == "cuda"  # nothing crossed from the host
                elif split is bundle.train:
                    assert x.is_pinned() and y.is_pinned()
    rec = Recorder()
    train_indomain({**CONFIG, "max_epochs": 1}, bundle, report=rec, get_checkpoint=lambda: None)
    assert rec.metrics[0]["data_placement"] == "device" and "GPU share" in rec.metrics[0]["data_placement_why"]


@pytest.mark.slow
def test_a_study_stores_the_same_rows_whatever_the_placement(ray_session, tiny_root: Path, tmp_path: Path,
                                                              capsys) -> None:
    """A real local Ray study, three times: every trial, epoch and final row equal but for timing and placement."""
    import polars as pl

    from study.run import main
    from study.store import TIMING_COLUMNS, read_store

    args = ["--strategy", "indomain", "--dataset", "hyko2", "--smoke", "--fractions", "1.0", "--trials", "1",
            "--data-root", str(tiny_root)]
    tables = {}
    for placement in ("stream", "memory", "device"):
        rc = main([*args, "--data-placement", placement, "--results", str(tmp_path / placement)])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert f"data placement: {placement} (--data-placement)" in out
        assert f"data placement {placement}: asked for" in out  # the cell's line
        df = read_store(tmp_path / placement)
        assert set(df["data_placement"]) == {placement}
        keys = ["row_kind", "phase", "config_hash", "seed", "epoch"]
        tables[placement] = df.drop([*TIMING_COLUMNS, "created_at"], strict=False).sort(keys)
    assert tables["stream"].height == 2 * 3  # a tuning trial and a final seed, each 2 epoch rows + 1
    assert tables["stream"].equals(tables["memory"]) and tables["stream"].equals(tables["device"])
    assert tables["stream"].filter(pl.col("row_kind") == "final")["test_miou"].is_not_null().all()
