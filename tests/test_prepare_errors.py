"""python -m study.prepare: one-line errors (exit 2), wrong --raw folders, resume after an interruption,
and files made by the original HS3-Bench / cross-domain scripts accepted by the study reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_prepare import HCV2_FOLDERS, HCV2_NEW, HCV2_OLD, HSIDRIVE, HYKO2, ODD_SIZES, check_files
from test_prepare_support import build_hcv2, build_hsidrive, build_hyko2, write_lists, write_png

import study.prepare.writer as writer
from study.data.datasets import close_all, validate_dataset
from study.data.specs import get_spec
from study.errors import DataValidationError
from study.prepare import PrepareError, prepare
from study.prepare.cli import main


@pytest.fixture(autouse=True)
def _forget_open_files():
    yield
    close_all()


def run_cli(capsys, *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def one_line_error(capsys, *argv: object) -> str:
    code, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.fixture
def hsidrive(tmp_path):
    rng = np.random.default_rng(10)
    expected = build_hsidrive(tmp_path / "raw", [n for s in HSIDRIVE.values() for n in s], rng)
    return tmp_path / "raw", write_lists(tmp_path / "lists", HSIDRIVE), expected


@pytest.fixture
def hcv2(tmp_path):
    rng = np.random.default_rng(11)
    expected = build_hcv2(tmp_path / "rel" / "hcv2", HCV2_FOLDERS, rng, ODD_SIZES)
    return tmp_path / "rel" / "hcv2", write_lists(tmp_path / "lists", HCV2_NEW), expected


def test_missing_cube_and_label_name_sample_path_and_folder(hsidrive, tmp_path, capsys):
    raw, lists, _ = hsidrive
    (raw / "cubes_fl32" / "nf2_2_TC.mat").unlink()
    (raw / "labels" / "nf4_3.png").unlink()
    err = one_line_error(capsys, "hsidrive", "--raw", raw, "--out", tmp_path / "out", "--splits", lists)
    assert "2 raw file(s)" in err
    assert f"sample 'nf2_2' (val split): cube not found: looked for nf2_2_TC.mat in {raw / 'cubes_fl32'}" in err
    assert f"sample 'nf4_3' (test split): labels not found: looked for nf4_3.png in {raw / 'labels'}" in err
    assert not (tmp_path / "out" / "hsidrive_train.h5").exists()  # checked before anything is converted


def test_hcv2_sample_in_the_other_release_folder_gets_a_hint(hcv2, tmp_path, capsys):
    raw, _, _ = hcv2
    lists = write_lists(tmp_path / "l2", HCV2_OLD)  # old test images are in train/, but ask for the new folders
    err = one_line_error(capsys, "hcv2", "--raw", raw, "--out", tmp_path / "out", "--splits", lists)
    assert f"looked for 2021_b0.hsd in {raw / 'test'}" in err and "check --hcv2-split" in err


@pytest.mark.parametrize("case", ["shape", "garbage_mat", "no_key", "colour_png", "bad_png"])
def test_bad_sample_files_are_one_clear_error(hsidrive, tmp_path, capsys, case):
    raw, lists, _ = hsidrive
    cube, png = raw / "cubes_fl32" / "nf2_1_TC.mat", raw / "labels" / "nf2_1.png"
    if case == "shape":
        write_png(png, np.zeros((5, 7), np.uint8))
        want = f"{cube} and {png}: shape mismatch: the cube is 6 x 7 pixels but the labels are 5 x 7"
    elif case == "garbage_mat":
        cube.write_bytes(b"not a mat file at all" * 10)
        want = f"{cube}: cannot read as a MATLAB .mat file"
    elif case == "no_key":
        import scipy.io
        scipy.io.savemat(cube, {"hypercube": np.zeros((25, 6, 7), np.float32)})
        want = f"{cube}: this MATLAB v5 file has no variable 'cube' (it holds 'hypercube')"
    elif case == "colour_png":
        rgb = np.zeros((6, 7, 3), np.uint8)
        rgb[0, 0] = (255, 0, 0)
        from PIL import Image
        Image.fromarray(rgb).save(png)
        want = f"{png}: is a colour (RGB) image"
    else:
        png.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        want = f"{png}: cannot read as an image"
    err = one_line_error(capsys, "hsidrive", "--raw", raw, "--out", tmp_path / "out", "--splits", lists)
    assert want in err
    assert (tmp_path / "out" / "hsidrive_train.h5").exists()  # the split before is finished and kept
    assert (tmp_path / "out" / "hsidrive_val.h5.tmp").exists() and not (tmp_path / "out" / "hsidrive_val.h5").exists()


def test_truncated_hsd_and_wrong_band_count(hcv2, tmp_path, capsys):
    raw, lists, _ = hcv2
    path = raw / "train" / "2021_a1.hsd"
    path.write_bytes(path.read_bytes()[:-8])
    err = one_line_error(capsys, "hcv2", "--raw", raw, "--out", tmp_path / "out", "--splits", lists)
    assert f"{path}: " in err and "the file is truncated" in err
    path.write_bytes(b"\x01\x00")
    assert "shorter than the 28-byte .hsd header" in one_line_error(
        capsys, "hcv2", "--raw", raw, "--out", tmp_path / "out", "--splits", lists)


def test_debug_shows_the_traceback(hsidrive, tmp_path):
    raw, lists, _ = hsidrive
    (raw / "labels" / "nf2_2.png").unlink()
    with pytest.raises(PrepareError, match="nf2_2"):
        main(["hsidrive", "--raw", str(raw), "--out", str(tmp_path / "out"), "--splits", str(lists), "--debug"])


def test_wrong_raw_folder_says_what_belongs_there(hcv2, hsidrive, tmp_path, capsys):
    raw, lists, _ = hcv2
    err = one_line_error(capsys, "hcv2", "--raw", raw.parent, "--out", tmp_path / "o", "--splits", lists)
    assert "expected the folder train/" in err and f"Did you mean --raw {raw}?" in err  # one level too high
    err = one_line_error(capsys, "hcv2", "--raw", raw / "train", "--out", tmp_path / "o", "--splits", lists)
    assert "holds 2021_a0.hsd" in err and f"Did you mean --raw {raw}?" in err  # one level too deep
    shutil.rmtree(raw / "test")
    err = one_line_error(capsys, "hcv2", "--raw", raw, "--out", tmp_path / "o", "--splits", lists)
    assert "the folder test/" in err and "Did you mean" not in err
    hraw, hlists, _ = hsidrive
    err = one_line_error(capsys, "hsidrive", "--raw", hraw / "labels", "--out", tmp_path / "o", "--splits", hlists)
    assert "cubes_fl32/" in err and f"Did you mean --raw {hraw}?" in err
    err = one_line_error(capsys, "hsidrive", "--raw", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert "does not exist" in err
    hyko = tmp_path / "hyko_download"
    build_hyko2(hyko / "vis_annotated", HYKO2["train"][:1], np.random.default_rng(0))
    hlists = write_lists(tmp_path / "hyko_lists", HYKO2)
    err = one_line_error(capsys, "hyko2", "--raw", hyko, "--out", tmp_path / "o", "--splits", hlists)
    assert ".mat files" in err and f"Did you mean --raw {hyko / 'vis_annotated'}?" in err


def test_bad_split_lists(hsidrive, tmp_path, capsys):
    raw, _, _ = hsidrive
    overlap = write_lists(tmp_path / "overlap", {**HSIDRIVE, "test": ["nf2_1", "nf4_2", "nf4_3"]})
    err = one_line_error(capsys, "hsidrive", "--raw", raw, "--out", tmp_path / "o", "--splits", overlap)
    assert "'nf2_1' is in both val_samples.csv and test_samples.csv" in err
    (overlap / "val_samples.csv").unlink()
    assert "missing val_samples.csv" in one_line_error(
        capsys, "hsidrive", "--raw", raw, "--out", tmp_path / "o", "--splits", overlap)
    assert "--hcv2-split is for hcv2 only" in one_line_error(
        capsys, "hsidrive", "--raw", raw, "--out", tmp_path / "o", "--hcv2-split", "old")


def test_resume_after_an_interruption_continues_without_duplicates(hcv2, tmp_path, monkeypatch):
    raw, lists, expected = hcv2
    real, calls = writer.load_sample, []

    def stop_at_third(job):
        calls.append(job.group)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(writer, "load_sample", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        prepare("hcv2", raw, tmp_path / "out", splits_dir=lists)
    tmp = tmp_path / "out" / "hcv2_train.h5.tmp"
    assert tmp.exists() and not (tmp_path / "out" / "hcv2_train.h5").exists()
    with h5py.File(tmp, "a") as fh:
        assert sorted(fh) == ["2021_a0", "2021_a1"] and all(fh[g].attrs["complete"] for g in fh)
        half = fh.create_group("2021_a2")  # as if killed between writing image and the 'complete' mark
        half.create_dataset("image", data=np.zeros((1, 1, 128), np.float32))
    calls.clear()
    monkeypatch.setattr(writer, "load_sample", lambda job: (calls.append(job.group), real(job))[1])
    results = prepare("hcv2", raw, tmp_path / "out", splits_dir=lists)
    assert calls[:4] == ["2021_a2", "2021_b0", "2021_b1", "2021_b2"] and "2021_a0" not in calls
    assert (results[0].kept, results[0].written) == (2, 4)
    check_files(tmp_path / "out", "hcv2", HCV2_NEW, expected, hcv2_split="new")


def test_changed_lists_do_not_mix_into_existing_files(hsidrive, tmp_path):
    raw, lists, _ = hsidrive
    prepare("hsidrive", raw, tmp_path / "out", splits_dir=lists)
    other = write_lists(tmp_path / "other", {**HSIDRIVE, "train": ["nf3122_147", "nf1001_2"]})
    with pytest.raises(PrepareError, match="made from a different split list"):
        prepare("hsidrive", raw, tmp_path / "out", splits_dir=other)


# --- files made by the original scripts (issue 12 item 2) ---------------------------------------------


def _write_like_original(path: Path, samples: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Like hyperseg / cross-domain ``prep_*.py`` and ``export_features.py``: groups only, no attributes."""
    with h5py.File(path, "w") as fh:
        for name, (image, labels) in samples.items():
            grp = fh.create_group(name)
            grp.create_dataset("image", data=image)
            grp.create_dataset("labels", data=labels)


@pytest.mark.parametrize("dataset", ["hyko2", "hsidrive", "hcv2"])
def test_files_of_the_original_conversion_scripts_are_accepted(tmp_path, dataset):
    spec, rng = get_spec(dataset), np.random.default_rng(20)
    raw_ids = [k for k, _ in spec.raw_label_map] if spec.raw_label_map else list(range(spec.n_classes))
    for i, split in enumerate(spec.splits):
        dtype = np.float64 if dataset == "hyko2" else np.float32  # HyKo2: what loadmat returned (float64)
        _write_like_original(tmp_path / spec.file_name(split), {
            f"{split}_{j}": (rng.uniform(0, 4, (6, 7, spec.n_bands)).astype(dtype),
                             rng.choice(raw_ids, (6, 7)).astype(np.uint8)) for j in range(2 + i)})
    splits = validate_dataset(tmp_path, spec)
    image, labels = splits["train"].read(0)
    assert image.shape == (6, 7, spec.n_bands) and image.dtype == np.float32
    assert labels.max() < spec.n_classes


@pytest.mark.parametrize("dataset", ["hyko2", "hsidrive", "hcv2"])
def test_exported_hypersl_feature_files_are_accepted(tmp_path, dataset):
    spec, rng = get_spec(dataset), np.random.default_rng(21)
    raw_ids = [k for k, _ in spec.raw_label_map] if spec.raw_label_map else list(range(spec.n_classes))
    for split in spec.splits:
        _write_like_original(tmp_path / spec.file_name(split), {
            f"{split}_{j}": (rng.normal(size=(6, 7, 256)).astype(np.float32),
                             rng.choice(raw_ids, (6, 7)).astype(np.uint8)) for j in range(2)})
    splits = validate_dataset(tmp_path, spec)
    assert splits["val"].feature_dim == 256 and splits["val"].n_channels == 256
    np.testing.assert_array_equal(splits["val"].wavelengths, spec.wavelength_array())  # the source's bands
    images, _ = splits["test"].load()
    assert images.shape == (2, 6, 7, 256)
    close_all()
    with h5py.File(tmp_path / spec.file_name("train"), "a") as fh:  # any other band count is still an error
        del fh["train_0"]["image"]
        fh["train_0"].create_dataset("image", data=np.zeros((6, 7, 200), np.float32))
    with pytest.raises(DataValidationError, match="200 bands"):
        validate_dataset(tmp_path, spec)


def test_feature_files_as_data_root_are_refused_for_strategies_that_export_features(tmp_path, capsys):
    """crossdomain(-fc) would run HyperSL on features: one line before any backbone or Ray; indomain reads them."""
    from study.run import build_parser, config_from_args
    from study.run import main as run_main

    spec, rng = get_spec("hyko2"), np.random.default_rng(22)
    for split in spec.splits:
        _write_like_original(tmp_path / spec.file_name(split), {
            f"{split}_{j}": (rng.normal(size=(6, 7, 256)).astype(np.float32),
                             rng.integers(0, spec.n_classes, (6, 7)).astype(np.uint8)) for j in range(2)})
    argv = ["--dataset", "hyko2", "--data-root", str(tmp_path), "--results", str(tmp_path / "res"), "--smoke"]
    assert run_main([*argv, "--strategy", "crossdomain-fc"]) == 2
    err = capsys.readouterr().err
    assert "holds 256-d HyperSL features, not raw spectra" in err and "crossdomain-fc" in err
    assert "(--strategy indomain / " in err and err.count("\n") == 1 and "Traceback" not in err
    from study.orchestration import check_inputs

    cfg = config_from_args(build_parser().parse_args([*argv, "--strategy", "indomain"]))
    assert check_inputs(cfg, echo=lambda _: None)["hyko2"].splits["train"].feature_dim == 256
