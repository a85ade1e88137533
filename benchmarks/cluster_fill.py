"""How full does a study keep a cluster? ``python -m benchmarks.cluster_fill``

A simulated cluster (``ray.cluster_utils.Cluster``: a 0-CPU head and 4 worker
nodes, each declaring 4 CPUs and 4 GPU slots; the GPUs are Ray's accounting only)
runs a study of 3 datasets x 3 strategies x 3 fractions through the real driver
(``study.orchestration.driver.run_pending_cells``: OptunaSearch + ASHA per cell, the real store).
The strategies are registered by this benchmark only: their trainables sleep
per epoch for a duration proportional to the cell's training pixels and the
strategy's cost, so cells differ in length as real ones do (each dataset's
synthetic images have their own size, in the proportions of the real images, and
the simulated strategies declare their ``relative_cost``, so the driver's
longest-first order sees what it would see in a real study). Each trial requests
one GPU slot.

Time scale: Ray starts one actor process per trial (~1-1.5 CPU-s each here), and
on a 2-core host simulating 16 slots those starts compete with the sleeping
trials for the same two cores; at ``--time-scale 1`` the simulated epochs
(0.07-5.5 s) are as short as that overhead, and the benchmark measures the host.
The overhead is paid once per trial, and real trials run up to 500 epochs, minutes
to hours each; so the default is 4 (trials of 0.3 s to 2.2 min, still far shorter
than real ones); ``--time-scale 1`` shows the overhead-bound case.

Printed for the concurrent driver (every cell in flight) and, in the same
run, for cells one at a time (``--max-concurrent-cells 1``):

- makespan: wall time of ``run_pending_cells``;
- GPU-slot busy fraction: sum over runs of (ended_at - started_at) x GPU share / (slots x makespan);
- ratio to the ideal lower bound max(total run-seconds x share / slots, the longest cell's critical path),
  a cell's critical path being its longest tuning run plus its longest final run (they cannot overlap).

Target: concurrent <= 1.25 x the bound.

``--deterministic`` also runs every cell in flight with ``--deterministic`` (proposals in waves of
``--search-batch``, ASHA decided in trial order, a trial that overtook a lower-index one at a rung paused
until it settles) and prints its makespan over the asynchronous mode's (target <= 1.25x). The simulated
trainables checkpoint every epoch, as the real loop does, so a paused trial resumes where it paused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._common import REPO_ROOT, machine_info, print_table, write_result

NODES, CPUS, GPUS = 4, 4, 4
DATASETS = ("hyko2", "hsidrive", "hcv2")
FRACTIONS = (0.25, 0.5, 1.0)
TRIALS, EPOCHS, SEEDS, GRACE = 4, 6, 2, 2
#: synthetic image size per dataset, in the proportions of the real images' pixels (HyKo2 254x510,
#: HSI-Drive 216x409, HCV2 at half resolution 711x944: 1.5 : 1 : 7.6), so the driver's own cost estimate
#: (training pixels x the strategy's relative cost) sees the differences a real study has
SIZES = {"hyko2": (16, 24), "hsidrive": (16, 16), "hcv2": (32, 88)}
#: simulated seconds per training pixel and epoch on one GPU (RU-Net full width, bf16), scaled down from
#: docs/performance.md so that the benchmark takes minutes, not hours (an HCV2 image: 0.14 s)
PER_PIXEL_S = 5e-5  # x TIME_SCALE
#: relative cost of the simulated strategies (RU-Net, HyperSL-RU-Net on 256 feature channels, a per-pixel head)
STRATEGY_COST = {"sim-runet": 1.0, "sim-hypersl-runet": 1.6, "sim-fc": 0.3}
N_TRAIN = 24  # synthetic training images per dataset
TIME_SCALE = 4.0


def _time_scale() -> float:
    """Read in the trial's process (set through the job's runtime_env by :func:`main`)."""
    return float(os.environ.get("HSISTUDY_SIM_TIME_SCALE", TIME_SCALE))


def _epoch_s(strategy: str, dataset: str, n_images: int) -> float:
    h, w = SIZES[dataset]
    return _time_scale() * STRATEGY_COST[strategy] * PER_PIXEL_S * h * w * n_images + 0.05


def _sim(strategy: str, config: dict[str, Any], data: Any) -> None:
    """A trainable that reports like the real loop (every epoch, best-val bookkeeping) and sleeps instead of
    training: val mIoU rises with epochs towards a ceiling set by the learning rate."""
    from ray import tune

    n_images = len(data.subset.names)
    epoch_s = _epoch_s(strategy, data.dataset, n_images)
    lr = float(config.get("lr", config.get("head_lr", 1e-3)))
    ceiling = 0.3 + 0.5 * math.exp(-abs(math.log10(lr) + 3.0))  # best near lr = 1e-3
    best, best_epoch, max_epochs = -1.0, 0, int(config["max_epochs"])
    t0 = time.perf_counter()
    start = 1
    if (ckpt := tune.get_checkpoint()) is not None:  # resumed after a pause: go on where it stopped
        with ckpt.as_directory() as d:
            start, best, best_epoch = json.loads((Path(d) / "state.json").read_text())
    for epoch in range(start, max_epochs + 1):
        time.sleep(epoch_s)
        val = ceiling * (1 - math.exp(-epoch / 3)) * (0.6 + 0.4 * min(1.0, n_images / N_TRAIN))
        if val > best:
            best, best_epoch = val, epoch
        metrics = {"epoch": epoch, "train_loss": 1 - val, "val_miou": val, "val_oa": val, "val_macc": val,
                   "val_macro_f1": val, "val_iou_per_class": [val], "best_val_miou": best, "best_epoch": best_epoch,
                   "is_last": epoch == max_epochs, "wall_s": time.perf_counter() - t0, "device_s": 0.0,
                   "device": "sim-gpu", "model_name": strategy, "n_params": 0}
        if epoch == max_epochs and config.get("final"):
            metrics.update(test_miou=best, test_oa=best, test_macc=best, test_macro_f1=best,
                           test_iou_per_class=[best])
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps([epoch + 1, best, best_epoch]))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def train_sim_runet(config: dict[str, Any], data: Any, *_: Any) -> None:
    _sim("sim-runet", config, data)


def train_sim_hypersl_runet(config: dict[str, Any], data: Any, *_: Any) -> None:
    _sim("sim-hypersl-runet", config, data)


def train_sim_fc(config: dict[str, Any], data: Any, *_: Any) -> None:
    _sim("sim-fc", config, data)


def register_sim_strategies() -> tuple[str, ...]:
    """Add the simulated strategies to the registry of this (driver) process; trials import them by path."""
    from study.strategies import STRATEGIES, Strategy

    for name, fn, space in (("sim-runet", "train_sim_runet", "indomain"),
                            ("sim-hypersl-runet", "train_sim_hypersl_runet", "indomain"),
                            ("sim-fc", "train_sim_fc", "indomain_fc")):
        STRATEGIES[name] = Strategy(name=name, description=f"simulated {name} (benchmark only)",
                                    trainable=f"benchmarks.cluster_fill:{fn}",
                                    search_space=f"search_spaces.{space}:SPACE", model_name=name,
                                    cpus_per_trial=1.0, gpus_per_trial=1.0, relative_cost=STRATEGY_COST[name])
    return ("sim-runet", "sim-hypersl-runet", "sim-fc")


def critical_paths(rows: Any) -> tuple[Any, Any]:
    """The runs with their length (``run_s``) and, per cell, its critical path (longest tuning run + longest
    final run, which cannot overlap), longest cell first: polars frames from trial/final rows."""
    import polars as pl

    runs = rows.with_columns(((pl.col("ended_at") - pl.col("started_at")).dt.total_microseconds() / 1e6)
                             .alias("run_s"))
    paths = runs.group_by("cell_id", "phase").agg(pl.col("run_s").max()).group_by("cell_id").agg(
        pl.col("run_s").sum().alias("critical")).sort("critical", descending=True)
    return runs, paths


def measure(rows: Any, makespan: float, slots: int) -> dict[str, Any]:
    """Busy fraction and lower bound from the runs' started_at/ended_at (polars frame of trial/final rows)."""
    runs, paths = critical_paths(rows)
    total = float(runs["run_s"].sum())  # every simulated trial holds one whole GPU slot
    longest = float(paths["critical"][0])
    bound = max(total / slots, longest)
    return {"makespan_s": round(makespan, 1), "run_s": round(total, 1),
            "busy_fraction": round(total / (slots * makespan), 3),
            "lower_bound_s": round(bound, 1), "ratio_to_bound": round(makespan / bound, 3),
            "longest_cell_s": round(longest, 1), "runs": runs.height}


def longest_cell_timeline(rows: Any, start: datetime) -> dict[str, float]:
    """Where the longest cell lost time: when its tuning started and ended, when its finals started and ended
    (seconds after the study started)."""
    import polars as pl

    runs, paths = critical_paths(rows)
    cell = runs.filter(pl.col("cell_id") == paths["cell_id"][0])

    def at(col: str, phase: str, how: str) -> float:
        part = cell.filter(pl.col("phase") == phase)[col]
        value = part.min() if how == "min" else part.max()
        return round((value - start).total_seconds(), 1)

    return {"longest_tune_start_s": at("started_at", "tune", "min"),
            "longest_tune_end_s": at("ended_at", "tune", "max"),
            "longest_final_start_s": at("started_at", "final", "min"),
            "longest_final_end_s": at("ended_at", "final", "max")}


def data_root(cache: Path) -> Path:
    """One folder with every dataset's synthetic files, each dataset at its own image size (:data:`SIZES`)."""
    from study.data.specs import get_spec
    from study.data.synthetic.generator import GeneratorConfig, ensure_default_dataset

    root = cache / "data-root"
    if not root.is_dir():
        root.mkdir(parents=True)
        for name, (h, w) in SIZES.items():
            spec = get_spec(name)
            made = ensure_default_dataset(spec, cache, GeneratorConfig(height=h, width=w, n_train=N_TRAIN,
                                                                       n_val=3, n_test=3))
            for split in spec.splits:
                (root / spec.file_name(split)).symlink_to(made / spec.file_name(split))
    return root


def run_mode(label: str, max_cells: int | None, cache: Path, out: Path, nodes: int = NODES,
             deterministic: bool = False, trials: int = TRIALS, search_batch: int | None = None) -> dict[str, Any]:
    import polars as pl

    from study.config import build_config
    from study.orchestration import check_inputs, run_pending_cells
    from study.store import read_store

    strategies = register_sim_strategies()
    results = out / label
    cfg = build_config("full", strategies=strategies, dataset=DATASETS, fractions=FRACTIONS, trials=trials,
                       epochs=EPOCHS, seeds=SEEDS, grace_period=GRACE, results=results, cache_dir=cache,
                       gpus="on", max_concurrent_cells=max_cells, width="tiny", data_root=data_root(cache),
                       deterministic=deterministic or None, search_batch=search_batch)
    preps = check_inputs(cfg, echo=lambda _: None)
    lines: list[str] = []
    t0, start = time.perf_counter(), datetime.now(UTC)
    failures = run_pending_cells(cfg, preps, echo=lines.append)
    makespan = time.perf_counter() - t0
    rows = read_store(results).filter(pl.col("row_kind").is_in(["trial", "final"]))
    figures = measure(rows, makespan, nodes * GPUS)
    figures.update(longest_cell_timeline(rows, start))
    figures.update(mode=label, cells=len(DATASETS) * len(strategies) * len(FRACTIONS), failures=failures,
                   time_scale=_time_scale())
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster_fill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-save", action="store_true", help="print only; do not write benchmarks/results/")
    p.add_argument("--skip-sequential", action="store_true", help="only the concurrent driver")
    p.add_argument("--max-concurrent-cells", type=int, default=None, metavar="N",
                   help="cap of the concurrent mode (default: the driver's own default)")
    p.add_argument("--nodes", type=int, default=NODES,
                   help=f"worker nodes of {GPUS} GPU slots each (default {NODES}); fewer make the slots, not the "
                   "longest cell, the bound, so the order in which cells start matters more")
    p.add_argument("--deterministic", action="store_true",
                   help="also run every cell in flight with --deterministic; prints its makespan over the "
                   "asynchronous mode's")
    p.add_argument("--trials", type=int, default=TRIALS, help=f"tuning trials per cell (default {TRIALS})")
    p.add_argument("--search-batch", type=int, default=None, metavar="N",
                   help="--deterministic's proposal wave (default: the study's, 4)")
    p.add_argument("--time-scale", type=float, default=TIME_SCALE,
                   help=f"multiplies every simulated epoch (default {TIME_SCALE}); larger values make Ray's "
                   "per-trial overhead (actor start, scheduling) a smaller share, as on a real cluster")
    args = p.parse_args(argv)
    os.environ["HSISTUDY_SIM_TIME_SCALE"] = str(args.time_scale)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.cluster_utils import Cluster

    from study.orchestration import quiet_ray_tune

    quiet_ray_tune()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=CPUS, num_gpus=GPUS)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT),
                                       "HSISTUDY_SIM_TIME_SCALE": str(args.time_scale)}})
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cluster-fill-") as tmp:
            out, cache = Path(tmp), Path(tmp) / "cache"
            rows.append(run_mode("concurrent", args.max_concurrent_cells, cache, out, args.nodes,
                                 trials=args.trials))
            if args.deterministic:
                rows.append(run_mode("deterministic", args.max_concurrent_cells, cache, out, args.nodes, True,
                                     args.trials, args.search_batch))
            if not args.skip_sequential:
                rows.append(run_mode("one cell at a time", 1, cache, out, args.nodes, trials=args.trials))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print_table("cluster fill", rows, ["mode", "cells", "runs", "makespan_s", "run_s", "busy_fraction", "lower_bound_s",
                                       "ratio_to_bound", "longest_cell_s"])
    print_table("the longest cell (seconds after the study started)", rows,
                ["mode", "longest_tune_start_s", "longest_tune_end_s", "longest_final_start_s", "longest_final_end_s"])
    conc = rows[0]
    verdict = "meets" if conc["ratio_to_bound"] <= 1.25 else "misses"
    print(f"concurrent driver: {conc['ratio_to_bound']:.2f} x the lower bound ({verdict} the <= 1.25 target); "
          f"{args.nodes} nodes x {GPUS} GPU slots, time scale {args.time_scale:g}")
    by_mode = {r["mode"]: r for r in rows}
    if "deterministic" in by_mode:
        ratio = by_mode["deterministic"]["makespan_s"] / conc["makespan_s"]
        print(f"deterministic / asynchronous makespan: {ratio:.2f} x "
              f"({'meets' if ratio <= 1.25 else 'misses'} the <= 1.25 target)")
    if "one cell at a time" in by_mode:
        seq = by_mode["one cell at a time"]["makespan_s"]
        print(f"speed-up over one cell at a time: {seq / conc['makespan_s']:.1f} x")
    if not args.no_save:
        write_result("cluster_fill", {"machine": machine_info(), "nodes": args.nodes, "gpu_slots_per_node": GPUS,
                                      "trials": args.trials, "search_batch": args.search_batch, "epochs": EPOCHS,
                                      "seeds": SEEDS, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
