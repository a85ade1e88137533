"""Write failures are one line, found before work starts where possible, and lose nothing already stored.

Run as root, a read-only folder (chmod) is still writable; these tests make folders truly unwritable
with ``chattr +i`` where the file system allows it (else they are skipped) and simulate the rest
(EACCES, ENOSPC) by making the OS call fail. The study-level test needs Ray (the ``ray_session`` fixture).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from study.errors import HsiStudyError, ResultsWriteError
from study.store import checks as store_checks
from study.store import location as storage
from study.store import part_files, read_table, write_rows

ROW = dict(study_id="s", row_kind="trial", phase="tune", dataset="hyko2", strategy="indomain", train_fraction=0.5,
           n_train_images=3, subset_hash="abc", subset_seed=0, cell_id="c", trial_id="t")
STUDY = ["--strategy", "indomain", "--dataset", "hyko2", "--width", "tiny", "--fractions", "1.0", "--trials", "2",
         "--epochs", "1", "--grace-period", "1", "--seeds", "1", "--max-failures", "0"]


def _immutable(path: Path) -> Iterator[Path]:
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (needed to make a folder unwritable for root)")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], Path]]:
    """``read_only(folder)`` makes ``folder`` unwritable even for root until the test ends."""
    made: list[Iterator[Path]] = []

    def make(folder: Path) -> Path:
        gen = _immutable(folder)
        made.append(gen)
        return next(gen)

    yield make
    for gen in reversed(made):
        next(gen, None)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------- before work starts
def test_results_that_is_a_file_or_under_a_file_is_refused_naming_it(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ResultsWriteError, match=r"afile: is a file, not a folder; move .*afile away"):
        store_checks.check_writable(afile)
    with pytest.raises(ResultsWriteError, match=r"lies under .*afile, which is a file"):
        store_checks.check_writable(afile / "sub" / "res")


def test_check_writable_leaves_nothing_behind(tmp_path: Path) -> None:
    store_checks.check_writable(tmp_path / "new" / "res")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old" / "rows").mkdir(parents=True)
    store_checks.check_writable(tmp_path / "old")
    assert sorted(p.name for p in (tmp_path / "old").rglob("*")) == ["rows"]


def test_read_only_results_is_refused(tmp_path: Path, read_only) -> None:
    res = tmp_path / "res"
    res.mkdir()
    read_only(res)
    with pytest.raises(ResultsWriteError, match=r"--results .*res: cannot write files in .*res.*make .* writable"):
        store_checks.check_writable(res)


def test_read_only_and_full_disk_as_root_by_failing_the_os_call(tmp_path: Path, monkeypatch) -> None:
    real_open = os.open

    def failing(code: int):
        def fake(path, *a, **kw):  # noqa: ANN001, ANN002, ANN003
            if store_checks.PROBE_PREFIX in str(path):
                raise OSError(code, os.strerror(code), str(path))
            return real_open(path, *a, **kw)
        return fake

    monkeypatch.setattr(os, "open", failing(errno.EACCES))
    with pytest.raises(ResultsWriteError, match=r"permission denied; make .*res.* writable"):
        store_checks.check_writable(tmp_path / "res")
    monkeypatch.setattr(os, "open", failing(errno.ENOSPC))
    with pytest.raises(ResultsWriteError, match=r"no space left on the device.*free space") as info:
        store_checks.check_writable(tmp_path / "res")
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError) and isinstance(info.value, HsiStudyError)


def test_study_run_refuses_a_results_file_in_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    from study.run import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    for target in (afile, afile / "res"):
        assert main([*STUDY, "--results", str(target)]) == 2
        assert "afile" in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------ mid-run
def test_write_rows_into_a_read_only_rows_folder_names_it_and_keeps_stored_parts(tmp_path: Path, read_only) -> None:
    first = write_rows(tmp_path, [ROW], "c-tune")
    read_only(tmp_path / "rows")
    with pytest.raises(ResultsWriteError) as info:
        write_rows(tmp_path, [{**ROW, "trial_id": "t2"}], "c-tune")
    msg = str(info.value)
    assert str(tmp_path / "rows") in msg and "make" in msg and "re-run the same command" in msg
    assert "\n" not in msg and info.value.path.startswith(str(tmp_path / "rows"))
    assert [str(p) for p in part_files(tmp_path)] == [first] and read_table(tmp_path).num_rows == 1


def test_write_rows_on_a_full_disk_is_one_error(tmp_path: Path, monkeypatch) -> None:
    write_rows(tmp_path, [ROW], "c-tune")

    def full(path: Path, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(storage, "atomic_write_bytes", full)
    with pytest.raises(ResultsWriteError, match=r"no space left on the device.*kept in .*rows"):
        write_rows(tmp_path, [ROW], "c-tune")
    assert read_table(tmp_path).num_rows == 1


def test_rows_replaced_by_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "rows").write_text("")
    with pytest.raises(ResultsWriteError, match=r"rows is a file, not a folder; move that file away"):
        write_rows(tmp_path, [ROW], "c-tune")


@pytest.mark.slow
def test_read_only_rows_mid_study_stops_with_one_error_and_keeps_the_stored_trial(
        ray_session, tiny_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from study.run import main

    real = storage.atomic_write_bytes
    writes = {"rows": 0}

    def rows_turn_read_only_after_one_part(path: Path, data: bytes) -> Path:
        if path.parent.name == "rows":
            writes["rows"] += 1
            if writes["rows"] > 1:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, data)

    monkeypatch.setattr(storage, "atomic_write_bytes", rows_turn_read_only_after_one_part)
    results = tmp_path / "res"
    rc = main([*STUDY, "--data-root", str(tiny_root), "--results", str(results), "--max-concurrent", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "permission denied" in errors[0] and str(results / "rows") in errors[0]
    assert "Traceback" not in err and "Error stopping trial" not in err
    assert read_table(results).num_rows >= 1 and len(part_files(results)) == 1  # the stored trial is kept


# --------------------------------------------------------------------------------- other outputs
def test_report_out_a_folder_or_read_only_is_one_line(tmp_path: Path, read_only, capsys) -> None:
    from study.report import main

    write_rows(tmp_path / "res", [ROW], "c-tune")
    assert main([str(tmp_path / "res"), "--out", str(tmp_path)]) == 2
    assert "is a folder; give a file path" in _one_error_line(capsys.readouterr().err)
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    assert main([str(tmp_path / "res"), "--out", str(locked / "r.html")]) == 2
    assert f"cannot write files in {locked}" in _one_error_line(capsys.readouterr().err)


def test_write_to_a_folder_is_a_results_write_error(tmp_path: Path) -> None:
    with pytest.raises(ResultsWriteError, match="it is a folder"):
        storage.write_to(tmp_path, b"x")


def test_pretrain_out_a_folder_fails_before_training(tmp_path: Path, capsys) -> None:
    from study.pretrain import main

    assert main(["--smoke", "--out", str(tmp_path), "--quiet"]) == 2
    assert "is a folder; give a file path" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_features_bad_flags_fail_before_any_pretraining(tmp_path: Path, capsys, monkeypatch) -> None:
    import study.pretrain.cli as pretrain

    def no_pretraining(*a, **kw):  # noqa: ANN002, ANN003
        raise AssertionError("pretraining started before the flags were checked")

    monkeypatch.setattr(pretrain, "ensure_default_backbone", no_pretraining)
    from study.features import main

    base = ["--backbone", "default", "--dataset", "hyko2"]
    assert main([*base, "--out", str(tmp_path / "f"), "--chunk-size", "0"]) == 2
    assert "--chunk-size" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "afile").write_text("")
    assert main([*base, "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in _one_error_line(capsys.readouterr().err)


# -------------------------------------------------------------------------------------- permissions
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_umask_permissions_not_0600(tmp_path: Path, umask: int) -> None:
    before = os.umask(umask)
    try:
        assert storage.current_umask() == umask
        part = Path(write_rows(tmp_path, [ROW], "c-tune"))
        report = Path(storage.write_to(tmp_path / "report.html", b"<html/>"))
        text = storage.atomic_write_text(tmp_path / "study.json", "{}")
    finally:
        os.umask(before)
    for path in (part, report, text):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_a_trial_that_failed_on_a_full_disk_is_not_stored_and_stops_the_study(tmp_path: Path) -> None:
    """A trial whose checkpoint could not be written failed through no fault of its own: it is not stored as a
    failed trial (it trains again on resume); the study stops with one line naming the tune/ folder."""
    from study import progress
    from study.orchestration.cell import RowWriter
    from study.store import TrialLog, resolve

    control = progress.register(progress.StudyControl("disk", 1, 1, print))
    try:
        writer = RowWriter(None, resolve(tmp_path), "c", {}, {}, None, "disk", None)
        log = TrialLog(trial_id="t", config={"phase": "tune"},
                       error="OSError: [Errno 28] Error writing bytes to file. Detail: No space left on device")
        writer(log)
        assert control.stop.is_set() and not (tmp_path / "rows").exists()
        with pytest.raises(ResultsWriteError, match=r"the disk holding .*tune is full.*re-run the same command"):
            writer.raise_failure()
    finally:
        progress.unregister("disk")


def test_torn_journal_lines_are_dropped(tmp_path: Path) -> None:
    from study.orchestration.cell import drop_torn_lines

    journal = tmp_path / "optuna.journal"
    journal.write_bytes(b'{"op_code": 0}\n{"op_code": 5, "worker\n{"op_code": 1}\n{"op_co')
    assert drop_torn_lines(journal) == 2
    assert journal.read_bytes() == b'{"op_code": 0}\n{"op_code": 1}\n'
    assert drop_torn_lines(journal) == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MB tmpfs (root only; skipped where mounting is not permitted), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 3 MB tmpfs here (needs root and mount rights): {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_tune_filling_the_disk_is_one_error_line_and_a_rerun_with_space_continues(tiny_root: Path,
                                                                                 tiny_disk: Path) -> None:
    import sys

    from study.orchestration.plan import finished_cells
    from study.store import read_store

    results = tiny_disk / "r"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "study.run", "--strategy", "indomain", "--smoke", "--fractions", "1.0", "--trials",
           "2", "--epochs", "2", "--data-root", str(tiny_root), "--num-cpus", "2", "--results", str(results)]
    full = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = full.stdout + full.stderr
    assert full.returncode == 2, out
    errors = [ln for ln in full.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"the disk holding {results / 'tune'} is full" in errors[0], out
    assert "Traceback" not in out and len(out.splitlines()) < 60, out
    stored = read_store(results).height if (results / "rows").exists() else 0

    subprocess.run(["mount", "-o", "remount,size=300m", str(tiny_disk)], check=True)  # space freed
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    df = read_store(results)
    assert df.height >= stored and len(finished_cells(results, 1)) == 1
    assert (df.filter(df["row_kind"] == "trial")["status"] != "error").all()
