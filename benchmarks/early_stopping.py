"""Early stopping: the same search with ASHA vs without (FIFO: every trial runs to max epochs).

Why: ASHA is the study's main compute saver; it is only worth it if the
configuration it picks is (nearly) as good as the one a full-budget search
picks. Both runs go through ``study.search.tuning.tune_cell`` (OptunaSearch with the
same seed, same N trials, same max epochs, same data, 2 concurrent trials of
1 CPU). "FIFO" is ASHA with grace_period = max_epochs, which never stops a
trial early, so everything else (searcher, callbacks, checkpoints) is equal.

With N <= 10 trials Optuna's TPE is still in its random start-up phase, so both
runs propose the *same* configurations (checked: ``same_configs``). The gap is
measured as regret: the full-budget val mIoU of the config ASHA chose (looked up
in the FIFO run) vs the best full-budget val mIoU. Target: >= 50 % of
trial-epochs saved with the chosen config within 1 mIoU point.

``--deterministic`` runs both searches a second time with ``--deterministic``'s searcher and scheduler
(proposals in waves of 2, ASHA decided in trial order: ``study.search.deterministic``) and prints
saved compute, regret and wall time of both modes side by side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    add_mode_args,
    apply_threads,
    finish,
    machine_info,
    print_table,
    quiet,
    resolve_quick,
    target,
)

SEARCHED = ("lr", "weight_decay", "dropout")
#: (H, W, train/val/test images, RU-Net width, trials, max epochs, grace period, reduction factor)
QUICK = (64, 128, (12, 4, 4), "small", 8, 12, 1, 2)
FULL = (128, 256, (24, 6, 6), "small", 10, 30, 3, 2)


def config_key(config: dict[str, Any]) -> str:
    """Identity of a searched configuration (rounded, so float printing cannot split equal configs)."""
    return json.dumps({k: round(float(config[k]), 12) for k in SEARCHED if k in config}, sort_keys=True)


def summarize(logs: list[Any]) -> list[dict[str, Any]]:
    """TrialLogs -> plain rows: config key, epochs run, best val mIoU, status."""
    out = []
    for log in logs:
        best = log.best
        out.append({"key": config_key(log.config), "epochs": int(log.results[-1]["epoch"]) if log.results else 0,
                    "best_val": None if best is None else float(best["val_miou"]), "status": log.status})
    return out


def compare(asha: list[dict[str, Any]], fifo: list[dict[str, Any]]) -> dict[str, Any]:
    """Compute saved and mIoU regret of ASHA's choice (rows from :func:`summarize`; mIoU in [0, 1])."""
    e_asha, e_fifo = sum(r["epochs"] for r in asha), sum(r["epochs"] for r in fifo)
    scored_a = [r for r in asha if r["best_val"] is not None]
    scored_f = [r for r in fifo if r["best_val"] is not None]
    best_a = max(scored_a, key=lambda r: r["best_val"])
    best_f = max(scored_f, key=lambda r: r["best_val"])
    full_of = {r["key"]: r["best_val"] for r in scored_f}
    chosen_full = full_of.get(best_a["key"])
    return {
        "trial_epochs_asha": e_asha,
        "trial_epochs_fifo": e_fifo,
        "saved_pct": round(100.0 * (1 - e_asha / e_fifo), 1),
        "same_configs": sorted(r["key"] for r in asha) == sorted(r["key"] for r in fifo),
        "best_val_miou_asha": round(best_a["best_val"], 4),
        "best_val_miou_fifo": round(best_f["best_val"], 4),
        "best_vs_best_gap_points": round(100.0 * (best_f["best_val"] - best_a["best_val"]), 2),
        "asha_choice_full_budget_miou": None if chosen_full is None else round(chosen_full, 4),
        "regret_points": None if chosen_full is None else round(100.0 * (best_f["best_val"] - chosen_full), 2),
        "same_best_config": best_a["key"] == best_f["key"],
    }


def _setup(size: tuple, results: Path) -> tuple[Any, Any, dict[str, Any], Any]:
    """Data of one cell (prepared like the driver does) -> (study config, trainable, constants, searched space)."""
    from ray import tune

    from study.config import build_config
    from study.data.bundle import make_bundle
    from study.data.synthetic.generator import GeneratorConfig
    from study.orchestration import cell_id, check_inputs, trial_constants
    from study.search import replay_or_train
    from study.strategies import get_strategy

    h, w, (ntr, nva, nte), width, trials, epochs, _grace, _rf = size
    cfg = build_config("smoke", strategies=("indomain",), dataset="hyko2", fractions=(1.0,), trials=trials,
                       epochs=epochs, seeds=1, grace_period=1, width=width, batch_size=4, results=results,
                       num_cpus=2, synthetic=GeneratorConfig(height=h, width=w, n_train=ntr, n_val=nva, n_test=nte))
    prep = check_inputs(cfg, echo=quiet)["hyko2"]
    strategy, subset = get_strategy("indomain"), prep.subsets[1.0]
    bundle = make_bundle(prep.spec, prep.splits, subset, prep.source)
    res = strategy.resources(False)
    trainable = tune.with_resources(
        tune.with_parameters(replay_or_train, data=bundle, replay={}, strategy=strategy), res)
    # the driver's own per-trial constants, so trials are configured exactly as in a study
    constants = trial_constants(cfg, len(subset.names), prep.spec, cell_id(cfg, "indomain", subset), res["cpu"])
    return cfg, trainable, constants, strategy.load_search_space()


def run_search(trainable: Any, constants: dict, space: dict, size: tuple, grace: int, storage: Path,
               name: str, deterministic: bool = False) -> tuple[float, list[dict[str, Any]]]:
    """One search through ``tune_cell``; returns its wall seconds and summarized trials."""
    from study.search.deterministic import ordered_search
    from study.search.tuning import Budget, tune_cell

    _h, _w, _n, _width, trials, epochs, _g, rf = size
    budget = Budget(trials=trials, epochs=epochs, grace_period=grace, reduction_factor=rf, seeds=1,
                    max_concurrent=2, tune_seed=0, deterministic=deterministic)
    # one search key for the FIFO and the ASHA run: the deterministic searcher seeds trial i from (tune seed,
    # search name, i), and the comparison needs both runs to train the same configurations
    search = ordered_search(space, budget, "early-stopping", None, None, {}) if deterministic else None
    t0 = time.perf_counter()
    logs = tune_cell(trainable, space, dict(constants), budget, storage, name, None, name, quiet, search=search)
    return time.perf_counter() - t0, summarize(logs)


def _row(run: str, grace: int, rf: int, trials: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    scored = [r["best_val"] for r in trials if r["best_val"] is not None]
    return {"run": run, "grace": grace, "rf": rf, "trials": len(trials),
            "trial_epochs": sum(r["epochs"] for r in trials),
            "stopped_early": sum(r["status"] == "stopped_early" for r in trials), "wall_s": wall_s,
            "best_val_miou": round(max(scored), 4) if scored else None}


def _compare_runs(trainable: Any, constants: dict, space: dict, size: tuple, d: str,
                  deterministic: bool) -> tuple[dict[str, Any], list[dict[str, Any]], list, list]:
    """FIFO then ASHA in one mode -> (comparison, table rows, ASHA trials, FIFO trials)."""
    tag = "det-" if deterministic else ""
    # FIFO first: the cold-start cost of Ray's first Tuner.fit then counts against the baseline side;
    # a warm-up fit would cost a minute of budget, so the bias is stated instead.
    fifo_s, fifo = run_search(trainable, constants, space, size, size[5], Path(d) / "tune", f"{tag}fifo",
                              deterministic)
    asha_s, asha = run_search(trainable, constants, space, size, size[6], Path(d) / "tune", f"{tag}asha",
                              deterministic)
    cmp = compare(asha, fifo)
    cmp.update(wall_s_asha=round(asha_s, 1), wall_s_fifo=round(fifo_s, 1),
               wall_saved_pct=round(100.0 * (1 - asha_s / fifo_s), 1))
    mode = "deterministic" if deterministic else "async"
    rows = [{"mode": mode, **_row("ASHA", size[6], size[7], asha, cmp["wall_s_asha"])},
            {"mode": mode, **_row("FIFO", size[5], size[7], fifo, cmp["wall_s_fifo"])}]
    return cmp, rows, asha, fifo


def run(quick: bool, save: bool = True, deterministic: bool = False) -> dict[str, Any]:
    import ray

    from study.orchestration import init_ray, quiet_ray_tune

    started, info = time.perf_counter(), machine_info()
    size = QUICK if quick else FULL
    quiet_ray_tune()
    modes = (False, True) if deterministic else (False,)
    with tempfile.TemporaryDirectory(prefix="bench-es-") as d:
        cfg, trainable, constants, space = _setup(size, Path(d) / "res")
        init_ray(cfg)
        try:
            runs = [_compare_runs(trainable, constants, space, size, d, det) for det in modes]
        finally:
            ray.shutdown()
    cmp, rows, asha, fifo = runs[0]
    rows = [r for run_ in runs for r in run_[1]]
    print_table(f"early stopping: {size[4]} trials x <= {size[5]} epochs, RU-Net {size[3]} on {size[0]}x{size[1]} "
                f"synthetic hyko2 ({size[2][0]} train images), 2 concurrent trials", rows,
                ["mode", "run", "grace", "rf", "trials", "trial_epochs", "stopped_early", "wall_s", "best_val_miou"])
    for det, (c, *_rest) in zip(modes, runs, strict=True):
        print(f"{'deterministic' if det else 'async'}: compute saved {c['saved_pct']} % of trial-epochs "
              f"({c['wall_saved_pct']} % of wall time); same configs both runs: {c['same_configs']}; ASHA's "
              f"choice trained fully: {c['asha_choice_full_budget_miou']} vs best {c['best_val_miou_fifo']} "
              f"(regret {c['regret_points']} mIoU points; best-vs-best gap {c['best_vs_best_gap_points']})")
    regret = cmp["regret_points"] if cmp["regret_points"] is not None else cmp["best_vs_best_gap_points"]
    met = cmp["saved_pct"] >= 50.0 and regret <= 1.0
    targets = [target("ASHA compute saved, best config within 1 mIoU point",
                      f"{cmp['saved_pct']} % saved, regret {regret} points", ">= 50 % and <= 1 point", met,
                      f"{len(asha)} trials; wall time saved {cmp['wall_saved_pct']} %; "
                      f"same configs {cmp['same_configs']}")]
    extra = {"deterministic": runs[1][0]} if deterministic else {}
    return finish("early_stopping", {"quick": quick, "size": size, "result": cmp, "rows": rows,
                                     "asha_trials": asha, "fifo_trials": fifo, "targets": targets, **extra},
                  save, started, info)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.early_stopping", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(p)
    p.add_argument("--deterministic", action="store_true",
                   help="also run both searches with --deterministic's searcher and scheduler, side by side")
    args = p.parse_args(argv)
    # --threads applies to the driver process only: each trial sets its own threads from its config
    apply_threads(args.threads)
    run(resolve_quick(args.quick), save=not args.no_save, deterministic=args.deterministic)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
