"""The short console summary printed at the end of a study (polars only; the numbers are analysis')."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from study.progress import pct
from study.report import analysis, compare
from study.store import Results, read_store


def summary_frame(results: Results | Path) -> pl.DataFrame:
    """Per (dataset, strategy, fraction): analysis' cell summary plus the tuning counts the console shows (a
    strategy whose cells ran with two search spaces or backbones: one line per variant, :mod:`compare`)."""
    return _summary(compare.split_cell_variants(read_store(results))[0])


def _summary(df: pl.DataFrame) -> pl.DataFrame:
    cells = analysis.cell_summary(df, n_resamples=1)  # the console shows mean ± sd; the report draws the CIs
    if cells.is_empty():
        return pl.DataFrame()
    trials = df.filter(pl.col("row_kind") == "trial").group_by(analysis.KEYS).agg(
        pl.len().alias("trials"),
        (pl.col("status") == "stopped_early").sum().alias("asha_stopped"),
        (pl.col("status") == "error").sum().alias("failed"),
    )
    return cells.join(trials, on=analysis.KEYS, how="left").sort(analysis.KEYS)


def print_summary(results: Results | Path) -> None:
    df, notes = compare.split_cell_variants(read_store(results))  # cells of two search spaces are never pooled
    frame = _summary(df)
    for note in notes:
        print(f"note: {note}")
    if frame.is_empty():
        print("no finished cells yet")
        return
    print("\n dataset   strategy        fraction  images  trials (stopped/failed)  best val mIoU  "
          "test mIoU (mean ± sd, seeds)  test OA")
    for r in frame.iter_rows(named=True):  # mIoU and OA in %, as in the report
        sd = r["test_miou_std"]
        sd_txt = f"± {100 * sd:4.1f} %" if sd is not None else "%       "
        print(f" {r['dataset']:<9} {r['strategy']:<15} {r['train_fraction']:>8.3g}  {r['n_train_images']:>6}  "
              f"{r['trials'] or 0:>6} ({r['asha_stopped'] or 0}/{r['failed'] or 0})            "
              f"{pct(r['best_val_miou']):>8}      "
              f"{100 * r['test_miou_mean']:5.1f} {sd_txt} (n={r['seeds']})      {pct(r['test_oa_mean']):>8}")
