"""python -m study.prepare: tiny raw releases of all three datasets converted and checked sample by sample."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_prepare_support import build_hcv2, build_hsidrive, build_hyko2, opencv_half, write_lists

from study.data.datasets import close_all, validate_dataset
from study.data.specs import get_spec
from study.prepare import PrepareError, prepare
from study.prepare.cli import main
from study.prepare.hsd import decode_hsd, encode_hsd, read_header
from study.prepare.resize import opencv_dst_size, opencv_nn_indices, resize_nearest
from study.prepare.splits import load_lists
from study.prepare.writer import Progress

HYKO2 = {"train": ["set-_00003_spec_annotated.mat", "set-_00001_spec_annotated.mat", "set-_00002_spec_annotated.mat"],
         "val": ["set-_00010_spec_annotated.mat", "set-_00011_spec_annotated.mat", "set-_00012_spec_annotated.mat"],
         "test": ["set-_00020_spec_annotated.mat", "set-_00021_spec_annotated.mat", "set-_00022_spec_annotated.mat"]}
HSIDRIVE = {"train": ["nf3122_147", "nf1001_2", "nf3122_15"], "val": ["nf2_1", "nf2_2", "nf2_3"],
            "test": ["nf4_1", "nf4_2", "nf4_3"]}
#: release folders: train/ holds old-train (a*), old-test (b*) and val (v*); test/ holds the official test (t*)
HCV2_FOLDERS = {"train": [f"2021_a{i}.hsd" for i in range(3)] + [f"2021_b{i}.hsd" for i in range(3)]
                + [f"2021_v{i}.hsd" for i in range(3)], "test": [f"2021_t{i}.hsd" for i in range(3)]}
HCV2_NEW = {"train": HCV2_FOLDERS["train"][:6], "val": HCV2_FOLDERS["train"][6:], "test": HCV2_FOLDERS["test"]}
HCV2_OLD = {"train": HCV2_FOLDERS["train"][:3], "val": HCV2_FOLDERS["train"][6:], "test": HCV2_FOLDERS["train"][3:6]}
ODD_SIZES = [(7, 9), (5, 11), (6, 7), (9, 5)]


@pytest.fixture(autouse=True)
def _forget_open_files():
    yield
    close_all()


def check_files(out: Path, dataset: str, lists: dict[str, list[str]], expected: dict, **attrs: object) -> None:
    """Every split: group names and order, values, labels and root attributes as expected; the reader accepts it."""
    spec = get_spec(dataset)
    for split, names in lists.items():
        path = out / spec.file_name(split)
        assert not path.with_name(path.name + ".tmp").exists()
        with h5py.File(path, "r") as fh:
            groups = list(fh.keys())
            want = sorted(Path(n).stem if dataset != "hsidrive" else n for n in names)
            assert groups == want
            np.testing.assert_array_equal(fh.attrs["wavelengths"], spec.wavelength_array())
            assert fh.attrs["split"] == split and fh.attrs["dataset"] == dataset
            for key, value in attrs.items():
                assert fh.attrs[key] == value
            for g in groups:
                image, labels = expected[g]
                assert fh[g]["image"].dtype == np.float32
                np.testing.assert_allclose(fh[g]["image"][()], image, rtol=1e-6, atol=1e-5)
                np.testing.assert_array_equal(fh[g]["labels"][()], labels)
    splits = validate_dataset(out, spec)
    assert [len(splits[s]) for s in spec.splits] == [len(lists[s]) for s in spec.splits]


def test_opencv_nearest_rule_on_odd_and_even_sizes():
    # cvRound is round-half-even: 3.5 -> 4, 2.5 -> 2, 4.5 -> 4, 5.5 -> 6; HCV2's 1422 x 1889 -> 711 x 944
    assert [opencv_dst_size(n, 0.5) for n in (3, 5, 7, 9, 11, 6, 1422, 1889)] == [2, 2, 4, 4, 6, 3, 711, 944]
    assert opencv_nn_indices(7, 0.5).tolist() == [0, 2, 4, 6]
    assert opencv_nn_indices(5, 0.5).tolist() == [0, 2]
    assert opencv_nn_indices(3, 0.5).tolist() == [0, 2]
    assert opencv_nn_indices(3, 1 / 3).tolist() == [0]  # ifx = 1/fx as a double: floor(0 * 3.0)
    assert opencv_nn_indices(4, 0.75).tolist() == [0, 1, 2]  # floor(x * 1.333...) = 0, 1, 2
    a = np.arange(7 * 9 * 2).reshape(7, 9, 2)
    out = resize_nearest(a, 0.5)
    assert out.shape == (4, 4, 2)
    np.testing.assert_array_equal(out, a[opencv_half(7)][:, opencv_half(9)])
    with pytest.raises(ValueError):
        opencv_dst_size(1, 0.5)  # round(0.5) = 0: OpenCV rejects an empty output


def test_hsd_decoder_matches_the_format(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 6, 4)).astype(np.float32)
    coeffs = rng.normal(size=(4, 128)).astype(np.float32)
    means = rng.normal(size=128).astype(np.float32)
    encode_hsd(tmp_path / "x.hsd", scores, coeffs, means, 450, 4.0, 958)
    assert (tmp_path / "x.hsd").stat().st_size == 28 + 4 * (128 + 4 * 128 + 5 * 6 * 4)
    header = read_header(tmp_path / "x.hsd")
    assert (header.height, header.width, header.bands, header.d, header.start_nm, header.step_nm,
            header.end_nm) == (5, 6, 128, 4, 450, 4.0, 958)
    cube, _ = decode_hsd(tmp_path / "x.hsd")
    np.testing.assert_allclose(cube, (scores.reshape(30, 4) @ coeffs + means).reshape(5, 6, 128), rtol=1e-6)
    part, _ = decode_hsd(tmp_path / "x.hsd", np.array([0, 2, 4]), np.array([1, 5]))
    np.testing.assert_array_equal(part, cube[[0, 2, 4]][:, [1, 5]])


def test_packaged_split_lists():
    counts = {name: [len(lists.entries[s]) for s in ("train", "val", "test")] for name, lists in {
        "hyko2": load_lists("hyko2"), "hsidrive": load_lists("hsidrive"),
        "hcv2": load_lists("hcv2"), "hcv2_old": load_lists("hcv2", hcv2_split="old")}.items()}
    assert counts == {"hyko2": [81, 32, 49], "hsidrive": [451, 150, 151], "hcv2": [949, 105, 276],
                      "hcv2_old": [527, 105, 422]}
    new, old = load_lists("hcv2"), load_lists("hcv2", hcv2_split="old")
    assert set(new.entries["train"]) == set(old.entries["train"]) | set(old.entries["test"])
    assert new.entries["val"] == old.entries["val"]
    here = Path(__file__).parents[1] / "study" / "splits"
    assert (here / "LICENSE-hyperseg").is_file() and (here / "README.md").is_file()


def test_hyko2_v5_and_v73_mat_files(tmp_path):
    rng = np.random.default_rng(1)
    names = [n for s in HYKO2.values() for n in s]
    expected = build_hyko2(tmp_path / "raw", names, rng, v73=(names[0], names[4]))
    splits = write_lists(tmp_path / "lists", HYKO2)
    results = prepare("hyko2", tmp_path / "raw", tmp_path / "out", splits_dir=splits)
    assert [(r.split, r.status, r.written) for r in results] == [("train", "written", 3), ("val", "written", 3),
                                                                  ("test", "written", 3)]
    check_files(tmp_path / "out", "hyko2", HYKO2, expected)


def test_hsidrive_groups_drop_the_tc_suffix_and_keep_raw_ids(tmp_path):
    rng = np.random.default_rng(2)
    names = [n for s in HSIDRIVE.values() for n in s]
    expected = build_hsidrive(tmp_path / "raw", names, rng, v73=("nf3122_15",))
    expected["nf2_1"][1][0, 0] = 8  # water: stored raw, folded into ignore by the spec's map
    from test_prepare_support import write_png
    write_png(tmp_path / "raw" / "labels" / "nf2_1.png", expected["nf2_1"][1])
    splits = write_lists(tmp_path / "lists", HSIDRIVE, trailing_newline=False)
    prepare("hsidrive", tmp_path / "raw", tmp_path / "out", splits_dir=splits)
    check_files(tmp_path / "out", "hsidrive", HSIDRIVE, expected)
    image, labels = validate_dataset(tmp_path / "out", get_spec("hsidrive"))["val"].read("nf2_1")
    assert labels[0, 0] == get_spec("hsidrive").ignore_index


@pytest.mark.parametrize("which", ["new", "old"])
def test_hcv2_both_splits_halved_like_opencv(tmp_path, which):
    rng = np.random.default_rng(3)
    expected = build_hcv2(tmp_path / "raw", HCV2_FOLDERS, rng, ODD_SIZES)
    lists = HCV2_NEW if which == "new" else HCV2_OLD
    splits = write_lists(tmp_path / "lists", lists)
    prepare("hcv2", tmp_path / "raw", tmp_path / "out", splits_dir=splits, hcv2_split=which)
    check_files(tmp_path / "out", "hcv2", lists, expected, hcv2_split=which)
    with h5py.File(tmp_path / "out" / "hcv2_train.h5", "r") as fh:
        assert fh["2021_a0"]["image"].shape == (4, 4, 128)  # 7 x 9 -> round-half-even 3.5, 4.5 -> 4 x 4
        assert fh["2021_a1"]["image"].shape == (2, 6, 128)  # 5 x 11 -> 2.5, 5.5 -> 2 x 6
        assert 255 in np.concatenate([fh[g]["labels"][()].ravel() for g in fh])  # raw 255 kept; the spec maps it


def test_workers_give_the_same_files(tmp_path):
    rng = np.random.default_rng(4)
    build_hcv2(tmp_path / "raw", HCV2_FOLDERS, rng, ODD_SIZES)
    splits = write_lists(tmp_path / "lists", HCV2_NEW)
    prepare("hcv2", tmp_path / "raw", tmp_path / "one", splits_dir=splits)
    assert main(["hcv2", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "two"), "--splits", str(splits),
                 "--workers", "2"]) == 0
    for split in ("train", "val", "test"):
        name = f"hcv2_{split}.h5"
        with h5py.File(tmp_path / "one" / name) as a, h5py.File(tmp_path / "two" / name) as b:
            assert list(a) == list(b)
            for g in a:
                np.testing.assert_array_equal(a[g]["image"][()], b[g]["image"][()])
                np.testing.assert_array_equal(a[g]["labels"][()], b[g]["labels"][()])
    (tmp_path / "raw" / "test" / "2021_t1.hsd").write_bytes(b"\0" * 40)  # an error in a worker: same one line
    with pytest.raises(PrepareError, match="2021_t1.hsd: not a valid .hsd header"):
        prepare("hcv2", tmp_path / "raw", tmp_path / "three", splits_dir=splits, workers=2)


def test_progress_line_with_eta_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = Progress("hcv2 train", total=4, done=1, stream=stream)
    bar.tick()
    bar.close()
    assert "\rhcv2 train: 2/4 images" in stream.getvalue() and "ETA" in stream.getvalue()
    quiet = io.StringIO()
    Progress("x", 3, stream=quiet).tick()
    assert quiet.getvalue() == ""


def test_cli_rerun_skips_finished_splits(tmp_path, capsys):
    rng = np.random.default_rng(5)
    build_hsidrive(tmp_path / "raw", [n for s in HSIDRIVE.values() for n in s], rng)
    splits = write_lists(tmp_path / "lists", HSIDRIVE)
    argv = ["hsidrive", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--splits", str(splits)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "hsidrive train: 3 images" in first and "--data-root" in first
    stamp = (tmp_path / "out" / "hsidrive_val.h5").stat().st_mtime_ns
    assert main(argv) == 0
    assert capsys.readouterr().out.count("exists, kept") == 3
    assert (tmp_path / "out" / "hsidrive_val.h5").stat().st_mtime_ns == stamp
