"""Compute accounting of a study: what tuning cost, what ASHA saved, how busy the machines were.

Three clocks, because they answer different questions and differ a lot:

- ``run_s``: each trial's or final run's time as the driver saw it (``ended_at - started_at``):
  worker start, data loading, model build, training and evaluation. This is what a run costs
  (a smoke study's cell: ~30 s, the number the console's elapsed time agrees with);
- ``train_s``: the training loop alone (the row's ``wall_s``, from the first epoch to the last);
- ``device_s``: time in training and validation steps only (the row's ``device_s``); on a GPU
  run, ``gpu_s`` counts these seconds.

Per-run ``wall_s``/``device_s`` of a trial or final row are the values at its last epoch, which
are cumulative within the run, so summing trial + final rows (never epoch rows) counts each second
once. Rows written before ``started_at``/``ended_at`` existed fall back to ``wall_s`` for ``run_s``.
"""

from __future__ import annotations

import polars as pl

KEYS = ["dataset", "strategy", "train_fraction"]
_RUN_S = (pl.col("ended_at") - pl.col("started_at")).dt.total_microseconds() / 1e6


def _runs(df: pl.DataFrame) -> pl.DataFrame:
    """Trial and final rows with ``run_s`` (driver clock, else the training-loop time)."""
    runs = df.filter(pl.col("row_kind").is_in(["trial", "final"]))
    if "started_at" not in runs.columns or "ended_at" not in runs.columns:
        return runs.with_columns(pl.col("wall_s").alias("run_s"))
    return runs.with_columns(pl.when(pl.col("started_at").is_not_null() & pl.col("ended_at").is_not_null())
                             .then(_RUN_S).otherwise(pl.col("wall_s")).alias("run_s"))


def compute_accounting(df: pl.DataFrame) -> pl.DataFrame:
    """Per cell: trials, ASHA stops, trial-epochs vs budget, and the three clocks (module docstring).

    ``trial_epochs`` (epochs the tuning trials ran) vs ``epoch_budget`` (trials x max_epochs, i.e.
    without early stopping); ``saved_fraction`` = 1 - run/budget. ``elapsed_s`` is the cell's span
    on the driver clock (first start to last end); concurrent trials overlap, so it is less than
    ``run_s``. ``wall_s`` (= ``train_s``) and ``gpu_hours`` are kept for older readers.
    """
    runs = _runs(df)
    is_trial = pl.col("row_kind") == "trial"
    on_gpu = pl.col("device").fill_null("").str.starts_with("cuda")
    has_times = "started_at" in runs.columns and "ended_at" in runs.columns
    span = ((pl.col("ended_at").max() - pl.col("started_at").min()).dt.total_microseconds() / 1e6
            if has_times else pl.lit(None, pl.Float64))
    out = runs.group_by(KEYS).agg(
        is_trial.sum().cast(pl.Int64).alias("trials"),
        (is_trial & (pl.col("status") == "stopped_early")).sum().cast(pl.Int64).alias("stopped_early"),
        (is_trial & (pl.col("status") == "error")).sum().cast(pl.Int64).alias("failed"),
        pl.col("epochs_run").filter(is_trial).sum().cast(pl.Int64).alias("trial_epochs"),
        pl.col("max_epochs").filter(is_trial).sum().cast(pl.Int64).alias("epoch_budget"),
        (~is_trial).sum().cast(pl.Int64).alias("final_runs"),
        pl.col("epochs_run").filter(~is_trial).sum().cast(pl.Int64).alias("final_epochs"),
        pl.col("run_s").sum().alias("run_s"),
        span.alias("elapsed_s"),
        pl.col("wall_s").sum().alias("train_s"),
        pl.col("device_s").filter(is_trial).sum().alias("tune_device_s"),
        pl.col("device_s").sum().alias("device_s"),
        pl.col("device_s").filter(on_gpu).sum().alias("gpu_s"),
    )
    saved = pl.when(pl.col("epoch_budget") > 0).then(1.0 - pl.col("trial_epochs") / pl.col("epoch_budget"))
    return out.with_columns(saved.alias("saved_fraction"), pl.col("train_s").alias("wall_s"),
                            (pl.col("gpu_s") / 3600.0).alias("gpu_hours")).sort(KEYS)


def peak_concurrency(starts: list, ends: list) -> int:
    """The most runs in progress at one instant (an end at the same instant as a start frees its slot first)."""
    events = sorted([(e, -1) for e in ends] + [(s, +1) for s in starts])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def time_use(df: pl.DataFrame) -> dict[str, float | int] | None:
    """Study-wide use of the run slots: sum of run times / (wall span x slots); None without start/end times.

    ``slots`` is the peak number of runs that were in progress at once (the store does not record
    how many the cluster offered), so ``busy_fraction`` = 1 means every slot the study ever used was
    busy from its first start to its last end; idle gaps (driver work between cells, feature export,
    waiting for resources, a study run in several sittings) lower it.
    """
    runs = _runs(df)
    if "started_at" not in runs.columns:
        return None
    timed = runs.filter(pl.col("started_at").is_not_null() & pl.col("ended_at").is_not_null())
    if timed.is_empty():
        return None
    starts, ends = timed["started_at"].to_list(), timed["ended_at"].to_list()
    span_s = (max(ends) - min(starts)).total_seconds()
    run_s = float(timed["run_s"].sum())
    slots = peak_concurrency(starts, ends)
    busy = run_s / (span_s * slots) if span_s > 0 and slots else None
    return {"runs": len(timed), "span_s": span_s, "run_s": run_s, "slots": slots,
            "mean_concurrency": run_s / span_s if span_s > 0 else None, "busy_fraction": busy}
