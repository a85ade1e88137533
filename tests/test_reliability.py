"""No wrong number with exit 0: bad flags, empty labels, stalls and Ctrl+C all end the run, clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from study.run import main
from study.store import read_store

SMOKE = ["--strategy", "indomain", "--smoke"]


@pytest.mark.parametrize("argv, needle", [
    (["--width", "abc"], "--width must be one of full, small, tiny or an integer >= 1"),
    (["--width", "0"], "--width must be one of"),
    (["--num-cpus", "0"], "--num-cpus must be >= 1"),
    (["--max-concurrent", "0"], "--max-concurrent must be >= 1"),
    (["--max-concurrent-cells", "0"], "--max-concurrent-cells must be >= 1"),
    (["--max-failures", "-2"], "--max-failures must be >= 0"),
    (["--fractions", ""], "--fractions is empty"),
    (["--subset-seed", "-1"], "--subset-seed must be >= 0"),
    (["--patience", "0"], "--patience must be >= 1"),
])
def test_every_bad_flag_is_one_line_before_ray_starts(argv, needle, capsys, monkeypatch, tmp_path) -> None:
    import ray

    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("Ray started for a bad flag"))
    assert main([*SMOKE, "--results", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def _copy_with_labels(src: Path, dst: Path, ignore: int, splits: tuple[str, ...] = ("train",)) -> Path:
    """A copy of the tiny HyKo2-like set whose ``splits`` are all ignore-labelled."""
    import shutil

    shutil.copytree(src, dst)
    for split in splits:
        with h5py.File(dst / f"hyko2_{split}.h5", "r+") as fh:
            for name in fh:
                if isinstance(fh[name], h5py.Group):
                    fh[name]["labels"][...] = np.full(fh[name]["labels"].shape, ignore, fh[name]["labels"].dtype)
    return dst


def test_an_all_ignore_training_split_stops_before_ray(tiny_root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import ray

    from study.data.specs import get_spec

    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("Ray started on data without labels"))
    root = _copy_with_labels(tiny_root, tmp_path / "data", get_spec("hyko2").ignore_index)
    assert main([*SMOKE, "--data-root", str(root), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no labelled pixel in the train split" in err and err.count("\n") == 1


def test_a_nan_training_loss_fails_the_trial_never_completes_it() -> None:
    """Training on nothing (every batch all-ignore) raises instead of reporting a trial with test metrics."""
    from study.data.bundle import DataBundle, SplitArrays
    from study.data.specs import get_spec
    from study.data.subsets import make_subset
    from trainables.indomain import train_indomain

    spec = get_spec("hyko2")
    rng = np.random.default_rng(0)
    images = rng.random((2, 32, 32, spec.n_bands), dtype=np.float32)
    empty = np.full((2, 32, 32), spec.ignore_index, np.int64)
    labels = rng.integers(0, spec.n_classes - 1, (2, 32, 32))
    names = ("a", "b")
    train, val = SplitArrays(images, empty, names), SplitArrays(images, labels, names)
    subset = make_subset("hyko2", list(names), [frozenset({1})] * 2, 1.0, 0)
    data = DataBundle(dataset="hyko2", train=train, val=val, test=val, wavelengths=np.asarray(spec.wavelengths),
                      subset=subset, source="test")
    config = dict(lr=1e-3, weight_decay=0.0, dropout=0.0, max_epochs=2, batch_size=2, width="tiny", seed=0,
                  num_threads=1)
    seen: list[dict] = []
    with pytest.raises(FloatingPointError, match="no labelled pixel"):
        train_indomain(config, data, report=lambda m, **_: seen.append(m), get_checkpoint=lambda: None)
    assert seen == []


def test_a_study_that_cannot_place_any_trial_stops_and_names_the_resource(ray_session, tiny_root: Path,
                                                                          tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    monkeypatch.setenv("HSISTUDY_STALL_S", "4")
    rc = main([*SMOKE, "--data-root", str(tiny_root), "--results", str(tmp_path / "r"), "--fractions", "1.0",
               "--gpus", "on", "--address", "auto"])  # the session's Ray has no GPU: nothing can be placed
    err = capsys.readouterr().err
    assert rc == 2 and "no trial could be placed" in err and "'gpu': 1.0" in err and "GPU" not in err.split(
        "offers")[1].split(";")[0]


def test_gpus_on_without_any_gpu_on_a_local_ray_is_refused(ray_session, tiny_root: Path, tmp_path: Path,
                                                           capsys, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc = main([*SMOKE, "--data-root", str(tiny_root), "--results", str(tmp_path / "r"), "--gpus", "on"])
    assert rc == 2 and "--gpus on, but this local Ray has no GPU" in capsys.readouterr().err


def _ctrl_c_at(base: list[str], results: Path, env: dict[str, str], marker: str) -> None:
    """Ctrl+C (SIGINT to the process group) once ``marker`` is printed: exit 130 with the resume hint, and no
    unfinished cell stored as finished."""
    from test_resume import assert_interrupted_store_is_short

    proc = subprocess.Popen([*base, "--results", str(results)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(marker in ln for ln in lines):
        time.sleep(0.05)
    assert proc.poll() is None, "".join(lines)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, "".join(lines)  # the stop's exit code, not any failure
    time.sleep(1)
    assert "re-run the same command to continue" in "".join(lines)
    assert_interrupted_store_is_short(results, trials=3, seeds=2)


@pytest.mark.slow
def test_ctrl_c_during_tuning_and_again_during_final_runs_then_rerun_equals_an_uninterrupted_run(
        tiny_root: Path, tmp_path: Path, clean_resume_store: Path) -> None:
    """One store, interrupted by Ctrl+C while tuning, its re-run interrupted again while re-training the chosen
    configurations; the run that completes it stores what an uninterrupted run stores."""
    from test_resume import RESUME_ARGS, comparable

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "study.run", *RESUME_ARGS, "--data-root", str(tiny_root)]
    hit = tmp_path / "hit"
    _ctrl_c_at(base, hit, env, "tune] trial 1/")
    _ctrl_c_at(base, hit, env, "final] trial 1/")
    rerun = subprocess.run([*base, "--results", str(hit)], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert comparable(hit).equals(comparable(clean_resume_store))


def test_a_second_study_into_a_used_folder_is_refused(ray_session, tiny_root: Path, tmp_path: Path, capsys) -> None:
    results = tmp_path / "r"
    base = [*SMOKE, "--data-root", str(tiny_root), "--results", str(results), "--fractions", "1.0"]
    assert main(base) == 0
    before = read_store(results).height
    capsys.readouterr()
    assert main([*base, "--epochs", "3"]) == 2  # another study id
    err = capsys.readouterr().err
    assert "holds study hyko2-" in err and "give this study its own --results" in err and err.count("\n") == 1
    assert read_store(results).height == before  # nothing mixed in
    assert main([*base, "--strategy", "indomain-fc"]) == 0  # a strategy added to the same study is fine


def _with_extreme_pixel(src: Path, dst: Path, value: float = 3e38) -> tuple[Path, str]:
    """A copy of the tiny set with one absurd but finite pixel in its first training image."""
    import shutil

    shutil.copytree(src, dst)
    with h5py.File(dst / "hyko2_train.h5", "r+") as fh:
        name = sorted(k for k in fh if isinstance(fh[k], h5py.Group))[0]
        fh[name]["image"][2, 3, 1] = value
    return dst, name


def test_an_absurd_finite_value_is_refused_naming_file_sample_and_value(tiny_root: Path, tmp_path: Path, capsys,
                                                                       monkeypatch) -> None:
    import ray

    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("Ray started on data with an absurd value"))
    root, name = _with_extreme_pixel(tiny_root, tmp_path / "data")
    assert main([*SMOKE, "--data-root", str(root), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "hyko2_train.h5" in err and repr(name) in err and "3e+38" in err and "--allow-extreme-values" in err


def test_allow_extreme_values_warns_and_goes_on(tiny_root: Path, tmp_path: Path) -> None:
    from study.config import build_config
    from study.orchestration import check_inputs

    root, name = _with_extreme_pixel(tiny_root, tmp_path / "data", -2e7)
    cfg = build_config("smoke", "tuned", strategies=("indomain",), dataset=("hyko2",), data_root=root,
                       results=tmp_path / "r")
    said: list[str] = []
    preps = check_inputs(cfg, said.append, allow_extreme_values=True)
    assert "hyko2" in preps
    warning = [s for s in said if s.startswith("warning:")]
    assert len(warning) == 1 and repr(name) in warning[0] and "-2e+07" in warning[0]


def test_images_smaller_than_the_networks_downsampling_warn(tiny_root: Path, tmp_path: Path) -> None:
    import shutil

    from study.config import build_config
    from study.orchestration import check_inputs

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    for split in ("train", "val", "test"):  # every image 8x8 (a split holds one size): below the RU-Net's 16
        with h5py.File(root / f"hyko2_{split}.h5", "r+") as fh:
            for name in sorted(k for k in fh if isinstance(fh[k], h5py.Group)):
                image, labels = fh[name]["image"][8:16, 8:16], fh[name]["labels"][8:16, 8:16]
                del fh[name]["image"], fh[name]["labels"]
                fh[name].create_dataset("image", data=image)
                fh[name].create_dataset("labels", data=labels)
    cfg = build_config("smoke", "tuned", strategies=("indomain", "indomain-fc"), dataset=("hyko2",), data_root=root,
                       results=tmp_path / "r")
    said: list[str] = []
    check_inputs(cfg, said.append)
    warnings = [s for s in said if s.startswith("warning:")]
    assert len(warnings) == 1, said  # the RU-Net downsamples 16x; the per-pixel head does not
    assert "12 image(s) of hyko2 are smaller than 16x16, indomain's downsampling (the smallest: 8x8" in warnings[0]
