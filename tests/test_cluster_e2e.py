"""A smoke study on a simulated multi-node Ray cluster with fake GPUs, losing a node half-way.

``ray.cluster_utils.Cluster`` starts a real head (0 CPUs, so no trial runs there,
like ``cluster.yaml``'s head) and two worker nodes, each a separate raylet that
declares ``{CPU: 1, GPU: 2}``. The GPUs are fake: Ray does the accounting
(placement-group bundles, ``CUDA_VISIBLE_DEVICES``), ``torch.cuda.is_available()``
stays False and training falls back to CPU, as it must.

One study runs through the real CLI entry point (``study.run.main`` with
``--address``). A background thread waits until trials are running on both
worker nodes, snapshots where Ray placed them, and then kills one worker node
(no graceful shutdown: like a spot reclaim). The tests then check:

- trials landed on more than one node, each with the GPU share the strategy declares;
- after the node loss every cell still finished, every epoch Tune saw is in the
  store exactly once, the interrupted trial resumed from its checkpoint, and at most
  one trial of the whole study ended in error (a race Ray leaves open, below), which
  the study's output then names: its cell's FAILED line and the summary's failed count.

Run with ``pytest -m cluster`` (about 45 s on 2 cores).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from study.store import read_store
from study.strategies import get_strategy

pytestmark = pytest.mark.cluster

STRATEGY = "indomain"
FRACTIONS = (0.5, 1.0)
TRIALS, EPOCHS, SEEDS = 3, 5, 1  # grace period = EPOCHS: ASHA stops no trial, so the killed one was running
WORKER = {"num_cpus": 1, "num_gpus": 2}  # per worker node: one 1-CPU trial at a time, 2 fake GPUs
# Bigger than conftest's TINY cubes so that an epoch takes long enough for the node kill to hit a running trial.
DATA = dict(height=64, width=128, n_train=8, n_val=3, n_test=3, seed=5)
# Node death is noticed after ~period x threshold; Ray's defaults (3 s x 5) would add ~15 s of idle waiting.
# Until it is noticed, Ray may place a retried or new trial's actor on the dead node, and Ray Tune does not
# retry a trial whose actor dies while the trial is still PENDING (tune_controller._process_trial_failure):
# such a trial ends in error with no result. A short window (a dead raylet refuses the health-check RPC at
# once; a live but busy one still has the default 10-s RPC timeout) makes that race rare, and the test
# tolerates it only in that exact form (below).
HEAD_SYSTEM_CONFIG = {"health_check_period_ms": 100, "health_check_failure_threshold": 3}
INFRASTRUCTURE_ERROR = ("actor", "unavailable", "died", "node")
KILL_TIMEOUT_S = 120


@dataclass
class StudyRun:
    """What the module fixture observed while one study ran on the simulated cluster."""

    rc: int
    out: str
    results: Path
    worker_ids: list[str]
    removed_id: str | None = None
    pgs_at_kill: dict[str, Any] = field(default_factory=dict)  # placement groups just before the kill
    pgs_at_end: dict[str, Any] = field(default_factory=dict)
    watcher_error: str | None = None
    crash: str | None = None  # traceback if study.run.main raised

    def check_ran(self) -> None:
        assert self.crash is None, f"study.run.main raised after the node loss:\n{self.crash}\n{self.out}"
        assert self.rc == 0, self.out
        assert self.watcher_error is None, self.watcher_error


@pytest.fixture(scope="module")
def cluster_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from study.data.specs import get_spec
    from study.data.synthetic.generator import GeneratorConfig, generate_dataset

    return generate_dataset(get_spec("hyko2"), tmp_path_factory.mktemp("cluster_hyko2"), GeneratorConfig(**DATA))


def _trial_pgs(cluster: Any) -> dict[str, Any]:
    """The cluster's placement-group table (Tune reserves one group per trial actor; removed ones stay listed).

    Read through the cluster's own GCS accessor: calling ``ray.util`` from the watcher thread
    before the study connected would auto-start ``ray.init()`` and attach to whatever Ray runs here.
    """
    return {k: v for k, v in cluster.global_state.placement_group_table().items() if v.get("bundles")}


def _running_nodes(pgs: dict[str, Any]) -> set[str]:
    return {n for pg in pgs.values() if pg["state"] == "CREATED" for n in pg["bundles_to_node_id"].values()}


def _tune_rows(results: Path, partial_ok: bool = False) -> list[dict[str, Any]]:
    """Every result Tune recorded (its per-trial result.json files), with the experiment name added.

    ``partial_ok``: skip a line that is still being written (the watcher reads while Tune writes).
    """
    rows = []
    for f in sorted((results / "tune").glob("*/*/result.json")):
        for line in f.read_text().splitlines():
            try:
                rows.append({**json.loads(line), "_experiment": f.parent.parent.name})
            except json.JSONDecodeError:
                if line.strip() and not partial_ok:
                    raise
    return rows


def _kill_a_busy_worker(cluster: Any, run: StudyRun, workers: dict[str, Any], stop: threading.Event) -> None:
    """Once trials run on both workers, kill (hard) the node of a trial that has reported but not finished."""
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while not stop.is_set() and time.monotonic() < deadline:
            pgs = _trial_pgs(cluster)
            if _running_nodes(pgs) >= set(workers):
                # the latest row of each trial: a trial whose latest row is not its last is still running there.
                # Only such a trial with >= 2 epochs reported (so an epoch checkpoint is registered) and >= 2
                # still to go is a fair victim: killing a node whose trial just ended (or just started, with no
                # checkpoint yet) would test a restart from scratch, not a resume.
                latest: dict[tuple[str, str], dict[str, Any]] = {}
                for r in _tune_rows(run.results, partial_ok=True):
                    latest[(r["_experiment"], r["trial_id"])] = r
                mid_trial = [r for r in latest.values() if not r.get("is_last") and r.get("node_id") in workers
                             and 2 <= r["epoch"] <= EPOCHS - 2]
                if mid_trial:
                    victim = max(mid_trial, key=lambda r: r["timestamp"])["node_id"]
                    run.pgs_at_kill = pgs
                    cluster.remove_node(workers[victim], allow_graceful=False)
                    run.removed_id = victim
                    return
            time.sleep(0.05)
        run.watcher_error = "no moment with trials running on both worker nodes; the study ended first"
    except Exception as exc:  # noqa: BLE001 - reported by the tests, a thread cannot fail them itself
        run.watcher_error = f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="module")
def study_run(cluster_data: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyRun:
    """Start head + 2 fake-GPU workers, run one study through the CLI, kill a worker mid-study."""
    import ray
    from ray.cluster_utils import Cluster

    from study.run import main

    if ray.is_initialized():  # a session-wide local Ray would swallow --address (init_ray keeps it)
        ray.shutdown()
    results = tmp_path_factory.mktemp("cluster_results") / "study"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "include_dashboard": False, "_system_config": HEAD_SYSTEM_CONFIG})
    stop = threading.Event()
    try:
        workers = {n.node_id: n for n in (cluster.add_node(**WORKER) for _ in range(2))}
        cluster.wait_for_nodes()
        run = StudyRun(rc=-1, out="", results=results, worker_ids=sorted(workers))
        watcher = threading.Thread(target=_kill_a_busy_worker, args=(cluster, run, workers, stop), daemon=True)
        watcher.start()
        argv = ["--strategy", STRATEGY, "--dataset", "hyko2", "--width", "tiny",
                "--fractions", ",".join(map(str, FRACTIONS)), "--trials", str(TRIALS), "--epochs", str(EPOCHS),
                "--grace-period", str(EPOCHS), "--seeds", str(SEEDS), "--max-concurrent", "2",
                "--data-root", str(cluster_data), "--results", str(results), "--address", cluster.address]
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                run.rc = main(argv)
        except Exception:  # noqa: BLE001 - shown by both tests with the study's output
            run.crash = traceback.format_exc()
        run.out = buf.getvalue()
        stop.set()
        watcher.join(timeout=60)
        run.pgs_at_end = _trial_pgs(cluster)
        yield run
    finally:
        stop.set()
        ray.shutdown()
        cluster.shutdown()


def test_trials_spread_over_nodes_and_request_the_declared_gpu_share(study_run: StudyRun) -> None:
    run = study_run
    run.check_ran()
    want = get_strategy(STRATEGY).resources(have_gpus=True)
    assert want.get("gpu", 0) > 0, f"{STRATEGY} declares no GPU share: {want}"
    pgs = {**run.pgs_at_kill, **run.pgs_at_end}
    assert len(pgs) >= 2
    for pg in pgs.values():  # Ray reserved exactly the declared share for every trial actor
        assert list(pg["bundles"].values()) == [{"CPU": want["cpu"], "GPU": want["gpu"]}], pg
    # before the kill, Ray had trials running on both worker nodes (and none on the 0-CPU head)
    assert _running_nodes(run.pgs_at_kill) == set(run.worker_ids)

    # where the trainables themselves ran: the node_id column the loop reports (else Tune's result.json)
    df = read_store(run.results)
    if "node_id" in df.columns:
        ran_on = set(df["node_id"].drop_nulls())
    else:
        ran_on = {r["node_id"] for r in _tune_rows(run.results) if r.get("node_id")}
    assert ran_on == set(run.worker_ids), (ran_on, run.worker_ids)  # both workers trained, the head never
    # the GPUs are fake: Ray accounted for them, torch saw none, so every epoch fell back to the CPU
    import torch

    if not torch.cuda.is_available():
        assert set(df.filter(pl.col("row_kind") == "epoch")["device"].unique()) == {"cpu"}


def test_losing_a_worker_node_mid_study_loses_no_result(study_run: StudyRun) -> None:
    run = study_run
    run.check_ran()
    assert run.removed_id in run.worker_ids

    df = read_store(run.results)
    cells = df["cell_id"].unique().to_list()
    assert len(cells) == len(FRACTIONS)
    trials = df.filter(pl.col("row_kind") == "trial")
    bad = trials.filter(~pl.col("status").is_in(["completed", "stopped_early"]))
    # at most ONE trial of the whole study lost to the node loss, not one per cell
    assert bad.height <= 1, bad.select("cell_id", "trial_id", "status", "error").to_dicts()
    for b in bad.iter_rows(named=True):
        # the one tolerated failure: Ray placed a not-yet-started trial on the node before it was declared
        # dead (see HEAD_SYSTEM_CONFIG): an actor error, and the trial never reported an epoch
        text = (b["error"] or "").lower()
        assert b["status"] == "error" and sum(w in text for w in INFRASTRUCTURE_ERROR) >= 2, b
        assert df.filter((pl.col("row_kind") == "epoch") & (pl.col("trial_id") == b["trial_id"])).is_empty()
    for cid in cells:
        cell = df.filter(pl.col("cell_id") == cid)
        assert cell.filter(pl.col("row_kind") == "trial").height == TRIALS, trials.filter(pl.col("cell_id") == cid)
        assert cell.filter(pl.col("row_kind") == "final").height == SEEDS
        assert cell.filter(pl.col("row_kind") == "final")["test_miou"].is_between(0, 1).all()
    _assert_the_output_names_the_failed_trial(run.out, bad)

    epochs = df.filter(pl.col("row_kind") == "epoch")
    assert epochs.select("trial_id", "epoch").is_duplicated().sum() == 0
    for (tid,), group in epochs.group_by("trial_id"):  # every epoch a trial ran is there, none twice
        assert sorted(group["epoch"].to_list()) == list(range(1, group.height + 1)), tid

    # every result Tune recorded (including those of the trial on the lost node) reached the store
    tune_rows = _tune_rows(run.results)
    seen = {(r["_experiment"], r["trial_id"], r["epoch"]) for r in tune_rows}
    stored = {(f"{cid}-{phase}", tid.rsplit("-", 1)[1], e)  # store trial_id = <cell>-<phase>-<Tune trial id>
              for cid, phase, tid, e in epochs.select("cell_id", "phase", "trial_id", "epoch").iter_rows()}
    assert seen == stored

    # the trial that was running on the killed node resumed on the other node from its checkpoint
    resumed = [r for r in tune_rows if r["iterations_since_restore"] < r["training_iteration"]]
    assert resumed, "no trial was interrupted by the node loss"
    for r in resumed:
        assert r.get("node_id") != run.removed_id
        before = [b for b in tune_rows if b["trial_id"] == r["trial_id"] and b["node_id"] == run.removed_id]
        after = [a["epoch"] for a in resumed if a["trial_id"] == r["trial_id"]]
        # resumed from its last registered checkpoint: the epoch reported just before the kill may be re-run
        # (its checkpoint can still be in flight when the node dies), but never from epoch 1
        assert before and 1 < min(after) <= max(b["epoch"] for b in before) + 1, "resumed, not restarted from epoch 1"


def _assert_the_output_names_the_failed_trial(out: str, bad: pl.DataFrame) -> None:
    """stdout has one ``[<strategy> <fraction>] trial k/N FAILED`` line per errored trial, in its cell, and the
    closing summary counts it in that cell's ``trials (stopped/failed)`` column and nowhere else."""
    failed_lines = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed_lines) == bad.height, out[-2500:]
    for line, frac in zip(failed_lines, bad["train_fraction"].to_list(), strict=True):
        assert re.search(rf"\[{STRATEGY} {re.escape(f'{frac:g}')}\] trial \d+/{TRIALS} FAILED", line), line
    failed_per_fraction = {}
    for frac in FRACTIONS:  # the summary row: dataset strategy fraction images trials (stopped/failed) ...
        cells = rf"^ hyko2\s+{STRATEGY}\s+{re.escape(f'{frac:g}')}\s+\d+\s+{TRIALS} \(\d+/(\d+)\)"
        row = re.search(cells, out, re.MULTILINE)
        assert row, (frac, out[-2500:])
        failed_per_fraction[frac] = int(row.group(1))
    assert failed_per_fraction == {f: int((bad["train_fraction"] == f).sum()) for f in FRACTIONS}, out[-2500:]
