"""Per-node staging: one checked copy per node, shared by concurrent trials, atomic, refused when wrong."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import namedtuple
from pathlib import Path

import pytest

from study.data import staging


@pytest.fixture()
def sources(tmp_path: Path) -> dict[str, str]:
    """A raw split and a feature file of the same name in different folders, plus a backbone."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "feats").mkdir()
    (tmp_path / "raw" / "hyko2_train.h5").write_bytes(b"raw" * 100_000)
    (tmp_path / "feats" / "hyko2_train.h5").write_bytes(b"features" * 1000)
    (tmp_path / "bb.pt").write_bytes(b"weights")
    return {"raw:train": str(tmp_path / "raw" / "hyko2_train.h5"),
            "features:train": str(tmp_path / "feats" / "hyko2_train.h5"), "backbone": str(tmp_path / "bb.pt")}


def _count_copies(monkeypatch: pytest.MonkeyPatch, log: Path, delay: float = 0.0) -> None:
    real = staging._copy_hashed

    def counting(src: Path, dst: Path) -> tuple[int, str]:
        with log.open("a") as fh:
            fh.write(f"{src}\n")
        time.sleep(delay)
        return real(src, dst)

    monkeypatch.setattr(staging, "_copy_hashed", counting)


def test_stage_copies_once_keeps_folders_apart(sources: dict[str, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "copies.log"
    _count_copies(monkeypatch, log)
    hashes = staging.hash_files(sources)
    local = staging.stage(sources, hashes, str(tmp_path / "stage"))
    assert set(local) == set(sources)
    assert local["raw:train"] != local["features:train"]  # same file name, different source folders
    assert Path(local["raw:train"]).parent != Path(local["features:train"]).parent
    for key, src in sources.items():
        assert Path(local[key]).read_bytes() == Path(src).read_bytes() and Path(local[key]).name == Path(src).name
    assert len(log.read_text().splitlines()) == 3
    assert staging.stage(sources, hashes, str(tmp_path / "stage")) == local
    assert len(log.read_text().splitlines()) == 3  # second trial on the node: nothing copied
    assert not list((tmp_path / "stage").rglob("*.tmp"))


def _stage_in_child(args: tuple[dict[str, str], dict[str, str], str, str]) -> dict[str, str]:
    """One trial process on the node: counts its copies into the shared log, each copy taking 0.3 s."""
    sources, hashes, stage_dir, log = args
    with pytest.MonkeyPatch.context() as mp_:
        _count_copies(mp_, Path(log), delay=0.3)
        return staging.stage(sources, hashes, stage_dir)


def test_concurrent_trials_on_one_node_stage_once(sources: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "copies.log"
    hashes = staging.hash_files(sources)
    # spawned, not forked: a fork of this process (Ray's threads running, from the session's Ray) can inherit
    # a held lock and hang the child (it did, once, in a CI run)
    with mp.get_context("spawn").Pool(3) as pool:
        results = pool.map(_stage_in_child, [(sources, hashes, str(tmp_path / "stage"), str(log))] * 3)
    assert results[0] == results[1] == results[2]
    assert sorted(log.read_text().splitlines()) == sorted(sources.values())


def test_wrong_hash_is_refused_and_leaves_nothing(sources: dict[str, str], tmp_path: Path) -> None:
    hashes = {**staging.hash_files(sources), "backbone": "0" * 64}
    with pytest.raises(staging.StagingError, match="changed since the driver hashed it"):
        staging.stage(sources, hashes, str(tmp_path / "stage"))
    target = staging.staged_path(sources["backbone"], tmp_path / "stage")
    assert not target.exists() and not list(target.parent.glob("*.tmp"))
    with pytest.raises(staging.StagingError, match="no hash for backbone"):
        staging.stage(sources, {k: v for k, v in hashes.items() if k != "backbone"}, str(tmp_path / "stage"))


def test_a_damaged_copy_is_staged_again(sources: dict[str, str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "copies.log"
    _count_copies(monkeypatch, log)
    one = {"backbone": sources["backbone"]}
    hashes = staging.hash_files(one)
    local = Path(staging.stage(one, hashes, str(tmp_path / "stage"))["backbone"])
    local.write_bytes(b"truncated")  # size differs: noticed without re-reading
    staging.stage(one, hashes, str(tmp_path / "stage"))
    assert local.read_bytes() == b"weights" and len(log.read_text().splitlines()) == 2
    marker = local.with_name(f".{local.name}.staged").read_text()
    local.write_bytes(b"WEIGHTS")  # same size, new mtime: the marker no longer matches
    staging.stage(one, hashes, str(tmp_path / "stage"))
    assert local.read_bytes() == b"weights" and len(log.read_text().splitlines()) == 3
    # same size and a forged marker: only a full re-read notices
    local.write_bytes(b"WEIGHTS")
    local.with_name(f".{local.name}.staged").write_text(
        f"{marker.split()[0]} {marker.split()[1]} {local.stat().st_mtime_ns}\n")
    staging.stage(one, hashes, str(tmp_path / "stage"))
    assert local.read_bytes() == b"WEIGHTS"
    staging.stage(one, hashes, str(tmp_path / "stage"), rehash=True)
    assert local.read_bytes() == b"weights"


def test_full_disk_and_missing_source_are_one_line_errors(sources: dict[str, str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    hashes = staging.hash_files(sources)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(staging.shutil, "disk_usage", lambda _p: usage(10, 10, 0))
    with pytest.raises(staging.StagingError, match="GiB free"):
        staging.stage(sources, hashes, str(tmp_path / "stage"))
    monkeypatch.undo()
    Path(sources["backbone"]).unlink()
    with pytest.raises(staging.StagingError, match="cannot stage .*bb.pt"):
        staging.stage({"backbone": sources["backbone"]}, hashes, str(tmp_path / "stage"))


def test_a_study_with_stage_data_trains_on_node_local_copies(ray_session, tiny_root: Path, tmp_path: Path,
                                                             capsys) -> None:
    from study.run import main
    from study.store import read_store

    stage_dir = tmp_path / "local-disk"
    rc = main(["--strategy", "indomain", "--smoke", "--fractions", "1.0", "--data-root", str(tiny_root),
               "--results", str(tmp_path / "r"), "--stage-data", str(stage_dir)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "input file(s) of hyko2 hashed" in out
    staged = sorted(p.name for p in stage_dir.rglob("*.h5"))
    assert staged == ["hyko2_test.h5", "hyko2_train.h5", "hyko2_val.h5"]
    for copy in stage_dir.rglob("*.h5"):
        assert copy.read_bytes() == (tiny_root / copy.name).read_bytes()
    assert read_store(tmp_path / "r")["row_kind"].to_list().count("final") == 1
