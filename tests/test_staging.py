"""Per-node staging: one checked copy per node, shared by concurrent trials, atomic, refused when wrong."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

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


TRIALS_ON_NODE = 3
WAIT_S = 60.0  # a copy waits at most this long for the other trials to find the file unstaged


def _record(log: Path, event: str, what: str) -> None:
    """Append ``pid event what time`` (one short O_APPEND write: lines of concurrent processes never mix)."""
    with log.open("a") as fh:
        fh.write(f"{os.getpid()} {event} {what} {time.monotonic():.6f}\n")


def _key(staged: Path) -> str:
    """A staged file's folder and name: the raw split and the feature file share a name, not a folder."""
    return f"{staged.parent.name}/{staged.name}"


def _events(log: Path, event: str) -> list[tuple[int, str, float]]:
    """The ``event`` lines so far; a line still being written (no newline yet) is left for the next read."""
    rows = [line.split() for line in log.read_text().split("\n")[:-1]] if log.exists() else []
    return [(int(r[0]), r[2], float(r[3])) for r in rows if len(r) == 4 and r[1] == event]


def _stage_in_child(barrier: Any, sources: dict[str, str], hashes: dict[str, str], stage_dir: str, log: str,
                    out: str) -> None:
    """One trial process on the node. It records when it first finds a file not yet staged (``attempt``: it is
    about to take the lock and copy) and, if it copies, ``copy`` / ``copied`` around the copy. The copy does
    not finish before every trial on the node has recorded its attempt at that file, so the attempts overlap
    the copy by construction, however the processes are scheduled; only the lock can then keep it to one copy."""
    log_p = Path(log)
    real_is_staged, real_copy = staging._is_staged, staging._copy_hashed
    seen: set[Path] = set()

    def is_staged(target: Path, *args: Any, **kwargs: Any) -> bool:
        staged = real_is_staged(target, *args, **kwargs)
        if not staged and target not in seen:
            seen.add(target)
            _record(log_p, "attempt", _key(target))
        return staged

    def copy(src: Path, dst: Path) -> tuple[int, str]:
        key = _key(dst.with_name(src.name))  # dst is the target's temporary sibling
        _record(log_p, "copy", key)
        deadline = time.monotonic() + WAIT_S
        while len({pid for pid, name, _ in _events(log_p, "attempt") if name == key}) < TRIALS_ON_NODE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the other trials never tried to stage {key}")
            time.sleep(0.01)
        result = real_copy(src, dst)
        _record(log_p, "copied", key)
        return result

    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(staging, "_is_staged", is_staged)
        mp_.setattr(staging, "_copy_hashed", copy)
        barrier.wait(timeout=WAIT_S)  # every trial starts staging at the same moment
        _record(log_p, "start", "-")
        local = staging.stage(sources, hashes, stage_dir)
        _record(log_p, "end", "-")
    Path(out).write_text(json.dumps(local))


def test_concurrent_trials_on_one_node_stage_once(sources: dict[str, str], tmp_path: Path) -> None:
    """Three trial processes stage the same three files at once: each file is copied exactly once."""
    log = tmp_path / "events.log"
    hashes = staging.hash_files(sources)
    # spawned, not forked: a fork of this process (Ray's threads running, from the session's Ray) can inherit
    # a held lock and hang the child (it did, once, in a CI run)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(TRIALS_ON_NODE)
    outs = [tmp_path / f"out{i}.json" for i in range(TRIALS_ON_NODE)]
    procs = [ctx.Process(target=_stage_in_child, args=(barrier, sources, hashes, str(tmp_path / "stage"), str(log),
                                                       str(out))) for out in outs]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=3 * WAIT_S)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * TRIALS_ON_NODE, log.read_text() if log.exists() else "no log"
    results = [json.loads(out.read_text()) for out in outs]
    assert results[0] == results[1] == results[2]

    names = sorted(_key(staging.staged_path(src, tmp_path / "stage")) for src in sources.values())
    copies = _events(log, "copy")
    assert sorted(name for _, name, _ in copies) == names  # one copy per file, not one per trial
    copied = {(pid, name): t for pid, name, t in _events(log, "copied")}
    for pid, name, _ in copies:  # every trial found the file unstaged while that copy was still running
        attempts = [t for _, n, t in _events(log, "attempt") if n == name]
        assert len(attempts) >= TRIALS_ON_NODE and max(attempts) < copied[(pid, name)], (name, log.read_text())
    starts, ends = [t for *_, t in _events(log, "start")], [t for *_, t in _events(log, "end")]
    assert len(starts) == len(ends) == TRIALS_ON_NODE and max(starts) < min(ends)  # the three stage() calls overlap


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
