"""Orchestration overhead: one cell through the real driver (Ray Tune + OptunaSearch + ASHA) vs a plain loop.

Why: Ray, Optuna, checkpoint hand-over and the result store cost fixed seconds
per trial and per cell; the study is only worth distributing if that cost is
small next to training. Both sides run the *same* trial configs (read back
from the store), the same epochs (ASHA is neutralised with grace_period =
max_epochs), the same data and one trial at a time with one torch thread each.

    overhead % = (tune_wall - direct_wall) / direct_wall

Ray's start-up is timed separately: a study pays it once, not per cell.
Target: <= 5 % for cells whose trials run >= 60 s, extrapolated from a fit
``overhead_s = n_trials * a + train_s * p`` when 60-s trials do not fit the budget.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    finish,
    machine_info,
    print_table,
    quiet,
    standard_main,
    target,
)

#: (name, image H, W, train/val/test images, RU-Net width, trials, epochs, final seeds)
#: The smoke scale runs first and absorbs Ray's cold start; the fit uses the later (warm) scales, which differ
#: only in epochs, so fixed and per-epoch costs separate.
SCALES_QUICK: list[tuple[str, int, int, tuple[int, int, int], str, int, int, int]] = [
    ("smoke", 32, 48, (6, 3, 3), "tiny", 2, 2, 1),
    ("short", 128, 256, (16, 4, 4), "small", 2, 2, 1),
    ("long", 128, 256, (16, 4, 4), "small", 2, 6, 1),
]
SCALES_FULL = [*SCALES_QUICK, ("60s", 128, 256, (16, 4, 4), "small", 2, 26, 1)]


def overhead_pct(tune_s: float, direct_s: float) -> float:
    """Relative overhead of the orchestrated run over the plain loop, in percent."""
    return 100.0 * (tune_s - direct_s) / direct_s


def extrapolate(points: list[dict[str, float]], trial_s: float = 60.0) -> dict[str, Any]:
    """Fit ``overhead_s = n_trials * a + direct_s * p`` and predict the overhead % for ``trial_s``-second trials.

    ``a`` is the fixed cost per trial (Tune scheduling, worker hand-over, store
    writes), ``p`` the proportional cost (reporting and checkpoints per epoch).
    With one point, or a fit giving a negative part (noise), everything is
    attributed to the fixed part measured at the longest trials (stated in
    ``method``). ``upper_bound_pct`` is the other extreme: all overhead
    proportional, i.e. the overhead % measured at the longest trials.
    """
    pts = sorted(points, key=lambda q: q["direct_s"] / q["n_trials"])
    longest = pts[-1]
    a_only = max(0.0, longest["overhead_s"] / longest["n_trials"])
    bound = round(max(0.0, 100.0 * longest["overhead_s"] / longest["direct_s"]), 2)
    fit = None
    if len(pts) >= 2:
        (n1, d1, o1), (n2, d2, o2) = ((q["n_trials"], q["direct_s"], q["overhead_s"]) for q in (pts[0], longest))
        det = n1 * d2 - n2 * d1
        if abs(det) > 1e-9:
            a, p = (o1 * d2 - o2 * d1) / det, (n1 * o2 - n2 * o1) / det
            if a >= 0 and p >= 0:
                fit = (a, p)
    if fit is None:
        return {"method": "all overhead treated as a fixed per-trial cost, from the longest trials",
                "fixed_s_per_trial": round(a_only, 2), "proportional_pct": 0.0,
                "pct_at_trial_s": round(100.0 * a_only / trial_s, 2), "trial_s": trial_s, "upper_bound_pct": bound}
    a, p = fit
    return {"method": "two-point fit of overhead_s = n_trials*a + direct_s*p",
            "fixed_s_per_trial": round(a, 2), "proportional_pct": round(100.0 * p, 2),
            "pct_at_trial_s": round(100.0 * (a / trial_s + p), 2), "trial_s": trial_s, "upper_bound_pct": bound}


def study_config(scale: tuple, results: Path) -> Any:
    """The StudyConfig of one scale: one indomain cell at fraction 1.0 with ASHA neutralised."""
    from study.config import build_config
    from study.data.synthetic.generator import GeneratorConfig

    name, h, w, (ntr, nva, nte), width, trials, epochs, seeds = scale
    return build_config(
        "smoke", strategies=("indomain",), dataset="hyko2", fractions=(1.0,), trials=trials, epochs=epochs,
        seeds=seeds, grace_period=epochs, width=width, batch_size=4, results=results, max_concurrent=1,
        num_cpus=2, synthetic=GeneratorConfig(height=h, width=w, n_train=ntr, n_val=nva, n_test=nte),
    )


def run_tune_side(cfg: Any) -> dict[str, Any]:
    """Prepare (not timed: the direct side needs it too), start Ray (timed apart), run the cell (timed)."""
    import ray

    from study.orchestration import cell_id, check_inputs, init_ray
    from study.orchestration.driver import run_cell
    from study.store import read_table
    from study.strategies import get_strategy

    prep = check_inputs(cfg, echo=quiet)["hyko2"]
    t0 = time.perf_counter()
    fresh = not ray.is_initialized()
    init_ray(cfg)
    ray_init_s = time.perf_counter() - t0 if fresh else 0.0
    subset = prep.subsets[1.0]
    cid = cell_id(cfg, "indomain", subset)
    t0 = time.perf_counter()
    run_cell(cfg, prep, get_strategy("indomain"), subset, cid, False, quiet)
    tune_s = time.perf_counter() - t0
    rows = [r for r in read_table(Path(cfg.runtime.results)).to_pylist() if r["row_kind"] in ("trial", "final")]
    configs = [json.loads(r["config_json"]) for r in rows]
    return {"prep": prep, "subset": subset, "ray_init_s": ray_init_s, "tune_s": tune_s, "configs": configs,
            "tune_epochs": sum(int(r["epochs_run"] or 0) for r in rows),
            "status": [r["status"] for r in rows]}


def run_direct_side(prep: Any, subset: Any, configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The same configs through ``train_indomain`` in a plain loop (no-op report), bundle loading included."""
    import torch

    from study.data.bundle import make_bundle
    from trainables.indomain import train_indomain

    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    bundle = make_bundle(prep.spec, prep.splits, subset, prep.source)
    epochs, per_trial = 0, []
    try:
        for cfg in configs:
            t1 = time.perf_counter()
            last = train_indomain(dict(cfg), bundle, report=lambda *a, **k: None, get_checkpoint=None)
            per_trial.append(time.perf_counter() - t1)
            epochs += int(last["epoch"])
    finally:
        torch.set_num_threads(threads)  # train_indomain set 1 thread, as Ray gives each 1-CPU trial
    return {"direct_s": time.perf_counter() - t0, "direct_epochs": epochs, "trial_s": per_trial}


def measure_scale(scale: tuple, workdir: Path) -> dict[str, Any]:
    """Both sides of one scale; returns the row of the table."""
    cfg = study_config(scale, workdir / scale[0])
    tune = run_tune_side(cfg)
    direct = run_direct_side(tune["prep"], tune["subset"], tune["configs"])
    n = len(tune["configs"])
    return {
        "scale": scale[0], "image": f"{scale[1]}x{scale[2]}", "train_images": scale[3][0], "width": scale[4],
        "n_trials": n, "epochs": scale[6], "tune_epochs": tune["tune_epochs"], "direct_epochs": direct["direct_epochs"],
        "ray_init_s": round(tune["ray_init_s"], 2), "tune_s": round(tune["tune_s"], 2),
        "direct_s": round(direct["direct_s"], 2), "mean_trial_s": round(direct["direct_s"] / n, 2),
        "overhead_s": round(tune["tune_s"] - direct["direct_s"], 2),
        "overhead_pct": round(overhead_pct(tune["tune_s"], direct["direct_s"]), 1),
        "overhead_pct_incl_ray_init": round(overhead_pct(tune["tune_s"] + tune["ray_init_s"], direct["direct_s"]), 1),
        "statuses": tune["status"],
    }


def run(quick: bool, save: bool = True) -> dict[str, Any]:
    import ray

    from study.orchestration import quiet_ray_tune

    started, info = time.perf_counter(), machine_info()
    quiet_ray_tune()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as d:
        try:
            for scale in SCALES_QUICK if quick else SCALES_FULL:
                rows.append(measure_scale(scale, Path(d)))
                print(f"  {scale[0]}: tune {rows[-1]['tune_s']} s vs direct {rows[-1]['direct_s']} s", flush=True)
        finally:
            ray.shutdown()
    print_table("orchestration overhead: one indomain cell (tune + final seeds), 1 trial at a time, 1 thread each",
                rows, ["scale", "image", "width", "n_trials", "epochs", "tune_epochs", "direct_epochs", "mean_trial_s",
                       "direct_s", "tune_s", "overhead_s", "overhead_pct", "ray_init_s", "overhead_pct_incl_ray_init"])
    warm = rows[1:] if len(rows) > 2 else rows  # the first scale paid Ray's cold start
    ext = extrapolate([{k: float(r[k]) for k in ("n_trials", "direct_s", "overhead_s")} for r in warm])
    print(f"extrapolated to 60-s trials: {ext['pct_at_trial_s']} % ({ext['method']} over "
          f"{', '.join(r['scale'] for r in warm)}: {ext['fixed_s_per_trial']} s fixed per trial + "
          f"{ext['proportional_pct']} % proportional); if all overhead were proportional: {ext['upper_bound_pct']} %")
    longest = max(rows, key=lambda r: r["mean_trial_s"])
    measured_60 = longest["mean_trial_s"] >= 60
    value = longest["overhead_pct"] if measured_60 else ext["pct_at_trial_s"]
    note = (f"measured at {longest['mean_trial_s']} s trials" if measured_60 else
            f"extrapolated: longest trials measured here ran {longest['mean_trial_s']} s "
            f"({longest['overhead_pct']} % overhead there); 60-s trials do not fit the CPU budget; "
            f"{ext['method']}; noise on this shared host is several % of a run")
    targets = [target("orchestration overhead at >= 60-s trials", f"{value} %", "<= 5 %", value <= 5.0, note),
               target("orchestration overhead at smoke scale (reported)", f"{rows[0]['overhead_pct']} %",
                      "report", None, "no target; fixed per-trial costs dominate tiny trials")]
    return finish("orchestration", {"quick": quick, "rows": rows, "extrapolation": ext, "targets": targets},
                  save, started, info)


def main(argv: list[str] | None = None) -> int:
    # --threads applies to the driver process only: each trial sets its own threads from its config
    return standard_main("orchestration", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
