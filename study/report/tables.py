"""The report's tables as plain HTML (not plotly Table figures), and the sections built from them.

Why HTML: a plotly table has a fixed pixel height, so wrapping cells push its last
rows out of view (the summary table lost its last row that way). An HTML table
grows with its content, can be selected, copied into a spreadsheet and searched
with the browser's find, and prints. Every number here comes from
:mod:`study.report.analysis` frames; mIoU-like values are shown in % with a % sign.
"""

from __future__ import annotations

import html
import math

import polars as pl

from study.report import accounting, analysis

CSS = """
.tablewrap{overflow-x:auto;margin:10px 0 18px} table.data{border-collapse:collapse;font-size:0.9em}
table.data caption{text-align:left;font-weight:600;padding:4px 0 8px}
table.data th{background:#e8edf3;text-align:left;padding:5px 9px;border-bottom:2px solid #c9d3df;position:sticky;top:0}
table.data td{padding:4px 9px;border-bottom:1px solid #e3e8ef;white-space:nowrap}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums} table.data tr:hover td{background:#f5f8fc}
"""

_FRACTION = pl.col("train_fraction").map_elements(analysis.fmt_fraction, return_dtype=pl.String).alias("fraction")


def _cell(v: object, spec: str | None) -> tuple[str, bool]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–", False
    if spec is not None and isinstance(v, (int, float)):
        return format(v, spec), True
    return str(v), isinstance(v, (int, float)) and not isinstance(v, bool)


def html_table(frame: pl.DataFrame, table_id: str, caption: str, formats: dict[str, str] | None = None) -> str:
    """``frame`` as an HTML table with every row; ``formats`` maps a column to a format spec, nulls show '–'."""
    formats = formats or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.iter_rows():
        tds = []
        for col, v in zip(frame.columns, row, strict=True):
            text, num = _cell(v, formats.get(col))
            tds.append(f'<td{" class=num" if num else ""}>{html.escape(text)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="tablewrap"><table class="data" id="{html.escape(table_id)}" data-rows="{len(frame)}">'
            f"<caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def summary_table(cells: pl.DataFrame) -> str:
    """One row per cell: images, subset, seeds, test mIoU mean ± sd and bootstrap CI, OA, mAcc, F1, best val, and
    the published recipe's val mIoU next to the tuned best ("tuning gain": what the search added, in points)."""
    frame = cells.select(
        "dataset", "strategy", _FRACTION, pl.col("n_train_images").alias("images"),
        pl.col("subset_hash").alias("subset"), "seeds",
        pl.format("{} ± {} %", (100 * pl.col("test_miou_mean")).round(1),
                  (100 * pl.col("test_miou_std").fill_null(0)).round(1)).alias("test mIoU (mean ± sd)"),
        pl.format("[{} %, {} %]{}", (100 * pl.col("test_miou_ci_low")).round(1),
                  (100 * pl.col("test_miou_ci_high")).round(1),
                  pl.when(pl.col("ci_degenerate")).then(pl.lit(" (1 seed)")).otherwise(pl.lit(""))).alias("95 % CI"),
        (100 * pl.col("test_oa_mean")).alias("OA"), (100 * pl.col("test_macc_mean")).alias("mAcc"),
        (100 * pl.col("test_macro_f1_mean")).alias("F1"), (100 * pl.col("best_val_miou")).alias("best val mIoU"),
        (100 * pl.col("recipe_val_miou")).alias("recipe val mIoU"),
        (100 * pl.col("tuning_gain")).alias("tuning gain"))
    pct = {c: ".1f" for c in ("OA", "mAcc", "F1", "best val mIoU", "recipe val mIoU")}
    frame = frame.with_columns(pl.col(c).map_elements(lambda v: f"{v:.1f} %", return_dtype=pl.String) for c in pct)
    frame = frame.with_columns(pl.col("tuning gain").map_elements(lambda v: f"{v:+.1f} points",
                                                                  return_dtype=pl.String))
    return html_table(frame, "summary-table", f"summary per cell (test metrics over seeds), {len(frame)} cells")


def cross_dataset_table(cells: pl.DataFrame) -> str:
    """Strategies x datasets at each fraction (the paper's table), mean ± sd test mIoU over seeds."""
    frame = analysis.cross_dataset_table(cells)
    return html_table(frame, "cross-dataset-table", "test mIoU (mean ± sd over seeds) per dataset")


def compute_table(acc: pl.DataFrame) -> str:
    """Per cell: trials, ASHA stops, trial-epochs vs budget, the three clocks, GPU-seconds."""
    frame = acc.select(
        "dataset", "strategy", _FRACTION, "trials", pl.col("stopped_early").alias("stopped early"), "failed",
        pl.col("trial_epochs").alias("trial-epochs run"), pl.col("epoch_budget").alias("budget (trials × max epochs)"),
        (100 * pl.col("saved_fraction")).alias("saved %"), pl.col("final_runs").alias("final runs"),
        pl.col("run_s").alias("run-s"), pl.col("elapsed_s").alias("elapsed-s"), pl.col("train_s").alias("train-loop-s"),
        pl.col("device_s").alias("device-s"), pl.col("gpu_s").alias("GPU-s"))
    fmt = {"saved %": ".0f", "run-s": ",.1f", "elapsed-s": ",.1f", "train-loop-s": ",.1f", "device-s": ",.1f",
           "GPU-s": ",.1f"}
    return html_table(frame, "compute-table", "compute per cell (tuning + final runs)", fmt)


def paired_table(paired: pl.DataFrame, baseline: str) -> str:
    """Per (dataset, strategy, fraction): mean paired difference to the baseline, its CI and p-values."""
    frame = paired.select(
        "dataset", "strategy", _FRACTION, pl.col("n_pairs").alias("pairs"),
        *[(100 * pl.col(c)).alias(n) for c, n in (("mean_diff", "Δ mIoU (points)"), ("ci_low", "CI low"),
                                                  ("ci_high", "CI high"))],
        pl.col("p_value").alias("p (sign-flip)"), pl.col("p_holm").alias("p (Holm)"))
    fmt = {"Δ mIoU (points)": "+.1f", "CI low": "+.1f", "CI high": "+.1f", "p (sign-flip)": ".3g", "p (Holm)": ".3g"}
    return html_table(frame, "paired-table", f"paired differences to {baseline}", fmt)


def time_use_note(df: pl.DataFrame) -> str:
    """One paragraph on how busy the study kept its run slots (from started_at/ended_at), or ''."""
    use = accounting.time_use(df)
    if use is None:
        return ""
    busy = "–" if use["busy_fraction"] is None else f"{100 * use['busy_fraction']:.0f} %"
    return (f"<p><b>Busy fraction {busy}.</b> {use['runs']} runs took {use['run_s']:,.0f} run-seconds within a wall "
            f"span of {use['span_s']:,.0f} s (first start to last end) on at most {use['slots']} runs at once "
            f"(mean {use['mean_concurrency'] or 0:.1f}): busy fraction = run-seconds / (span × {use['slots']}). "
            "It measures how well the study kept its slots filled, not how fast each run was; gaps between cells, "
            "feature export, waiting for resources and re-runs in several sittings lower it.</p>")


COMPUTE_NOTE = ("run-s: each trial's and final run's time on the driver clock (start to end: worker start, data "
                "loading, model build, training, evaluation), summed over the cell's runs. elapsed-s: the cell's span "
                "(first start to last end; concurrent runs overlap). train-loop-s: the training loops alone. "
                "device-s: training and validation steps only; GPU-s: device-s of runs on a CUDA device.")
