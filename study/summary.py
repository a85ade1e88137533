"""The short console summary printed at the end of a study (polars only)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from study.results import read_store


def summary_frame(results: Path) -> pl.DataFrame:
    """Per (dataset, strategy, fraction): images, seeds, mean/std of test mIoU and OA, best val mIoU."""
    df = read_store(results)
    finals = df.filter((pl.col("row_kind") == "final") & pl.col("test_miou").is_not_null())
    trials = df.filter(pl.col("row_kind") == "trial")
    if finals.is_empty():
        return pl.DataFrame()
    keys = ["dataset", "strategy", "train_fraction"]
    out = finals.group_by(keys).agg(
        pl.col("n_train_images").first().alias("images"),
        pl.len().alias("seeds"),
        pl.col("test_miou").mean().alias("test_miou"),
        pl.col("test_miou").std().alias("test_miou_std"),
        pl.col("test_oa").mean().alias("test_oa"),
    )
    tuned = trials.group_by(keys).agg(
        pl.len().alias("trials"),
        (pl.col("status") == "stopped_early").sum().alias("asha_stopped"),
        (pl.col("status") == "error").sum().alias("failed"),
        pl.col("val_miou").max().alias("best_val_miou"),
    )
    return out.join(tuned, on=keys, how="left").sort(keys)


def print_summary(results: Path) -> None:
    frame = summary_frame(results)
    if frame.is_empty():
        print("no finished cells yet")
        return
    print("\n dataset   strategy        fraction  images  trials (stopped/failed)  best val mIoU  "
          "test mIoU (mean ± sd, seeds)  test OA")
    for r in frame.iter_rows(named=True):
        sd = r["test_miou_std"]
        sd_txt = f"± {100 * sd:4.1f}" if sd is not None else "      "
        print(f" {r['dataset']:<9} {r['strategy']:<15} {r['train_fraction']:>8.3g}  {r['images']:>6}  "
              f"{r['trials'] or 0:>6} ({r['asha_stopped'] or 0}/{r['failed'] or 0})            "
              f"{100 * (r['best_val_miou'] or float('nan')):>6.1f}        "
              f"{100 * r['test_miou']:5.1f} {sd_txt} (n={r['seeds']})          {100 * r['test_oa']:5.1f}")
