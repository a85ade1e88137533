"""python -m study.prepare hcv2 --format pca / --storage-dtype: HCV2 kept compressed, read back as the cube files.

The fixture is a tiny HCV2 release with D = 6 of 128 bands and 90 x 90 images (45 x 45 after halving), large
enough that HDF5's per-object headers do not dominate the file sizes, small enough to convert in a second.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from test_prepare_support import build_hcv2, write_lists

from study.data.datasets import close_all, validate_dataset
from study.data.h5reader import H5Split
from study.data.specs import get_spec
from study.data.storage import from_bfloat16_bits, pca_decode, to_bfloat16_bits
from study.errors import DataValidationError
from study.prepare import PrepareError, prepare
from study.prepare.cli import main
from study.prepare.hsd import encode_hsd

FOLDERS = {"train": [f"2021_a{i}.hsd" for i in range(6)] + [f"2021_v{i}.hsd" for i in range(3)],
           "test": [f"2021_t{i}.hsd" for i in range(3)]}
LISTS = {"train": FOLDERS["train"][:6], "val": FOLDERS["train"][6:], "test": FOLDERS["test"]}
SIZE, D = (90, 90), 6
SPEC = get_spec("hcv2")


@pytest.fixture(autouse=True)
def _forget_open_files():
    yield
    close_all()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw release folder, split lists folder) of the tiny D = 6 HCV2 release."""
    base = tmp_path_factory.mktemp("hcv2_pca")
    build_hcv2(base / "raw", FOLDERS, np.random.default_rng(11), [SIZE], d=D)
    return base / "raw", write_lists(base / "lists", LISTS)


@pytest.fixture(scope="module")
def prepared(release: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """(format, storage dtype) -> the folder of its converted split files."""
    raw, lists = release
    base = tmp_path_factory.mktemp("hcv2_out")
    out = {}
    for fmt in ("cube", "pca"):
        for dtype in ("float32", "float16", "bfloat16"):
            out[fmt, dtype] = base / f"{fmt}_{dtype}"
            prepare("hcv2", raw, out[fmt, dtype], splits_dir=lists, fmt=fmt, storage_dtype=dtype)
    return out


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("hcv2_*.h5"))


def test_pca_files_are_over_5x_smaller_and_read_back_exactly_as_the_cube_files(prepared) -> None:
    cube, pca = prepared["cube", "float32"], prepared["pca", "float32"]
    ratio = _size(cube) / _size(pca)
    assert ratio >= 5, f"cube / pca = {ratio:.1f}"
    for split in SPEC.splits:
        assert (cube / SPEC.file_name(split)).stat().st_size >= 5 * (pca / SPEC.file_name(split)).stat().st_size
    a, b = validate_dataset(cube, SPEC), validate_dataset(pca, SPEC)  # value checks decode every pca image
    for split in SPEC.splits:
        assert a[split].names == b[split].names and a[split].shapes == b[split].shapes
        assert (b[split].storage_format, b[split].storage_dtype) == ("pca", "float32")
        assert b[split].n_channels == 128
        for name in a[split].names:
            (xa, ya), (xb, yb) = a[split].read(name), b[split].read(name)
            assert xb.dtype == np.float32 and xb.shape == (45, 45, 128)
            np.testing.assert_array_equal(xb, xa)  # exact: the same float32 product as the cube path
            np.testing.assert_array_equal(yb, ya)
        np.testing.assert_array_equal(b[split].load()[0], a[split].load()[0])
    with h5py.File(pca / "hcv2_train.h5", "r") as fh:
        assert fh.attrs["storage_format"] == "pca" and fh.attrs["storage_dtype"] == "float32"
        grp = fh["2021_a0"]
        assert sorted(grp) == ["coefficients", "labels", "means", "scores"]
        assert grp["scores"].shape == (45, 45, D) and grp["coefficients"].shape == (D, 128)
        assert grp["means"].shape == (128,)
    with h5py.File(cube / "hcv2_train.h5", "r") as fh:  # cube + float32: today's files, no new attribute
        assert "storage_format" not in fh.attrs and "storage_dtype" not in fh.attrs
        assert sorted(fh["2021_a0"]) == ["image", "labels"] and fh["2021_a0"]["image"].dtype == np.float32


def test_default_cube_files_are_unchanged_by_the_new_options(release, prepared, tmp_path) -> None:
    """No --format / --storage-dtype and the explicit cube + float32 write the same bytes (HDF5 files here carry
    no time stamps; the same bytes as before the options existed, checked once against that commit's code)."""
    raw, lists = release
    prepare("hcv2", raw, tmp_path / "default", splits_dir=lists)
    for split in SPEC.splits:
        name = SPEC.file_name(split)
        assert (tmp_path / "default" / name).read_bytes() == (prepared["cube", "float32"] / name).read_bytes()


@pytest.mark.parametrize("fmt", ["cube", "pca"])
def test_float16_and_bfloat16_storage_within_their_rounding(prepared, fmt) -> None:
    exact = validate_dataset(prepared["cube", "float32"], SPEC)
    for dtype, stored, bound in (("float16", np.float16, 2.0**-11), ("bfloat16", np.uint16, 2.0**-8)):
        folder = prepared[fmt, dtype]
        small = validate_dataset(folder, SPEC)
        with h5py.File(folder / "hcv2_val.h5", "r") as fh:
            assert fh.attrs["storage_format"] == fmt and fh.attrs["storage_dtype"] == dtype
            assert fh["2021_v0"]["image" if fmt == "cube" else "scores"].dtype == stored
        assert _size(folder) < _size(prepared[fmt, "float32"])
        for split in SPEC.splits:
            for name in exact[split].names:
                x, y = small[split].read(name)
                ref, ref_y = exact[split].read(name)
                np.testing.assert_array_equal(y, ref_y)
                assert x.dtype == np.float32
                err = np.abs(x.astype(np.float64) - ref)
                if fmt == "cube":  # one rounding of each value: at most the unit roundoff (2^-11, 2^-8) relative
                    assert (err <= bound * np.abs(ref)).all(), (dtype, float((err / np.abs(ref)).max()))
                else:  # rounded scores, then decoded: small against the cube's scale
                    assert err.max() <= 4 * bound * np.abs(ref).max(), (dtype, float(err.max()))


def test_bfloat16_bits_round_to_nearest_even() -> None:
    x = np.array([1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -2.5, 3.0e38, 1e-40], dtype=np.float32)
    back = from_bfloat16_bits(to_bfloat16_bits(x))
    np.testing.assert_array_equal(back[:4], [1.0, 1.0, 1.0 + 2 * 2.0**-7, -2.5])  # ties go to the even mantissa
    assert np.isfinite(back).all()
    try:
        import torch
    except ImportError:
        return
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(back, want)


def test_pca_decode_into_a_buffer_equals_the_plain_product() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 7, D)).astype(np.float32)
    coeffs = rng.normal(size=(D, 128)).astype(np.float32)
    means = rng.uniform(100, 200, 128).astype(np.float32)
    out = np.empty((5, 7, 128), np.float32)
    pca_decode(scores, coeffs, means, out=out)
    np.testing.assert_array_equal(out, (scores.reshape(-1, D) @ coeffs + means).reshape(5, 7, 128))


def test_bad_combinations_give_one_line(release, prepared, tmp_path, capsys) -> None:
    raw, lists = release
    rc = main(["hyko2", "--raw", str(raw), "--out", str(tmp_path / "x"), "--format", "pca"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--format pca is for hcv2 only" in err
    with pytest.raises(PrepareError, match="--storage-dtype must be one of float32, float16, bfloat16"):
        prepare("hcv2", raw, tmp_path / "y", splits_dir=lists, storage_dtype="float64")
    # a folder converted one way, asked for another: not silently kept
    rc = main(["hcv2", "--raw", str(raw), "--out", str(prepared["cube", "float32"]), "--splits", str(lists),
               "--format", "pca"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "was written with --format cube --storage-dtype float32, not --format pca --storage-dtype float32" in err
    # float16 cannot hold the values: refused, naming the sample and the way out
    big = tmp_path / "big"
    build_hcv2(big, FOLDERS, np.random.default_rng(1), [(4, 4)], d=D)
    encode_hsd(big / "train" / "2021_a3.hsd", np.ones((4, 4, D), np.float32), np.ones((D, 128), np.float32),
               np.full(128, 1e5, np.float32))
    with pytest.raises(PrepareError, match="sample '2021_a3': its image cannot be stored as float16: values up to "
                       "100006 exceed float16's range.*use --storage-dtype float32 or bfloat16"):
        prepare("hcv2", big, tmp_path / "z", splits_dir=lists, storage_dtype="float16")


def test_the_reader_checks_pca_files(prepared, tmp_path) -> None:
    import shutil

    src = prepared["pca", "float32"] / "hcv2_val.h5"
    bad = tmp_path / "hcv2_val.h5"
    shutil.copy(src, bad)
    with h5py.File(bad, "r+") as fh:
        scores = fh["2021_v1"]["scores"]
        scores[3, 4, 2] = np.nan
    with pytest.raises(DataValidationError, match=r"sample '2021_v1': image holds 128 NaN/inf value\(s\) "
                       r"\(first at row 3, column 4, band 0\)"):
        H5Split(bad, SPEC)
    for edit, message in (
        (lambda fh: fh.attrs.__setitem__("storage_format", "zip"), "'storage_format' is 'zip'; this hsistudy reads"),
        (lambda fh: fh.attrs.__setitem__("storage_dtype", "float16"), "scores is float32, but the root attribute"),
        (lambda fh: fh["2021_v0"].__delitem__("means"), r"lacks dataset\(s\) 'means'"),
        (lambda fh: (fh["2021_v0"].__delitem__("means"), fh["2021_v0"].create_dataset("means", data=np.zeros(127))),
         "pca shapes disagree"),
    ):
        shutil.copy(src, bad)
        with h5py.File(bad, "r+") as fh:
            edit(fh)
        with pytest.raises(DataValidationError, match=message):
            H5Split(bad, SPEC, check_values=False)


#: the metric columns a study writes per row
METRICS = ("train_loss", "val_miou", "val_oa", "val_macc", "val_macro_f1", "val_iou_per_class", "test_miou",
           "test_oa", "test_macc", "test_macro_f1", "test_iou_per_class")


@pytest.mark.slow
def test_a_study_on_pca_files_gives_the_cube_studys_rows(ray_session, prepared, tmp_path, capsys) -> None:
    import polars as pl

    from study.run import main as run
    from study.store import read_store

    tables = {}
    for fmt in ("cube", "pca"):
        results = tmp_path / fmt
        rc = run(["--protocol", "paper", "--strategy", "indomain", "--dataset", "hcv2", "--data-root",
                  str(prepared[fmt, "float32"]), "--results", str(results), "--fractions", "1.0", "--epochs", "2",
                  "--seeds", "1", "--width", "tiny", "--allow-deviations"])
        assert rc == 0, capsys.readouterr().out
        tables[fmt] = read_store(results).sort("row_kind", "epoch", nulls_last=True)
    cube, pca = tables["cube"], tables["pca"]
    assert cube.height == pca.height > 0 and set(cube["row_kind"]) == {"epoch", "final"}
    assert cube["row_kind"].to_list() == pca["row_kind"].to_list()
    assert cube["data_source"][0] != pca["data_source"][0]
    for col in METRICS:  # bit-identical inputs, the same seeds: the same numbers (repr: nan equals nan)
        assert repr(cube[col].to_list()) == repr(pca[col].to_list()), col
    assert pca.filter(pl.col("row_kind") == "final")["test_miou"].is_between(0, 1).all()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_the_stream_decodes_pca_batches_on_the_device_within_float32_rounding(prepared, dtype) -> None:
    """``LoaderSettings.decode_device`` (a CUDA trial's device; the CPU here): the workers read stored scores,
    the batch is expanded on the device; equal to the reader's decode within float32 rounding."""
    import torch

    from study.data.bundle import split_ref
    from study.data.stream import LoaderSettings, SplitStream

    ref = split_ref(H5Split(prepared["pca", dtype] / "hcv2_train.h5", SPEC))
    plan = [[3, 0], [(1, 5, 7, 20, 30), (4, 0, 0, 20, 30)], [5]]  # whole images and windows (k > 0 crops)
    for workers in (0, 1):
        host = SplitStream(ref, LoaderSettings(workers=workers))
        dev = SplitStream(ref, LoaderSettings(workers=workers, decode_device="cpu"))
        assert host.decode_device is None and dev.decode_device == "cpu"
        worst = 0.0
        for (xa, ya), (xb, yb) in zip(host.batches(plan), dev.batches(plan), strict=True):
            assert xb.dtype == torch.float32 and xb.shape == xa.shape
            torch.testing.assert_close(yb, ya, rtol=0, atol=0)
            err = (xb - xa).abs().max().item()
            assert err <= 4 * 2.0**-24 * xa.abs().max().item(), err  # a few float32 roundings of the largest value
            worst = max(worst, err)
        host.close(), dev.close()
    cube = split_ref(H5Split(prepared["cube", "float32"] / "hcv2_train.h5", SPEC))
    assert SplitStream(cube, LoaderSettings(decode_device="cpu")).decode_device is None  # cubes: nothing to decode
