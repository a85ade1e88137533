"""The HS3-Bench HDF5 reader: layout, remaps, wavelengths, one handle, and every validation rule."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from study.data import h5reader
from study.data.datasets import open_split, validate_dataset
from study.data.h5reader import H5Split, split_path
from study.data.specs import DatasetSpec, get_spec
from study.errors import DataValidationError

HYKO2 = get_spec("hyko2")


def write_split(
    path: Path,
    spec: DatasetSpec,
    n: int = 3,
    hw: tuple[int, int] = (4, 5),
    seed: int = 0,
    edit: Callable[[h5py.File], None] | None = None,
    prefix: str = "",
) -> Path:
    """A valid split file for ``spec`` (raw label ids drawn from the spec's map), then ``edit``."""
    rng = np.random.default_rng(seed)
    raw_ids = [spec.raw_label_of(c) for c in range(spec.n_classes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for i in range(n):
            g = f.create_group(f"{prefix}s{i:02d}")
            g["image"] = rng.random((*hw, spec.n_bands))
            g["labels"] = rng.choice(raw_ids, size=hw).astype(np.uint8)
        meta = f.create_group("metadata")
        meta["min-val"], meta["max-val"] = 0.0, 1.0
        if edit is not None:
            edit(f)
    return path


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    def make(spec: DatasetSpec = HYKO2, split: str = "train", **kw: object) -> Path:
        return write_split(split_path(tmp_path, spec, split), spec, **kw)  # type: ignore[arg-type]

    return make


def _error(path: Path, spec: DatasetSpec = HYKO2, check_values: bool = True) -> str:
    with pytest.raises(DataValidationError) as info:
        H5Split(path, spec, check_values=check_values)
    return str(info.value)


# ------------------------------------------------------------------------------------------ reading
def test_valid_file_reads_sorted_samples_and_skips_metadata(make_file: Callable[..., Path]) -> None:
    path = make_file(n=3, edit=lambda f: f.move("s00", "z_last"))
    with H5Split(path, HYKO2) as sp:
        assert sp.names == ["s01", "s02", "z_last"] and len(sp) == 3
        assert sp.shapes == [(4, 5)] * 3
        image, labels = sp.read("s01")
        assert image.shape == (4, 5, 15) and image.dtype == np.float32
        assert labels.shape == (4, 5) and labels.dtype == np.int64
        np.testing.assert_array_equal(sp.read(0)[0], sp.read("s01")[0])
        images, stacked = sp.load()
        assert images.shape == (3, 4, 5, 15) and stacked.shape == (3, 4, 5)
        np.testing.assert_array_equal(images[2], sp.read("z_last")[0])
        present = sp.classes_present()
        assert len(present) == 3 and all(HYKO2.ignore_index not in c for c in present)
        assert present[0] == frozenset(int(v) for v in np.unique(sp.read(0)[1])) - {HYKO2.ignore_index}


def test_float16_and_integer_images_read_as_float32(make_file: Callable[..., Path]) -> None:
    def edit(f: h5py.File) -> None:
        img = f["s00/image"][()]
        del f["s00/image"]
        f["s00/image"] = img.astype(np.float16)
        del f["s01/image"]
        f["s01/image"] = np.full((4, 5, 15), 7, dtype=np.uint16)

    sp = H5Split(make_file(edit=edit), HYKO2)
    assert sp.read(0)[0].dtype == np.float32
    assert np.all(sp.read(1)[0] == 7.0)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [("hsidrive", 8, 9), ("hsidrive", 1, 0), ("hsidrive", 0, 9), ("hcv2", 255, 19)],
)
def test_label_remap(make_file: Callable[..., Path], name: str, raw: int, expected: int) -> None:
    spec = get_spec(name)

    def edit(f: h5py.File) -> None:
        f["s00/labels"][0, 0] = raw

    labels = H5Split(make_file(spec, n=1, edit=edit), spec).read(0)[1]
    assert labels[0, 0] == expected
    assert labels.min() >= 0 and labels.max() < spec.n_classes


def test_wavelengths_from_attribute_csv_and_spec(tmp_path: Path) -> None:
    spec = HYKO2
    path = write_split(split_path(tmp_path, spec, "train"), spec)
    with H5Split(path, spec) as sp:
        np.testing.assert_allclose(sp.wavelengths, spec.wavelengths, rtol=1e-6)
        assert sp.wavelengths.dtype == np.float32 and "spec" in sp.wavelength_source

    csv_wl = np.linspace(450.0, 650.0, 15)
    (tmp_path / "wave_hyko2.csv").write_text("".join(f"{i + 1} {w:.3f}\n" for i, w in enumerate(csv_wl)))
    with H5Split(path, spec) as sp:
        np.testing.assert_allclose(sp.wavelengths, csv_wl, rtol=1e-6)
        assert "wave_hyko2.csv" in sp.wavelength_source

    attr_wl = np.linspace(400.0, 1000.0, 15)
    with h5py.File(path, "a") as f:
        f.attrs["wavelengths"] = attr_wl
    sp = H5Split(path, spec)
    np.testing.assert_allclose(sp.wavelengths, attr_wl, rtol=1e-6)
    assert "attribute" in sp.wavelength_source


def test_pickled_split_reopens_in_the_receiver(make_file: Callable[..., Path]) -> None:
    sp = H5Split(make_file(), HYKO2)
    clone = pickle.loads(pickle.dumps(sp))
    np.testing.assert_array_equal(clone.read(1)[0], sp.read(1)[0])


# ----------------------------------------------------------------------------------- one handle
def _count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = h5py.File

    def counting(*args: object, **kw: object) -> h5py.File:
        opened.append(str(args[0]))
        return real(*args, **kw)

    monkeypatch.setattr(h5py, "File", counting)
    return opened


def test_one_handle_reused(make_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_file()
    opened = _count_opens(monkeypatch)
    sp = open_split(path.parent, HYKO2, "train")
    assert open_split(path.parent, HYKO2, "train") is sp
    for _ in range(5):
        for i in range(len(sp)):
            sp.read(i)
    sp.load()
    sp.classes_present()
    assert len(opened) == 1


def test_handle_reopens_after_fork(make_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    sp = open_split(make_file().parent, HYKO2, "train")
    opened = _count_opens(monkeypatch)
    monkeypatch.setattr(h5reader.os, "getpid", lambda: -12345)  # as if we were a forked worker
    sp.read(0)
    sp.read(1)
    assert len(opened) == 1


def test_open_split_reopens_a_rewritten_file(make_file: Callable[..., Path]) -> None:
    path = make_file(n=2)
    first = open_split(path.parent, HYKO2, "train")
    first.close()  # HDF5 refuses to rewrite a file this process holds open
    write_split(path, HYKO2, n=4, seed=1)
    second = open_split(path.parent, HYKO2, "train")
    assert second is not first and len(second) == 4


def test_validate_dataset_checks_all_splits(tmp_path: Path) -> None:
    for s in HYKO2.splits:
        write_split(split_path(tmp_path, HYKO2, s), HYKO2, prefix=s)
    splits = validate_dataset(tmp_path, HYKO2)
    assert set(splits) == {"train", "val", "test"} and all(sp.values_checked for sp in splits.values())
    assert splits["val"] is open_split(tmp_path, HYKO2, "val")


def test_validate_dataset_requires_one_band_set(tmp_path: Path) -> None:
    for s in HYKO2.splits:
        write_split(split_path(tmp_path, HYKO2, s), HYKO2, prefix=s)
    with h5py.File(split_path(tmp_path, HYKO2, "test"), "a") as f:
        f.attrs["wavelengths"] = np.linspace(400.0, 900.0, 15)
    with pytest.raises(DataValidationError, match="hyko2_test.h5.*share one band set"):
        validate_dataset(tmp_path, HYKO2)


# ------------------------------------------------------------------------------------ validation
def test_missing_file_lists_expected_names(tmp_path: Path) -> None:
    write_split(tmp_path / "other.h5", HYKO2)
    msg = _error(tmp_path / "hyko2_train.h5")
    assert "hyko2_train.h5" in msg and "hyko2_val.h5" in msg and "hyko2_test.h5" in msg and "other.h5" in msg
    with pytest.raises(DataValidationError, match="hyko2_val.h5"):
        validate_dataset(tmp_path / "nowhere", HYKO2)


def test_not_an_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "hyko2_train.h5"
    path.write_text("name,label\nimg1,3\n")
    msg = _error(path)
    assert str(path) in msg and "not HDF5" in msg


def test_truncated_file(make_file: Callable[..., Path]) -> None:
    path = make_file(n=4, hw=(16, 16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _error(path)
    assert str(path) in msg and "truncated" in msg


def test_no_samples(make_file: Callable[..., Path]) -> None:
    path = make_file(n=0)
    msg = _error(path)
    assert str(path) in msg and "no samples" in msg


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda f: f.create_dataset("s05", data=np.zeros(3)), "'s05': is a Dataset, not a group"),
        (lambda f: f.move("s01/image", "s01/data"), "'s01': lacks dataset(s) 'image'"),
        (lambda f: f.__delitem__("s02/labels"), "'s02': lacks dataset(s) 'labels'"),
        (lambda f: _replace(f, "s00/image", np.zeros((4, 5))), "'s00': image must be 3-D"),
        (lambda f: _replace(f, "s00/labels", np.zeros((4, 5, 1), np.uint8)), "'s00': labels must be 2-D"),
        (lambda f: _replace(f, "s01/labels", np.zeros((5, 4), np.uint8)), "'s01': image H x W (4, 5) !="),
        (lambda f: _replace(f, "s02/image", np.zeros((4, 5, 16))), "'s02': image has 16 bands but there are"),
        (lambda f: _replace(f, "s00/labels", np.full((4, 5), b"a", "S1")), "'s00': non-numeric dtype"),
    ],
    ids=["not-group", "no-image", "no-labels", "image-ndim", "labels-ndim", "hw-mismatch", "bands", "dtype"],
)
def test_structure_rules(make_file: Callable[..., Path], edit: Callable[..., None], needle: str) -> None:
    path = make_file(edit=edit)
    msg = _error(path, check_values=False)
    assert str(path) in msg and needle in msg


def _replace(f: h5py.File, key: str, value: np.ndarray) -> None:
    del f[key]
    f[key] = value


def test_old_data_key_gets_a_hint(make_file: Callable[..., Path]) -> None:
    assert "old hyperseg export" in _error(make_file(edit=lambda f: f.move("s01/image", "s01/data")))


def test_band_count_error_names_wavelength_source(make_file: Callable[..., Path]) -> None:
    def edit(f: h5py.File) -> None:
        f.attrs["wavelengths"] = np.linspace(400.0, 700.0, 10)

    msg = _error(make_file(edit=edit))
    assert "15 bands but there are 10 wavelengths" in msg and "attribute 'wavelengths'" in msg


@pytest.mark.parametrize(
    ("wl", "needle"),
    [
        (np.linspace(0.4, 0.7, 15), "must lie in 300-2600 nm"),
        (np.r_[np.linspace(400.0, 700.0, 14), 650.0], "strictly increasing"),
        (np.array([b"a"] * 15), "numeric"),
    ],
    ids=["micrometres", "not-increasing", "strings"],
)
def test_wavelength_rules(make_file: Callable[..., Path], wl: np.ndarray, needle: str) -> None:
    def edit(f: h5py.File) -> None:
        f.attrs["wavelengths"] = wl

    path = make_file(edit=edit)
    msg = _error(path)
    assert str(path) in msg and needle in msg


def test_nan_found_in_row_blocks(make_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h5reader, "CHUNK_BYTES", 1)  # one row per block: the scan must still find row 7

    def edit(f: h5py.File) -> None:
        f["s01/image"][7, 2, 3] = np.inf

    path = make_file(hw=(9, 5), edit=edit)
    msg = _error(path)
    assert str(path) in msg and "'s01'" in msg and "NaN/inf" in msg and "row 7, column 2, band 3" in msg


def test_unchecked_open_still_checks_each_read(make_file: Callable[..., Path]) -> None:
    def edit(f: h5py.File) -> None:
        f["s01/image"][0, 0, 0] = np.nan
        f["s02/labels"][1, 1] = 42

    sp = H5Split(make_file(edit=edit), HYKO2, check_values=False)
    sp.read(0)
    with pytest.raises(DataValidationError, match="'s01'.*NaN/inf"):
        sp.read("s01")
    with pytest.raises(DataValidationError, match=r"'s02'.*raw id\(s\) \[42\]"):
        sp.read("s02")
    with pytest.raises(DataValidationError, match="'s01'"):
        sp.load()


@pytest.mark.parametrize(("name", "raw"), [("hyko2", 11), ("hsidrive", 12), ("hcv2", 254), ("hcv2", 19)])
def test_labels_out_of_range_report_raw_value(make_file: Callable[..., Path], name: str, raw: int) -> None:
    spec = get_spec(name)

    def edit(f: h5py.File) -> None:
        f["s01/labels"][2, 3] = raw

    path = make_file(spec, edit=edit)
    msg = _error(path, spec)
    assert str(path) in msg and "'s01'" in msg and f"[{raw}]" in msg and f"[0, {spec.n_classes})" in msg


def test_unknown_name_and_size_mismatch(make_file: Callable[..., Path]) -> None:
    def edit(f: h5py.File) -> None:
        g = f.create_group("s09")
        g["image"], g["labels"] = np.zeros((6, 5, 15)), np.zeros((6, 5), np.uint8)

    sp = H5Split(make_file(edit=edit), HYKO2)
    with pytest.raises(DataValidationError, match="no sample named 'nope'"):
        sp.read("nope")
    with pytest.raises(DataValidationError, match="differ in size"):
        sp.load()
    assert sp.load(["s00", "s01"])[0].shape == (2, 4, 5, 15)
    with pytest.raises(IndexError):
        sp.read(10)


def test_a_sample_in_two_splits_is_refused(tmp_path: Path) -> None:
    for s in HYKO2.splits:
        write_split(split_path(tmp_path, HYKO2, s), HYKO2, prefix="train" if s == "test" else s)
    with pytest.raises(DataValidationError, match=r"hyko2_test.h5: sample .trains00. is also in .*hyko2_train.h5"):
        validate_dataset(tmp_path, HYKO2)
