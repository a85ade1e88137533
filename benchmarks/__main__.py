"""``python -m benchmarks``: every benchmark at its CPU size (<= 15 minutes on 2 cores), then a summary of targets.

Each benchmark runs in its own process: a fresh process gives each its own
peak-memory figures and torch thread setting, a crash or overrun in one cannot
take the others down, and a time budget per benchmark can be enforced (SIGINT,
so Ray shuts down cleanly, then SIGKILL of that process group only).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from benchmarks._common import RESULTS_DIR, machine_info, print_table, verdict, write_result

#: (module, time budget in seconds at the quick size); budgets sum to 1,010 s, a quiet-host run takes ~9 min
BENCHMARKS: tuple[tuple[str, int], ...] = (
    ("feature_cache", 60),
    ("data_loading", 150),
    ("throughput", 270),
    ("feature_export", 150),
    ("early_stopping", 180),
    ("orchestration", 200),
)


def run_one(name: str, extra: list[str], budget_s: int) -> dict[str, Any]:
    """Run ``python -m benchmarks.<name>`` within ``budget_s``; returns its JSON result (or the failure)."""
    out = RESULTS_DIR / f"{name}.json"
    t0 = time.time()
    print(f"\n######## benchmarks.{name} (budget {budget_s} s)", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", *extra], start_new_session=True)
    status = "ok"
    try:
        rc = proc.wait(timeout=budget_s)
        if rc != 0:
            status = f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        status = f"over budget: stopped after {budget_s} s"
        _stop(proc)
    except KeyboardInterrupt:  # the child is in its own session: pass the Ctrl-C on
        _stop(proc)
        raise
    wall = time.time() - t0
    result: dict[str, Any] = {}
    if status == "ok" and out.is_file() and out.stat().st_mtime >= t0:
        result = json.loads(out.read_text())
    elif status == "ok":
        status = "failed (no result file)"
    return {"benchmark": name, "status": status, "wall_s": round(wall, 1), "budget_s": budget_s,
            "targets": result.get("targets", [])}


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT (so ``finally: ray.shutdown()`` runs), then SIGKILL of the process group this module started."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    names = [n for n, _ in BENCHMARKS]
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help=f"comma list of: {', '.join(names)} (default: all)")
    p.add_argument("--full", action="store_true", help="the larger sizes (no time budgets; for a GPU machine)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per benchmark (default 1 on CPU)")
    args = p.parse_args(argv)
    chosen = names if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    extra = ["--full" if args.full else "--quick"] + ([] if args.threads is None else ["--threads", str(args.threads)])
    info, t0 = machine_info(), time.perf_counter()
    budgets = dict(BENCHMARKS)
    runs = [run_one(n, extra, 6 * 3600 if args.full else budgets[n]) for n in chosen]
    total = time.perf_counter() - t0

    print_table("benchmarks run", runs, ["benchmark", "status", "wall_s", "budget_s"])
    lines = [{"benchmark": r["benchmark"], "target": t["name"], "value": t["value"], "goal": t["target"],
              "verdict": verdict(t["met"], t["target"])} for r in runs for t in r["targets"]]
    print_table("targets", lines, ["benchmark", "target", "value", "goal", "verdict"])
    met = sum(t["verdict"] == "met" for t in lines)
    missed = sum(t["verdict"] == "NOT met" for t in lines)
    unmeasurable = sum(t["verdict"] == "not measurable here" for t in lines)
    print(f"\n{met} target(s) met, {missed} not met, {unmeasurable} not measurable here (no GPU); "
          f"total {total / 60:.1f} min (load average now {', '.join(f'{v:.2f}' for v in os.getloadavg())})")
    threads = args.threads if args.threads is not None else "default (1 on CPU; see each benchmark JSON)"
    write_result("summary", {"machine": {**info, "load_average_end": [round(v, 2) for v in os.getloadavg()],
                                         "benchmark_torch_threads": threads},
                             "total_s": round(total, 1), "runs": runs, "targets": lines})
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
