"""Corrupt result parts are named (with the fix) and moved aside by ``--repair`` / ``--skip-corrupt``, never deleted."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from study.errors import CorruptPartError
from study.store import QUARANTINE, part_files, part_paths, quarantine_corrupt_parts, read_table, write_rows

ROW = dict(study_id="s", row_kind="trial", phase="tune", dataset="hyko2", strategy="indomain", train_fraction=0.5,
           n_train_images=3, subset_hash="abc", subset_seed=0, cell_id="c", trial_id="t")


def _store(root: Path | str, n: int = 3) -> list[str]:
    return [write_rows(root, [{**ROW, "trial_id": f"t{i}"}], f"c-tune{i}") for i in range(n)]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_part_is_named_with_the_fix(tmp_path: Path) -> None:
    parts = _store(tmp_path)
    _truncate(Path(parts[1]))
    with pytest.raises(CorruptPartError) as info:
        read_table(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{parts[1]}: not a readable Parquet part") and info.value.path == parts[1]
    assert "--repair" in msg and "--skip-corrupt" in msg and f"rows/{QUARANTINE}/" in msg and "<Buffer>" not in msg


def test_several_corrupt_parts_are_all_named(tmp_path: Path) -> None:
    parts = _store(tmp_path)
    for p in parts[:2]:
        Path(p).write_bytes(b"not parquet")
    with pytest.raises(CorruptPartError, match="2 result parts are not readable") as info:
        read_table(tmp_path)
    assert all(p in str(info.value) for p in parts[:2])


def test_quarantine_moves_only_unreadable_parts_and_deletes_nothing(tmp_path: Path) -> None:
    parts = _store(tmp_path)
    _truncate(Path(parts[0]))
    broken = Path(parts[0]).read_bytes()
    moved = quarantine_corrupt_parts(tmp_path)
    target = tmp_path / "rows" / QUARANTINE / Path(parts[0]).name
    assert moved == [str(target)] and target.read_bytes() == broken
    assert [str(p) for p in part_files(tmp_path)] == parts[1:] and read_table(tmp_path).num_rows == 2
    assert quarantine_corrupt_parts(tmp_path) == []  # idempotent


def test_study_run_repair_quarantines_before_the_run(tmp_path: Path, capsys) -> None:
    from study.run import main

    results = tmp_path / "res"
    parts = _store(results)
    _truncate(Path(parts[2]))
    # a data root without files stops the run after the repair and before Ray: the repair itself is under test
    (tmp_path / "no-data").mkdir()
    rc = main(["--strategy", "indomain", "--dataset", "hyko2", "--fractions", "1.0", "--trials", "2", "--epochs", "1",
               "--seeds", "1", "--data-root", str(tmp_path / "no-data"), "--results", str(results), "--repair"])
    out = capsys.readouterr().out
    assert rc == 2 and "unreadable part moved to" in out and Path(parts[2]).name in out
    assert (results / "rows" / QUARANTINE / Path(parts[2]).name).is_file()
    assert read_table(results).num_rows == 2


def test_study_run_without_repair_names_the_part(tmp_path: Path, capsys) -> None:
    from study.orchestration import finished_cells

    parts = _store(tmp_path)
    _truncate(Path(parts[0]))
    with pytest.raises(CorruptPartError, match=Path(parts[0]).name):
        finished_cells(tmp_path, 1)


def test_report_names_the_part_and_skip_corrupt_reports_the_rest(tmp_path: Path, capsys) -> None:
    from store_builder import build_store

    from study.report import main

    build_store(tmp_path)
    victim = part_files(tmp_path)[0]
    _truncate(victim)
    assert main([str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "--skip-corrupt" in err and err.count("\n") == 1
    assert main([str(tmp_path), "--out", str(tmp_path / "r.html"), "--skip-corrupt"]) == 0
    captured = capsys.readouterr()
    assert f"moved to {tmp_path / 'rows' / QUARANTINE / victim.name}" in captured.err
    assert (tmp_path / "r.html").is_file() and not victim.exists()


# ---------------------------------------------------------------------------------------- object store
@pytest.fixture(scope="module")
def s3_root() -> Iterator[str]:
    """A moto S3 server with one bucket (credentials: conftest.py); yields a fresh-prefix URI factory's base."""
    pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[dev]')")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override={host}:{port}&scheme=http"
    fs, _ = pafs.FileSystem.from_uri(f"s3://quarantine-test?{query}&allow_bucket_creation=true")
    fs.create_dir("quarantine-test")
    yield f"s3://quarantine-test/{uuid.uuid4().hex[:8]}/res?{query}"
    server.stop()


def test_quarantine_on_an_object_store(s3_root: str) -> None:
    from study.store import resolve

    _store(s3_root)
    loc = resolve(s3_root)
    victim = part_paths(loc)[1]
    data = loc.fs.open_input_stream(victim).read()
    with loc.fs.open_output_stream(victim) as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(CorruptPartError, match=victim.rsplit("/", 1)[-1]) as info:
        read_table(s3_root)
    assert info.value.path.startswith("s3://")
    moved = quarantine_corrupt_parts(s3_root)
    assert moved == [f"s3://{loc.path('rows', QUARANTINE, victim.rsplit('/', 1)[-1])}"]
    assert read_table(s3_root).num_rows == 2 and len(part_paths(loc)) == 2
    assert loc.exists("rows", QUARANTINE, victim.rsplit("/", 1)[-1])
