"""Study analysis on a result-store frame: polars + numpy only (no torch, no Ray).

Everything the report says is computed here, from the rows of
:data:`study.store.results.RESULT_SCHEMA`, so the numbers can be re-derived on a
laptop without the training stack. Metric values stay fractions in [0, 1], as
in the store; the presentation layer (plots, report, headline sentences)
turns them into percentages.

Statistics, and why:

- **Bootstrap CI over seeds** (seeded percentile bootstrap of the mean): the
  only source of spread within a cell is the training seed; with 2-5 seeds a
  t-interval leans on a normality assumption we cannot check. With one seed
  there is no spread to resample, so the CI is ``[mean, mean]`` and flagged.
- **Paired differences** by ``(seed, subset_hash)``: strategies trained on the
  same subset with the same seed share most of their noise, so pairing removes
  it. The p-value is an **exact sign-flip permutation test** of the mean
  difference (no distributional assumption; scipy is not a dependency), Holm-
  corrected across the fractions of one (dataset, strategy) curve because a
  reader scans the whole curve for "significant" points.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import polars as pl

from study.report.accounting import compute_accounting
from study.store import results
from study.strategies import baseline_strategy

KEYS = ["dataset", "strategy", "train_fraction"]
BASELINE = baseline_strategy()  # the registry entry marked ``baseline``
#: scalar test metrics (the per-class list is drawn apart)
TEST_METRICS = tuple(m for m in results.TEST_METRICS if m != "test_iou_per_class")
#: hyperparameter columns of the store (their schema order is the order the plots show them)
HYPERPARAMETERS = results.HYPERPARAMETERS
N_BOOTSTRAP = 10_000
#: above this many pairs the sign-flip test samples flips instead of enumerating 2**n of them
EXACT_SIGN_FLIP_MAX = 16


# --------------------------------------------------------------------------- statistics


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, level: float = 0.95, n_resamples: int = N_BOOTSTRAP,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded, so a report is reproducible byte for byte).

    One value gives ``(v, v)``: there is nothing to resample, and callers flag it.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def sign_flip_p(diffs: Sequence[float] | np.ndarray, *, n_resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of "mean difference = 0" by flipping the signs of paired differences.

    Exact (all ``2**n`` sign patterns) up to :data:`EXACT_SIGN_FLIP_MAX` pairs,
    else a seeded Monte-Carlo estimate. With n pairs the smallest possible
    exact p is ``2 / 2**n`` (0.25 for 3 pairs): few seeds cannot be significant.
    """
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    observed = abs(d.sum())
    if observed == 0.0:
        return 1.0
    if d.size <= EXACT_SIGN_FLIP_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        stats = np.abs(signs @ d)
        # tolerance: patterns that tie the observed sum up to float rounding count as "as extreme"
        return float(np.mean(stats >= observed * (1.0 - 1e-9)))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_resamples, d.size))
    hits = np.sum(np.abs(signs @ d) >= observed * (1.0 - 1e-9))
    return float((hits + 1) / (n_resamples + 1))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values; None/NaN entries stay None and do not count in m."""
    idx = [i for i, p in enumerate(p_values) if p is not None and np.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


# --------------------------------------------------------------------------- frames


def final_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Re-trained, test-evaluated runs (one per seed): the only rows a test score may come from."""
    return df.filter((pl.col("row_kind") == "final") & pl.col("test_miou").is_not_null()
                     & pl.col("test_miou").is_not_nan())


def cell_summary(df: pl.DataFrame, *, n_resamples: int = N_BOOTSTRAP) -> pl.DataFrame:
    """Per cell: images, subset, seeds, mean/std of the test metrics, bootstrap CI of mean mIoU, best val mIoU,
    and, for tuned cells, the published recipe's val mIoU (its enqueued trial) and what tuning added to it."""
    # in seed order: std and the bootstrap sum a cell's values in row order, and a store's rows come in the order
    # its parts were written (two identical studies would differ in the last digit of a std)
    finals = final_rows(df).sort([*KEYS, "seed", "trial_id"])
    if finals.is_empty():
        return pl.DataFrame(schema={k: df.schema[k] for k in KEYS})
    aggs = [pl.col("n_train_images").max().alias("n_train_images"),
            pl.col("subset_hash").unique().sort().str.join(",").alias("subset_hash"),
            pl.len().cast(pl.Int64).alias("seeds"),
            pl.col("test_miou").alias("_values")]
    for m in TEST_METRICS:
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std().alias(f"{m}_std")]
    out = finals.group_by(KEYS).agg(aggs).sort(KEYS)
    cis = [bootstrap_ci(v, n_resamples=n_resamples) for v in out["_values"].to_list()]
    out = out.drop("_values").with_columns(
        pl.Series("test_miou_ci_low", [c[0] for c in cis], dtype=pl.Float64),
        pl.Series("test_miou_ci_high", [c[1] for c in cis], dtype=pl.Float64),
        (pl.col("seeds") < 2).alias("ci_degenerate"),
    )
    trial_rows = df.filter(pl.col("row_kind") == "trial")
    is_recipe = (pl.col("protocol") == "recipe") if "protocol" in df.columns else pl.lit(False)
    trials = trial_rows.group_by(KEYS).agg(
        pl.col("val_miou").max().alias("best_val_miou"),
        pl.col("val_miou").filter(is_recipe).max().alias("recipe_val_miou"))
    out = out.join(trials, on=KEYS, how="left").sort(KEYS).with_columns(
        (pl.col("best_val_miou") - pl.col("recipe_val_miou")).alias("tuning_gain"))
    first = [*KEYS, "n_train_images", "subset_hash", "seeds", "test_miou_mean", "test_miou_std", "test_miou_ci_low",
             "test_miou_ci_high", "ci_degenerate"]
    return out.select(first + [c for c in out.columns if c not in first])


def paired_differences(df: pl.DataFrame, baseline: str = BASELINE, *,
                       n_resamples: int = N_BOOTSTRAP) -> pl.DataFrame:
    """Per (dataset, strategy != baseline, fraction): test-mIoU differences to the baseline paired by seed+subset.

    Columns: n_pairs, mean_diff, ci_low/ci_high (bootstrap of the mean difference), p_value (exact
    sign-flip), p_holm (Holm across fractions within dataset+strategy). No pairs: n_pairs=0, nulls.
    """
    runs = final_rows(df).group_by([*KEYS, "seed", "subset_hash"]).agg(pl.col("test_miou").mean())
    base = runs.filter(pl.col("strategy") == baseline).select(
        "dataset", "train_fraction", "seed", "subset_hash", pl.col("test_miou").alias("_base"))
    other = runs.filter(pl.col("strategy") != baseline)
    # in seed order: the bootstrap resamples the differences by position (the same table from the same store)
    joined = other.join(base, on=["dataset", "train_fraction", "seed", "subset_hash"], how="left").sort(
        [*KEYS, "seed", "subset_hash"])
    grouped = joined.group_by(KEYS, maintain_order=True).agg(
        (pl.col("test_miou") - pl.col("_base")).drop_nulls().alias("_d"),
        pl.col("test_miou").mean().alias("strategy_miou"),
    ).sort(KEYS)
    records = []
    for row in grouped.iter_rows(named=True):
        d = np.asarray(row.pop("_d"), dtype=np.float64)
        lo, hi = bootstrap_ci(d, n_resamples=n_resamples) if d.size else (None, None)
        records.append({**row, "baseline": baseline, "n_pairs": int(d.size),
                        "mean_diff": float(d.mean()) if d.size else None, "ci_low": lo, "ci_high": hi,
                        "p_value": sign_flip_p(d) if d.size else None})
    schema = {"dataset": pl.String, "strategy": pl.String, "train_fraction": pl.Float64,
              "strategy_miou": pl.Float64, "baseline": pl.String, "n_pairs": pl.Int64, "mean_diff": pl.Float64,
              "ci_low": pl.Float64, "ci_high": pl.Float64, "p_value": pl.Float64}
    out = pl.DataFrame(records, schema=schema)
    parts = [p.with_columns(pl.Series("p_holm", holm(p["p_value"].to_list()), dtype=pl.Float64))
             for p in out.partition_by(["dataset", "strategy"], maintain_order=True)]
    return pl.concat(parts).sort(KEYS) if parts else out.with_columns(pl.lit(None, pl.Float64).alias("p_holm"))


def label_savings(df: pl.DataFrame, baseline: str = BASELINE, *, cells: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per (dataset, strategy): the smallest fraction whose mean test mIoU reaches the baseline's at its largest.

    "Reaches" compares means (``>=``), not CIs: it answers "how many labels buy the baseline's score",
    and the paired differences say how sure we are. ``label_factor`` = baseline fraction / reached
    fraction (10.0: ten times fewer labels). Null when never reached or the baseline is missing.
    """
    cells = cell_summary(df) if cells is None else cells
    records = []
    for (dataset,), part in cells.group_by(["dataset"], maintain_order=True):
        base = part.filter(pl.col("strategy") == baseline).sort("train_fraction")
        target_f = base["train_fraction"][-1] if len(base) else None
        target = base["test_miou_mean"][-1] if len(base) else None
        for (strategy,), s in part.sort("train_fraction").group_by(["strategy"], maintain_order=True):
            hit = s.filter(pl.col("test_miou_mean") >= target - 1e-12) if target is not None else s.clear()
            reached = hit.row(0, named=True) if len(hit) else None
            records.append({
                "dataset": dataset, "strategy": strategy, "baseline": baseline,
                "baseline_fraction": target_f, "baseline_miou": target,
                "reached_fraction": reached["train_fraction"] if reached else None,
                "reached_miou": reached["test_miou_mean"] if reached else None,
                "reached_images": reached["n_train_images"] if reached else None,
                "label_factor": target_f / reached["train_fraction"] if reached else None,
                "best_fraction": s.sort("test_miou_mean")["train_fraction"][-1],
                "best_miou": s["test_miou_mean"].max(),
            })
    schema = {"dataset": pl.String, "strategy": pl.String, "baseline": pl.String, "baseline_fraction": pl.Float64,
              "baseline_miou": pl.Float64, "reached_fraction": pl.Float64, "reached_miou": pl.Float64,
              "reached_images": pl.Int64, "label_factor": pl.Float64, "best_fraction": pl.Float64,
              "best_miou": pl.Float64}
    return pl.DataFrame(records, schema=schema).sort("dataset", "strategy")


def tuning_traces(df: pl.DataFrame) -> pl.DataFrame:
    """Val mIoU per epoch per tuning trial, with the trial's final status and whether the row is its last epoch.

    Epoch rows whose trial has no trial row yet (a study still running) get status ``running``.
    """
    epochs = df.filter((pl.col("row_kind") == "epoch") & (pl.col("phase") == "tune"))
    status = df.filter(pl.col("row_kind") == "trial").select("trial_id", pl.col("status").alias("trial_status"))
    out = epochs.select(*KEYS, "trial_id", "epoch", "val_miou", *HYPERPARAMETERS).join(
        status, on="trial_id", how="left")
    return out.with_columns(
        pl.col("trial_status").fill_null("running"),
        (pl.col("epoch") == pl.col("epoch").max().over("trial_id")).alias("is_last"),
    ).sort(*KEYS, "trial_id", "epoch")


def trial_table(df: pl.DataFrame) -> pl.DataFrame:
    """Tuning trials (one row each) with their hyperparameters, val mIoU and status: the parallel-coordinates input."""
    return df.filter(pl.col("row_kind") == "trial").select(
        *KEYS, "trial_id", "status", "epochs_run", "val_miou", *HYPERPARAMETERS).sort(*KEYS, "trial_id")


def per_class_iou(df: pl.DataFrame, class_names: Sequence[str]) -> pl.DataFrame:
    """Mean test IoU per class per cell (NaN = class absent/ignored, skipped); all-NaN classes are dropped.

    ``class_names`` index the per-class list (the dataset spec's names, ignore slot included).
    """
    finals = final_rows(df).filter(pl.col("test_iou_per_class").is_not_null())
    if finals.is_empty():
        return pl.DataFrame(schema={**{k: df.schema[k] for k in KEYS}, "class_id": pl.Int64,
                                    "class_name": pl.String, "iou": pl.Float64, "n": pl.Int64})
    long = finals.select(*KEYS, "test_iou_per_class").with_columns(
        pl.int_ranges(0, pl.col("test_iou_per_class").list.len()).alias("class_id")
    ).explode("test_iou_per_class", "class_id").with_columns(
        pl.col("test_iou_per_class").fill_nan(None).alias("iou"), pl.col("class_id").cast(pl.Int64))
    out = long.group_by(*KEYS, "class_id").agg(pl.col("iou").mean(), pl.col("iou").count().cast(pl.Int64).alias("n"))
    names = {i: n for i, n in enumerate(class_names)}
    out = out.with_columns(pl.col("class_id").replace_strict(names, default=None, return_dtype=pl.String)
                           .fill_null(pl.format("class {}", pl.col("class_id"))).alias("class_name"))
    present = out.group_by("dataset", "class_id").agg(pl.col("iou").is_not_null().any().alias("_any"))
    out = out.join(present, on=["dataset", "class_id"]).filter(pl.col("_any")).drop("_any")
    return out.select(*KEYS, "class_id", "class_name", "iou", "n").sort(*KEYS, "class_id")


# --------------------------------------------------------------------------- sentences


def fmt_fraction(f: float) -> str:
    """0.1 -> '10 %', 0.005 -> '0.5 %' (fractions are how the study is specified; readers think in percent)."""
    return f"{100 * f:.4g} %"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _within_noise(first: dict, last: dict) -> bool:
    """Equal at the shown precision, or both CIs non-degenerate and overlapping: no change a reader may claim."""
    if round(100 * first["test_miou_mean"], 1) == round(100 * last["test_miou_mean"], 1):
        return True
    spread = not (first["ci_degenerate"] or last["ci_degenerate"])
    return spread and first["test_miou_ci_low"] <= last["test_miou_ci_high"] \
        and last["test_miou_ci_low"] <= first["test_miou_ci_high"]


def _growth_sentence(dataset: str, strategy: str, cells: pl.DataFrame) -> str | None:
    s = cells.filter((pl.col("dataset") == dataset) & (pl.col("strategy") == strategy)).sort("train_fraction")
    if s.is_empty():
        return None
    last = s.row(-1, named=True)
    ci = f"95 % CI [{100 * last['test_miou_ci_low']:.1f}, {100 * last['test_miou_ci_high']:.1f}]"
    tail = (f"{100 * last['test_miou_mean']:.1f} % with {fmt_fraction(last['train_fraction'])} "
            f"({last['n_train_images']} images; {ci}, {last['seeds']} seed{'s' * (last['seeds'] != 1)})")
    if len(s) == 1:
        return f"On {dataset}, {strategy} reaches a mean test mIoU of {tail}."
    first = s.row(0, named=True)
    start = (f"{100 * first['test_miou_mean']:.1f} % with {fmt_fraction(first['train_fraction'])} of the training "
             f"images ({first['n_train_images']} images)")
    if _within_noise(first, last):
        how = ("is flat" if round(100 * first["test_miou_mean"], 1) == round(100 * last["test_miou_mean"], 1)
               else "does not change beyond the noise (overlapping 95 % CIs)")
        return f"On {dataset}, {strategy}'s mean test mIoU {how}: {start}, {tail}."
    verb = "grows" if last["test_miou_mean"] >= first["test_miou_mean"] else "falls"
    return f"On {dataset}, {strategy}'s mean test mIoU {verb} from {start} to {tail}."


def cross_dataset_table(cells: pl.DataFrame) -> pl.DataFrame:
    """The paper's table: one row per (strategy, fraction), one column per dataset, "mean ± sd %" of test mIoU."""
    if cells.is_empty():
        return pl.DataFrame()
    text = pl.format("{} ± {} %", (100 * pl.col("test_miou_mean")).round(1),
                     (100 * pl.col("test_miou_std").fill_null(0)).round(1))
    long = cells.select("strategy", "train_fraction", "dataset", text.alias("v"))
    wide = long.pivot(on="dataset", index=["strategy", "train_fraction"], values="v")
    datasets = sorted(c for c in wide.columns if c not in ("strategy", "train_fraction"))
    return wide.sort("strategy", "train_fraction").select(
        "strategy", pl.col("train_fraction").map_elements(fmt_fraction, return_dtype=pl.String).alias("fraction"),
        *datasets)


def _savings_sentence(r: dict) -> str:
    base = (f"{r['baseline']}'s mean test mIoU at {fmt_fraction(r['baseline_fraction'])} "
            f"({100 * r['baseline_miou']:.1f} %)")
    if r["reached_fraction"] is None:
        return (f"On {r['dataset']}, {r['strategy']} never reaches {base}; its best is "
                f"{100 * r['best_miou']:.1f} % at {fmt_fraction(r['best_fraction'])}.")
    return (f"On {r['dataset']}, {r['strategy']} with {fmt_fraction(r['reached_fraction'])} of the training images "
            f"({r['reached_images']} images, {100 * r['reached_miou']:.1f} %) reaches {base}: "
            f"{r['label_factor']:.3g}x fewer labels.")


def _gain_sentence(paired: pl.DataFrame) -> str | None:
    rows = paired.filter(pl.col("n_pairs") > 0).sort("mean_diff", descending=True)
    if rows.is_empty():
        return None
    r = rows.row(0, named=True)
    what = "Biggest gain" if r["mean_diff"] > 0 else "No strategy beats the baseline at any fraction; closest"
    p = f"Holm-corrected p = {r['p_holm']:.3g}" if r["p_holm"] is not None else "no p-value"
    return (f"{what}: {r['strategy']} − {r['baseline']} = {_pts(r['mean_diff'])} mIoU points at "
            f"{fmt_fraction(r['train_fraction'])} on {r['dataset']} (95 % CI [{_pts(r['ci_low'])}, "
            f"{_pts(r['ci_high'])}], {p}, {r['n_pairs']} paired seed{'s' * (r['n_pairs'] != 1)}).")


def _compute_sentence(acc: pl.DataFrame) -> str | None:
    if acc.is_empty():
        return None
    t = acc.select(pl.col("trials", "stopped_early", "trial_epochs", "epoch_budget", "run_s", "device_s", "gpu_hours")
                   .fill_null(0).sum()).row(0, named=True)
    text = (f"ASHA stopped {t['stopped_early']} of {t['trials']} tuning trials early: they ran "
            f"{t['trial_epochs']} of {t['epoch_budget']} trial-epochs")
    if t["epoch_budget"]:
        text += f" ({100 * (1 - t['trial_epochs'] / t['epoch_budget']):.0f} % of the tuning budget saved)"
    gpu = f"{t['gpu_hours']:.2f} GPU-hours" if t["gpu_hours"] > 0 else "no GPU"
    return (text + f". Tuning and final runs took {t['run_s']:,.0f} run-seconds, {t['device_s']:,.0f} of them "
            f"in training and validation steps ({gpu}).")


def headlines(df: pl.DataFrame, baseline: str = BASELINE, *, cells: pl.DataFrame | None = None,
              paired: pl.DataFrame | None = None, savings: pl.DataFrame | None = None,
              accounting: pl.DataFrame | None = None) -> list[str]:
    """The report's opening sentences, every number computed from the store.

    Precomputed frames may be passed to skip recomputation. With only the baseline present the
    sentences describe its own curve and the compute ASHA saved.
    """
    cells = cell_summary(df) if cells is None else cells
    paired = paired_differences(df, baseline) if paired is None else paired
    savings = label_savings(df, baseline, cells=cells) if savings is None else savings
    accounting = compute_accounting(df) if accounting is None else accounting
    out: list[str] = []
    if cells.is_empty():
        out.append("No finished cells yet: no final (test-evaluated) runs are in the store.")
    for dataset in cells["dataset"].unique(maintain_order=True).to_list() if len(cells) else []:
        present = cells.filter(pl.col("dataset") == dataset)["strategy"].unique().sort().to_list()
        out.append(_growth_sentence(dataset, baseline if baseline in present else present[0], cells))
        for r in savings.filter((pl.col("dataset") == dataset) & (pl.col("strategy") != baseline)
                                & pl.col("baseline_miou").is_not_null()).iter_rows(named=True):
            out.append(_savings_sentence(r))
    out.append(_gain_sentence(paired))
    out.append(_compute_sentence(accounting))
    single = int((cells["seeds"] < 2).sum()) if len(cells) else 0
    if single:
        out.append(f"{single} cell{'s' * (single != 1)} ha{'ve' if single != 1 else 's'} a single seed: "
                   "its confidence interval is just the mean (no spread to estimate).")
    return [s for s in out if s]
