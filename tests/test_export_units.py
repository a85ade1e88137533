"""The feature export's small rules, where mutation testing found them unpinned (issue 29, docs/testing.md).

The chunk default for a dataset the paper did not export, the GPU pass size and free memory with the CUDA
calls replaced (no GPU here: the arithmetic is what matters), and the progress line's timing and text.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch
from matching import whole

from study.data.datasets import open_split
from study.data.specs import get_spec
from study.errors import HsiStudyError
from study.features import export as feat

GIB = 2**30


def test_a_dataset_without_a_paper_chunk_gets_5000() -> None:
    assert feat.default_chunk("my-dataset") == 5000
    assert [feat.default_chunk(d) for d in ("hyko2", "hsidrive", "hcv2")] == [50000, 5000, 5000]


@pytest.fixture()
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list:
    """torch.cuda's memory calls answering per device index (free 10/20 GiB, reserved 3, allocated 1)."""
    calls: list = []

    def record(name, value):  # noqa: ANN001, ANN202
        def call(index=None):  # noqa: ANN001, ANN202
            calls.append((name, index))
            return value(index)
        return call

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", record("free", lambda i: ((10 + 10 * i) * GIB, 80 * GIB)))
    monkeypatch.setattr(torch.cuda, "memory_reserved", record("reserved", lambda i: (3 + i) * GIB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", record("allocated", lambda i: GIB))
    return calls


def test_free_memory_counts_the_allocators_unused_bytes_on_the_right_device(fake_cuda: list) -> None:
    assert feat.free_device_memory("cuda:0") == (10 + 3 - 1) * GIB
    assert fake_cuda == [("free", 0), ("reserved", 0), ("allocated", 0)]
    fake_cuda.clear()
    assert feat.free_device_memory(torch.device("cuda")) == (20 + 4 - 1) * GIB  # the current device: 1
    assert fake_cuda == [("free", 1), ("reserved", 1), ("allocated", 1)]


def test_pass_pixels_by_hand() -> None:
    """HCV2 through HyperSL-small: 129 tokens x 256 x 4 B = 132,096 B per activation; fp32 peak 11 of them,
    bf16 7; 0.6 of the free memory; whole chunks of 1,000 here."""
    cuda = torch.device("cuda")
    act = 132_096
    assert feat.pass_pixels(129, 256, 1000, cuda, free_bytes=20 * GIB) == 8000  # 0.6 * 20 GiB / (11 act) = 8,867
    assert feat.pass_pixels(129, 256, 1000, cuda, "bf16", free_bytes=20 * GIB) == 13000  # / (7 act) = 13,934
    assert feat.pass_pixels(129, 256, 1000, cuda, free_bytes=200 * GIB) == 65000  # capped at 65,536
    # under one chunk: that chunk's tokens are held, the pass gets the rest: (0.6 GiB - 1000 act) / (11 act) = 352
    assert feat.pass_pixels(129, 256, 1000, cuda, free_bytes=GIB) == int((0.6 * GIB - 1000 * act) // (11 * act))
    assert feat.pass_pixels(129, 256, 1000, cuda, free_bytes=GIB) == 352
    assert feat.pass_pixels(129, 256, 1000, cuda, free_bytes=10**6) == 1  # nothing fits: one pixel at a time
    assert feat.pass_pixels(129, 256, 1000, "cpu", free_bytes=GIB) == 1000  # a CPU: one chunk
    assert feat.pass_pixels(129, 256, 1000, "cpu", compute_pixels=0) == 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_progress_lines_every_10_s_and_at_the_end(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    clock = Clock()
    monkeypatch.setattr(feat, "time", clock)
    bar = feat.Progress("hyko2/train", 4000)
    clock.now = 109.99
    bar.update(1000)
    assert capsys.readouterr().err == ""
    clock.now = 110.0
    bar.update(1000)
    assert capsys.readouterr().err == (
        "[hsistudy] features hyko2/train:  50.0% (2,000/4,000 px, 200 px/s, ETA 10 s)\n")
    clock.now = 115.0
    bar.update(1000)  # 5 s after the last line: quiet
    assert capsys.readouterr().err == ""
    clock.now = 116.0
    bar.update(1000)  # done: always a line
    assert capsys.readouterr().err == "[hsistudy] features hyko2/train: 100.0% (4,000/4,000 px, 250 px/s, ETA 0 s)\n"


def test_progress_of_one_pixel_and_when_disabled(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    clock = Clock()
    monkeypatch.setattr(feat, "time", clock)
    feat.Progress("x", 1).update(1)
    assert "100.0% (1/1 px" in capsys.readouterr().err
    assert feat.Progress("x", 0).total == 1  # an empty split: no division by zero
    quiet = feat.Progress("x", 10, enabled=False)
    clock.now = 500.0
    quiet.update(10)
    assert capsys.readouterr().err == "" and quiet.done == 10


def test_temp_names_are_hidden_unique_siblings(tmp_path) -> None:
    import os

    a, b = feat.temp_path(tmp_path / "hyko2_val.h5"), feat.temp_path(tmp_path / "hyko2_val.h5")
    assert a.parent == tmp_path and a != b
    assert re.fullmatch(rf"\.hyko2_val\.h5\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", a.name)


@pytest.fixture()
def hypersl() -> torch.nn.Module:
    from study.models.hypersl import build_hypersl

    torch.manual_seed(0)
    return build_hypersl("tiny")


def test_export_split_with_its_defaults_writes_the_papers_file(tiny_root, tmp_path, hypersl, capsys) -> None:
    """Defaults: chunk BN with HyperSL's 50,000-pixel HyKo2 chunks, float16, fp32 compute, on the CPU, with
    progress; every sample's image replaced by its features, labels copied raw, the attributes the cache checks."""

    out = feat.export_split(hypersl, tiny_root, "hyko2", "val", tmp_path / "f" / "g" / "hyko2_val.h5")
    src = open_split(tiny_root, get_spec("hyko2"), "val")
    assert "[hsistudy] features hyko2/val: 100.0%" in capsys.readouterr().err
    with h5py.File(out, "r") as fh, h5py.File(src.path, "r") as raw:
        attrs = dict(fh.attrs)
        assert list(fh.keys()) == list(src.names)
        for name in src.names:
            expected = feat.export_image(hypersl, src.read(name)[0], src.wavelengths, bn_mode="chunk",
                                         chunk_size=50000, dtype="float16")
            np.testing.assert_array_equal(fh[name]["image"][()], expected)
            assert fh[name]["labels"].dtype == raw[name]["labels"].dtype
            np.testing.assert_array_equal(fh[name]["labels"][()], raw[name]["labels"][()])
    wl = attrs.pop("source_wavelengths")
    np.testing.assert_array_equal(wl, src.wavelengths)
    assert attrs == {"checkpoint_hash": "", "bn_mode": "chunk", "chunk_size": 50000, "dtype": "float16",
                     "feature_dim": hypersl.dim, "source_file": str(src.path),
                     "source_stat": feat.source_stat(src.path), "dataset": "hyko2", "split": "val",
                     "feature_version": 1, "complete": True}
    assert [p.name for p in out.parent.iterdir()] == ["hyko2_val.h5"]


def test_a_bf16_file_says_so_and_other_settings_reach_each_image(tiny_root, tmp_path, hypersl, capsys) -> None:

    out = feat.export_split(hypersl, tiny_root, "hyko2", "val", tmp_path / "v.h5", bn_mode="running", chunk_size=480,
                            dtype="float32", autocast="bf16", progress=False)
    assert capsys.readouterr().err == ""  # progress=False: quiet
    src = open_split(tiny_root, get_spec("hyko2"), "val")
    first = src.names[0]
    with h5py.File(out, "r") as fh:
        assert fh.attrs["autocast"] == "bf16" and fh.attrs["chunk_size"] == 480 and fh.attrs["bn_mode"] == "running"
        expected = feat.export_image(hypersl, src.read(first)[0], src.wavelengths, bn_mode="running", chunk_size=480,
                                     dtype="float32", autocast="bf16")
        np.testing.assert_array_equal(fh[first]["image"][()], expected)


def test_export_images_counts_pixels_and_raises_a_failed_last_write(tiny_root, tmp_path, hypersl) -> None:

    src = open_split(tiny_root, get_spec("hyko2"), "val")
    with h5py.File(tmp_path / "empty.h5", "w") as fh:
        assert feat.export_images(hypersl, src, [], fh, bn_mode="chunk", chunk=9, dtype="float32", device="cpu") == 0
    pixels: list[int] = []
    with h5py.File(tmp_path / "one.h5", "w") as fh:
        dim = feat.export_images(hypersl, src, [src.names[0]], fh, bn_mode="chunk", chunk=500, dtype="float32",
                                 device="cpu", on_chunk=pixels.append)
    h, w = src.shapes[0]
    assert dim == hypersl.dim and sum(pixels) == h * w and pixels == [500, h * w - 500]
    with h5py.File(tmp_path / "one.h5", "r") as ro, pytest.raises(ValueError):  # the only write fails: not lost
        feat.export_images(hypersl, src, [src.names[0]], ro, bn_mode="chunk", chunk=500, dtype="float32", device="cpu")


def test_bad_settings_fail_before_anything_is_written(tiny_root, tmp_path, hypersl) -> None:

    out = tmp_path / "never" / "v.h5"
    with pytest.raises(HsiStudyError, match="autocast must be one of off, bf16, got 'fp8'"):
        feat.export_split(hypersl, tiny_root, "hyko2", "val", out, autocast="fp8", progress=False)
    assert not out.parent.exists()


def test_a_file_that_cannot_be_created_reports_its_own_error(tiny_root, tmp_path, hypersl, monkeypatch) -> None:
    real = feat.h5py.File

    def refuse(path, mode="r", *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if mode == "w":
            raise OSError("disk full")
        return real(path, mode, *a, **k)

    monkeypatch.setattr(feat.h5py, "File", refuse)
    with pytest.raises(OSError, match="^disk full$"):  # not a FileNotFoundError from removing a temp never made
        feat.export_split(hypersl, tiny_root, "hyko2", "val", tmp_path / "v.h5", progress=False)


def test_the_rate_and_eta_of_a_short_or_slow_export(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    clock = Clock()
    monkeypatch.setattr(feat, "time", clock)
    fast = feat.Progress("x", 100)
    clock.now = 100.5
    fast.update(100)  # done in half a second
    assert "(100/100 px, 200 px/s, ETA 0 s)" in capsys.readouterr().err
    slow = feat.Progress("y", 100)
    clock.now = 110.5
    slow.update(5)  # 0.5 px/s: 95 px left take 190 s
    assert "(5/100 px, 0 px/s, ETA 190 s)" in capsys.readouterr().err


def test_settings_rules_word_for_word() -> None:

    feat.check_settings("chunk", 1, "float32")  # one pixel per chunk, fp32 compute by default: valid
    for args, message in [
        (("chunk", 50, "float32", "fp8"), "autocast must be one of off, bf16, got 'fp8'"),
        (("eval", 50, "float32"), "bn mode must be one of chunk, running, got 'eval'"),
        (("chunk", 0, "float32"), "chunk size must be a positive integer, got 0"),
        (("chunk", 2.0, "float32"), "chunk size must be a positive integer, got 2.0"),
        (("chunk", 50, "bfloat16"), "feature dtype must be one of float16, float32, got 'bfloat16'"),
    ]:
        with pytest.raises(HsiStudyError, match=whole(message)):
            feat.check_settings(*args)


def test_the_gpu_pass_asks_the_device_when_no_free_bytes_are_given(fake_cuda: list) -> None:
    # the current device (1): 20 + 4 - 1 = 23 GiB usable; 0.6 of it / (11 x 132,096 B) = 10,197 -> 10 chunks
    assert feat.pass_pixels(129, 256, 1000, torch.device("cuda")) == 10000
    assert ("free", 1) in fake_cuda


class PerPixel(torch.nn.Module):
    """A backbone with ``features`` only (no tokens/run_blocks/aggregate): spectra x wavelengths, per pixel."""

    dim = 3

    def features(self, x: torch.Tensor, wl: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and wl.dtype == torch.float32
        return x * wl


def test_a_features_only_backbone_is_exported_pass_by_pass() -> None:

    rng = np.random.default_rng(0)
    image = rng.random((5, 7, 3)) * 100  # float64 in: read as float32
    wl = [400.5, 500.25, 600.125]  # a list of floats: float32 on the device
    seen: list[int] = []
    got = feat.export_image(PerPixel(), image, wl, chunk_size=10, compute_pixels=4, on_chunk=seen.append)
    expected = image.astype(np.float32).reshape(35, 3) * np.asarray(wl, dtype=np.float32)
    np.testing.assert_array_equal(got.reshape(35, 3), expected)
    assert seen == [4, 4, 2] * 3 + [4, 1]  # 4-pixel passes inside each 10-pixel chunk
    bf16 = feat.export_image(PerPixel(), image, wl, chunk_size=10, autocast="bf16")
    np.testing.assert_array_equal(bf16, got)  # a product of fp32 tensors: autocast leaves it fp32


def test_hypersl_passes_smaller_than_its_tokens_still_cover_every_pixel(hypersl) -> None:
    """A pass of 5 pixels is shorter than the 16 tokens per pixel: passes step over pixels, not tokens."""

    wl = get_spec("hyko2").wavelength_array()
    image = (np.random.default_rng(1).random((6, 10, 15)) * 3000).astype(np.float32)
    whole = feat.export_image(hypersl, image, wl, chunk_size=30)
    seen: list[int] = []
    small = feat.export_image(hypersl, image, wl, chunk_size=30, compute_pixels=5, on_chunk=seen.append)
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-5)
    assert seen == [5] * 12


def test_the_default_chunk_is_5000_pixels(hypersl) -> None:

    wl = get_spec("hyko2").wavelength_array()
    image = (np.random.default_rng(2).random((71, 71, 15)) * 3000).astype(np.float32)  # 5,041 px: two chunks
    seen: list[int] = []
    feat.export_image(hypersl, image, wl, on_chunk=seen.append)
    assert seen == [5000, 41]


def test_non_finite_features_are_refused_with_the_float16_hint() -> None:

    big = np.full((2, 2, 3), 1e5, dtype=np.float32)  # x * wl = 1e5 x 500: beyond float16's 65,504
    tail = "; check the input values and the backbone"
    with pytest.raises(HsiStudyError, match=whole("non-finite features (float16 overflow: use --dtype float32)"
                                                  + tail)):
        feat.export_image(PerPixel(), big, [500.0] * 3, dtype="float16")
    nan = np.full((2, 2, 3), np.nan, dtype=np.float32)
    with pytest.raises(HsiStudyError, match=whole("non-finite features" + tail)):
        feat.export_image(PerPixel(), nan, [500.0] * 3, dtype="float32")
