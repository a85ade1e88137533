"""``--results`` on an object store: a real S3 protocol, offline, through a moto server on 127.0.0.1.

pyarrow's S3 filesystem talks to the server exactly as to AWS (``endpoint_override`` + ``scheme=http`` in
the URI); Ray's trial workers reach it the same way. The dummy credentials are set in conftest.py, before
the session's Ray starts, so the workers inherit them.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from study.errors import ConfigError, HsiStudyError
from study.report import cli as report_cli
from study.store import (
    LEASE,
    SCHEMA_VERSION,
    WorkingCopy,
    join,
    open_results,
    part_paths,
    read_store,
    read_table,
    resolve,
    results_lock,
    write_rows,
    write_study_file,
)
from study.store import lease as leases
from study.store import location as storage

pytest.importorskip("moto.server", reason="the object-store tests need moto[server] (pip install -e '.[dev]')")

BUCKET = "hsistudy-test"
BASE = dict(
    study_id="s", row_kind="epoch", phase="tune", dataset="hyko2", strategy="indomain", train_fraction=0.5,
    n_train_images=3, subset_hash="abc", subset_seed=0, cell_id="c", trial_id="t",
)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server on a free local port with one bucket; yields the URI query that points at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override={host}:{port}&scheme=http"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}?{query}&allow_bucket_creation=true")
    fs.create_dir(BUCKET)
    yield query
    server.stop()


@pytest.fixture
def s3_uri(endpoint: str) -> Callable[[str], str]:
    """A fresh prefix in the bucket per test, as the URI a user would type."""
    prefix = uuid.uuid4().hex[:8]
    return lambda name="res": f"s3://{BUCKET}/{prefix}/{name}?{endpoint}"


def test_uri_resolves_to_the_s3_filesystem_and_local_paths_stay_local(s3_uri, tmp_path: Path) -> None:
    loc = resolve(s3_uri())
    assert loc.fs.type_name == "s3" and not loc.is_local and loc.root.startswith(f"{BUCKET}/")
    assert loc.show("rows").startswith(f"s3://{BUCKET}/") and "endpoint" not in loc.show()
    assert resolve(tmp_path).is_local and resolve(tmp_path).root == str(tmp_path)
    assert resolve(f"file://{tmp_path}").is_local and resolve(f"file://{tmp_path}").root == str(tmp_path)
    assert join(s3_uri(), "report.html").split("?")[0].endswith("/res/report.html")
    write_rows(f"file://{tmp_path}/f", [BASE], "a")  # a file:// URI is the local folder
    assert read_store(tmp_path / "f").height == 1


def test_store_round_trip_on_s3(s3_uri) -> None:
    uri = s3_uri()
    write_study_file(uri, {"study_id": "s"})
    write_rows(uri, [{**BASE, "epoch": e, "val_miou": e / 10} for e in (1, 2)], "cell-a")
    write_rows(uri, [{**BASE, "row_kind": "final", "phase": "final", "test_miou": 0.7}], "cell-a-final")
    loc = resolve(uri)
    loc.write_bytes("rows/.part.half-written.tmp", b"PAR1 garbage")  # a dot-file is never read
    assert len(part_paths(uri)) == 2
    df = read_store(uri)
    assert df.height == 3 and sorted(df["row_kind"].to_list()) == ["epoch", "epoch", "final"]

    loc.write_text("study.json", json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(HsiStudyError, match=f"schema v{SCHEMA_VERSION + 1}"):
        read_table(uri)
    loc.write_text("study.json", json.dumps({"schema_version": SCHEMA_VERSION}))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"a": [1]}), buf)
    loc.write_bytes("rows/foreign.parquet", buf.getvalue().to_pybytes())
    with pytest.raises(HsiStudyError, match="s3://.*foreign.parquet"):
        read_table(uri)


def test_journal_working_copy_is_downloaded_and_uploaded(s3_uri) -> None:
    loc = resolve(s3_uri())
    with WorkingCopy(loc, "optuna.journal") as wc:
        assert not wc.path.exists()
        wc.path.write_text("line 1\n")
        wc.push()
        assert loc.read_text("optuna.journal") == "line 1\n"
        with wc.path.open("a") as fh:
            fh.write("line 2\n")
    assert loc.read_text("optuna.journal") == "line 1\nline 2\n" and not wc.path.exists()  # pushed, cleaned
    with WorkingCopy(loc, "optuna.journal") as again:
        assert again.path.read_text() == "line 1\nline 2\n"


def test_lease_refuses_a_fresh_lease_and_takes_over_stale_ones(s3_uri, monkeypatch) -> None:
    monkeypatch.setattr("study.store.lease.LEASE_SETTLE_S", 0.01)
    uri = s3_uri()
    loc = resolve(uri)
    with results_lock(uri):
        assert json.loads(loc.read_text(LEASE))["host"] == socket.gethostname()
        with pytest.raises(HsiStudyError, match=r"in use by another study.run .*\.lock\.json"), results_lock(uri):
            pass
    assert not loc.exists(LEASE)  # released

    other = {"owner": "pid 7 on elsewhere", "host": "elsewhere", "pid": 7, "token": "x"}
    loc.write_text(LEASE, json.dumps({**other, "renewed": time.time()}))
    with pytest.raises(HsiStudyError, match="pid 7 on elsewhere"), results_lock(uri):
        pass
    loc.write_text(LEASE, json.dumps({**other, "renewed": time.time() - 3600}))  # not renewed: stale
    with results_lock(uri):
        assert json.loads(loc.read_text(LEASE))["token"] != "x"
    dead = {**other, "host": socket.gethostname(), "pid": 2**22 + 12345, "renewed": time.time()}
    loc.write_text(LEASE, json.dumps(dead))  # fresh, but its process is gone on this very host
    with results_lock(uri):
        pass


def test_two_runs_claiming_at_the_same_moment_leave_one_winner(s3_uri, monkeypatch) -> None:
    loc = resolve(s3_uri())
    rival = {"owner": "pid 9 on rival", "host": "rival", "pid": 9, "token": "rival"}
    reads = []
    real_read = leases.read_lease

    def read_with_a_rival(where: storage.Location) -> dict | None:
        reads.append(1)
        if len(reads) == 2:  # the rival wrote its lease while this run waited to read its own back
            where.write_text(LEASE, json.dumps({**rival, "renewed": time.time()}))
        return real_read(where)

    monkeypatch.setattr("study.store.lease.LEASE_SETTLE_S", 0.0)
    monkeypatch.setattr("study.store.lease.read_lease", read_with_a_rival)
    with pytest.raises(HsiStudyError, match="claimed by another study.run at the same moment"), leases.lease(loc):
        pass
    assert json.loads(loc.read_text(LEASE))["token"] == "rival"  # the winner's lease is left alone


def test_bad_locations_fail_in_one_line_before_anything_runs(endpoint: str, capsys) -> None:
    from study.run import main

    cases = {
        "foo://bucket/x": "Unrecognized filesystem type",
        "s3:///x": "bucket name is missing",
        f"s3://no-such-bucket/x?{endpoint}": "bucket 'no-such-bucket' does not exist",
    }
    for uri, needle in cases.items():
        assert main(["--smoke", "--results", uri]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert report_cli.main([f"s3://no-such-bucket/x?{endpoint}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="lost a slash"):
        open_results(Path("s3://bucket/x"))  # pathlib collapses the '//'


def test_smoke_study_on_s3_resumes_without_new_rows_and_reports(ray_session, tiny_root: Path, s3_uri,
                                                                tmp_path: Path, capsys, monkeypatch) -> None:
    import optuna

    from study.run import main

    monkeypatch.setattr("study.store.lease.LEASE_SETTLE_S", 0.01)  # one process, no rival: no need to wait a second
    uri = s3_uri("study")
    argv = ["--strategy", "indomain", "--dataset", "hyko2", "--width", "tiny", "--fractions", "1.0", "--trials", "2",
            "--epochs", "2", "--grace-period", "1", "--seeds", "1", "--max-concurrent", "1",
            "--data-root", str(tiny_root), "--results", uri]
    assert main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert f"results: s3://{BUCKET}/" in out
    df = read_store(uri)
    assert df.filter(pl.col("row_kind") == "trial").height == 2 and df.filter(pl.col("row_kind") == "final").height == 1

    loc = resolve(uri)
    files = [i.path for i in loc.fs.get_file_info(pafs.FileSelector(loc.root, recursive=True)) if i.is_file]
    assert any("/manifests/" in f for f in files) and any(f.endswith("/study.json") for f in files)
    assert any("/tune/" in f and "/checkpoint_" in f for f in files)  # trial checkpoints uploaded by Ray
    assert not any(f.endswith(LEASE) for f in files)  # the lease is released
    with WorkingCopy(loc, "optuna.journal") as journal:  # the journal was uploaded: one study, 2 trials
        studies = optuna.get_all_study_summaries(
            optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal.path))))
        assert [s.n_trials for s in studies] == [2]

    assert main(argv) == 0  # the same command again: the cell is finished, nothing is added
    assert "already finished, skipped" in capsys.readouterr().out
    assert read_store(uri).height == df.height

    assert report_cli.main([uri, "--out", str(tmp_path / "r.html"), "--csv", str(tmp_path / "s.csv")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 100_000 and (tmp_path / "s.csv").read_text().count("\n") == 2
    assert report_cli.main([uri]) == 0  # default: next to the rows, in the bucket
    assert loc.exists("report.html")


@pytest.mark.slow
def test_a_failed_trial_resumes_from_its_checkpoint_in_the_bucket(ray_session, s3_uri, tmp_path: Path) -> None:
    """The trial checkpoint code of study/train/loop.py, with Ray uploading to and downloading from S3."""
    from ray.tune import Tuner

    from study.search.tuning import Budget, run_config

    def trainable(config: dict) -> None:  # defined here: pickled by value into the Ray workers
        from ray import tune

        from study.train.trial_state import load_trial_checkpoint, save_trial_checkpoint

        state = load_trial_checkpoint(tune.get_checkpoint) or {"epoch": 0}
        start = int(state["epoch"])
        for epoch in range(start + 1, 4):
            marker = Path(config["marker"])
            if epoch == 3 and not marker.exists():
                marker.write_text("failed once")
                raise RuntimeError("injected failure after the checkpoint of epoch 2")
            save_trial_checkpoint(tune.report, {"epoch": epoch, "resumed_from": start}, {"epoch": epoch})

    loc = resolve(s3_uri()).child("tune")
    budget = Budget(trials=1, epochs=3, grace_period=1, reduction_factor=2, seeds=1, max_failures=1)
    grid = Tuner(trainable, param_space={"marker": str(tmp_path / "failed")},
                 run_config=run_config(loc, "ckpt", budget, [])).fit()
    assert grid.errors == [] and (tmp_path / "failed").exists()
    assert grid[0].metrics["epoch"] == 3 and grid[0].metrics["resumed_from"] == 2  # not from scratch
    assert grid[0].checkpoint.filesystem.type_name == "s3"
    assert loc.fs.get_file_info(grid[0].checkpoint.path).type == pafs.FileType.Directory


def test_a_run_that_loses_its_lease_says_so(s3_uri, monkeypatch, capsys) -> None:
    """A stalled run whose lease another run took over must not end as if it had been the only writer."""
    monkeypatch.setattr("study.store.lease.LEASE_SETTLE_S", 0.0)
    loc = resolve(s3_uri())
    rival = {"owner": "pid 11 on rival", "host": "rival", "pid": 11, "token": "rival", "renewed": time.time()}
    with pytest.raises(HsiStudyError, match="lost its lease to pid 11 on rival"), leases.lease(loc, renew_s=0.05):
        loc.write_text(LEASE, json.dumps(rival))  # the other run took over while this one stalled
        time.sleep(0.5)
    assert "lost its one-writer lease" in capsys.readouterr().err
    assert json.loads(loc.read_text(LEASE))["token"] == "rival"  # the new holder's lease is left alone
