"""study.report.analysis on a constructed store whose every statistic is known by hand (see store_builder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from store_builder import (
    DEVICE_S_PER_EPOCH,
    FINAL_DEVICE_S,
    FRACTIONS,
    IMAGES,
    INDOMAIN,
    SEEDS,
    STARTUP_S,
    TRIAL_EPOCHS,
    build_store,
    expected_miou,
)

from study.data.specs import get_spec
from study.report import accounting, analysis
from study.store import read_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    return read_store(build_store(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def cells(store: pl.DataFrame) -> pl.DataFrame:
    return analysis.cell_summary(store)


def _row(frame: pl.DataFrame, strategy: str, fraction: float) -> dict:
    rows = frame.filter((pl.col("strategy") == strategy) & (pl.col("train_fraction") == fraction))
    assert len(rows) == 1
    return rows.row(0, named=True)


def test_cell_summary_means_std_and_identity(cells: pl.DataFrame) -> None:
    assert len(cells) == 6
    for s in ("indomain", "crossdomain"):
        for f in FRACTIONS:
            r = _row(cells, s, f)
            values = [expected_miou(s, f, i) for i in range(len(SEEDS))]
            assert r["test_miou_mean"] == pytest.approx(np.mean(values))
            assert r["test_miou_std"] == pytest.approx(np.std(values, ddof=1))
            assert r["test_oa_mean"] == pytest.approx(np.mean(values) + 0.3)
            assert (r["n_train_images"], r["seeds"], r["ci_degenerate"]) == (IMAGES[f], 3, False)
            assert r["subset_hash"] == f"subset{int(f * 100):03d}"
            assert r["best_val_miou"] == pytest.approx(0.05 + 0.04 * 10)  # trial 0 reaches 0.45 at epoch 10


def test_bootstrap_ci_contains_the_mean_and_lies_within_the_data(cells: pl.DataFrame) -> None:
    for r in cells.iter_rows(named=True):
        assert r["test_miou_ci_low"] <= r["test_miou_mean"] <= r["test_miou_ci_high"]
        values = [expected_miou(r["strategy"], r["train_fraction"], i) for i in range(3)]
        assert min(values) - 1e-12 <= r["test_miou_ci_low"] < r["test_miou_ci_high"] <= max(values) + 1e-12


def test_bootstrap_is_seeded_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.5, 0.05, 5), rng.normal(0.5, 0.05, 200)
    assert analysis.bootstrap_ci(small) == analysis.bootstrap_ci(small)
    lo_s, hi_s = analysis.bootstrap_ci(small)
    lo_l, hi_l = analysis.bootstrap_ci(large)
    assert lo_l < large.mean() < hi_l and hi_l - lo_l < hi_s - lo_s
    assert analysis.bootstrap_ci([0.3]) == (0.3, 0.3)


def test_single_seed_cell_has_a_flagged_degenerate_ci(tmp_path: Path) -> None:
    df = read_store(build_store(tmp_path, strategies=("indomain",), seeds=(0,)))
    cells = analysis.cell_summary(df)
    assert cells["ci_degenerate"].all()
    assert (cells["test_miou_ci_low"] == cells["test_miou_mean"]).all()
    assert (cells["test_miou_ci_high"] == cells["test_miou_mean"]).all()
    assert any("single seed" in s for s in analysis.headlines(df))


def test_sign_flip_p_values_are_exact() -> None:
    assert analysis.sign_flip_p([0.1, 0.12, 0.14]) == pytest.approx(2 / 8)
    assert analysis.sign_flip_p([0.03, -0.01, 0.01]) == pytest.approx(6 / 8)
    assert analysis.sign_flip_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    # 5 pairs, one negative: |sum| >= 13 for the all-positive pattern, flipping 1 alone (sum 13) and mirrors
    assert analysis.sign_flip_p([-1, 2, 3, 4, 5]) == pytest.approx(4 / 32)
    assert analysis.sign_flip_p([0.0, 0.0]) == 1.0


def test_holm_correction() -> None:
    assert analysis.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert analysis.holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert analysis.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_paired_differences_match_hand_computed_values(store: pl.DataFrame) -> None:
    paired = analysis.paired_differences(store)
    assert paired["strategy"].to_list() == ["crossdomain"] * 3
    expected = {0.1: (0.12, 0.25), 0.5: (0.18, 0.25), 1.0: (0.01, 0.75)}
    for f, (diff, p) in expected.items():
        r = _row(paired, "crossdomain", f)
        assert r["n_pairs"] == 3 and r["baseline"] == "indomain"
        assert r["mean_diff"] == pytest.approx(diff)
        assert r["ci_low"] <= r["mean_diff"] <= r["ci_high"]
        assert r["p_value"] == pytest.approx(p)
        # Holm over (0.25, 0.25, 0.75): 3*0.25 = 0.75, max(0.75, 2*0.25), max(0.75, 0.75)
        assert r["p_holm"] == pytest.approx(0.75)
    assert _row(paired, "crossdomain", 1.0)["ci_low"] == pytest.approx(-0.01)


def test_paired_differences_without_pairs_say_so(store: pl.DataFrame) -> None:
    moved = store.with_columns(pl.when(pl.col("strategy") == "crossdomain").then(pl.lit("other"))
                               .otherwise(pl.col("subset_hash")).alias("subset_hash"))
    paired = analysis.paired_differences(moved)
    assert (paired["n_pairs"] == 0).all()
    assert paired["p_value"].null_count() == paired["p_holm"].null_count() == paired["mean_diff"].null_count() == 3
    assert analysis.paired_differences(store.filter(pl.col("strategy") == "indomain")).is_empty()


def test_label_savings(store: pl.DataFrame) -> None:
    savings = analysis.label_savings(store)
    cross = _row(savings.rename({"baseline_fraction": "train_fraction"}), "crossdomain", 1.0)
    assert cross["baseline_miou"] == pytest.approx(np.mean(INDOMAIN[1.0]))
    assert cross["reached_fraction"] == 0.5 and cross["reached_images"] == 20
    assert cross["reached_miou"] == pytest.approx(0.55) and cross["label_factor"] == pytest.approx(2.0)
    own = savings.filter(pl.col("strategy") == "indomain").row(0, named=True)
    assert own["reached_fraction"] == 1.0
    # a strategy that never catches up: crossdomain minus 0.2 everywhere
    worse = store.with_columns(pl.when(pl.col("strategy") == "crossdomain").then(pl.col("test_miou") - 0.2)
                               .otherwise(pl.col("test_miou")).alias("test_miou"))
    never = analysis.label_savings(worse).filter(pl.col("strategy") == "crossdomain").row(0, named=True)
    assert never["reached_fraction"] is None and never["label_factor"] is None
    assert never["best_fraction"] == 0.5 and never["best_miou"] == pytest.approx(0.35)
    assert any("never reaches" in s for s in analysis.headlines(worse))


def test_compute_accounting(store: pl.DataFrame) -> None:
    acc = accounting.compute_accounting(store)
    run = sum(TRIAL_EPOCHS)
    for r in acc.iter_rows(named=True):
        assert (r["trials"], r["stopped_early"], r["failed"], r["final_runs"]) == (4, 2, 0, 3)
        assert (r["trial_epochs"], r["epoch_budget"]) == (run, 40)
        assert r["saved_fraction"] == pytest.approx(1 - run / 40)
        device_s = DEVICE_S_PER_EPOCH * run + 3 * FINAL_DEVICE_S
        assert r["device_s"] == pytest.approx(device_s)
        assert r["wall_s"] == pytest.approx(device_s + 4 * 0.5 + 3 * 1.0)
        # the driver clock: every run also paid STARTUP_S (worker, data, model) outside its training loop
        assert r["run_s"] == pytest.approx(r["wall_s"] + 7 * STARTUP_S)
        assert r["elapsed_s"] == pytest.approx(r["run_s"])  # runs of one cell ran one after the other here
        expected_gpu = device_s / 3600 if r["strategy"] == "crossdomain" else 0.0
        assert r["gpu_hours"] == pytest.approx(expected_gpu)
        assert r["gpu_s"] == pytest.approx(expected_gpu * 3600)


def test_time_use_counts_slots_and_busy_fraction(store: pl.DataFrame) -> None:
    use = accounting.time_use(store)
    acc = accounting.compute_accounting(store)
    assert use is not None and use["slots"] == 6  # all six cells started together
    assert use["run_s"] == pytest.approx(acc["run_s"].sum())
    assert use["span_s"] == pytest.approx(acc["elapsed_s"].max())
    assert use["busy_fraction"] == pytest.approx(use["run_s"] / (use["span_s"] * 6))
    assert accounting.time_use(store.drop("started_at", "ended_at")) is None


def test_tuning_traces_and_per_class(store: pl.DataFrame) -> None:
    traces = analysis.tuning_traces(store)
    assert len(traces) == 6 * sum(TRIAL_EPOCHS)
    last = traces.filter(pl.col("is_last"))
    assert len(last) == 24 and (last.filter(pl.col("trial_status") == "stopped_early")["epoch"] == 3).all()
    names = get_spec("hyko2").class_names
    pc = analysis.per_class_iou(store, names)
    assert 0 not in pc["class_id"].to_list() and 9 not in pc["class_id"].to_list()  # ignore slot, absent class
    road = pc.filter((pl.col("strategy") == "indomain") & (pl.col("train_fraction") == 1.0)
                     & (pl.col("class_name") == "road")).row(0, named=True)
    assert road["iou"] == pytest.approx(0.52 * 0.7) and road["n"] == 3


def test_headlines_mention_the_computed_values(store: pl.DataFrame) -> None:
    text = " ".join(analysis.headlines(store))
    assert "from 22.0 % with 10 %" in text and "to 52.0 % with 100 %" in text  # indomain's curve
    assert "crossdomain with 50 %" in text and "(52.0 %)" in text and "2x fewer labels" in text  # label savings
    assert "+18.0 mIoU points at 50 %" in text and "Holm-corrected p = 0.75" in text  # biggest gain
    assert "12 of 24 tuning trials" in text and "156 of 240 trial-epochs" in text and "35 %" in text  # ASHA


def test_flat_curve_is_not_called_growth(store: pl.DataFrame) -> None:
    flat = store.with_columns(pl.when(pl.col("row_kind") == "final").then(0.019).otherwise(pl.col("test_miou"))
                              .alias("test_miou"))
    line = analysis.headlines(flat.filter(pl.col("strategy") == "indomain"))[0]
    assert "is flat" in line and "grows" not in line and "1.9 %" in line
    noisy = store.with_columns(pl.when(pl.col("row_kind") == "final")
                               .then(0.30 + 0.10 * pl.col("seed") + 0.001 * pl.col("train_fraction"))
                               .otherwise(pl.col("test_miou")).alias("test_miou"))
    line = analysis.headlines(noisy.filter(pl.col("strategy") == "indomain"))[0]
    assert "does not change beyond the noise" in line and "grows" not in line


def test_cross_dataset_table(cells: pl.DataFrame) -> None:
    two = pl.concat([cells, cells.with_columns(pl.lit("hsidrive").alias("dataset"))])
    table = analysis.cross_dataset_table(two)
    assert table.columns == ["strategy", "fraction", "hsidrive", "hyko2"] and len(table) == 6
    row = table.filter((pl.col("strategy") == "indomain") & (pl.col("fraction") == "100 %")).row(0, named=True)
    assert row["hyko2"] == "52.0 ± 2.0 %"


def test_headlines_with_only_the_baseline(store: pl.DataFrame) -> None:
    lines = analysis.headlines(store.filter(pl.col("strategy") == "indomain"))
    assert len(lines) == 2
    assert lines[0].startswith("On hyko2, indomain's mean test mIoU grows from 22.0 %")
    assert "6 of 12 tuning trials" in lines[1] and "no GPU" in lines[1]


def test_analysis_and_plots_import_neither_torch_nor_ray() -> None:
    code = ("import sys, study.report.analysis, study.report.plots, study.report; "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cell_summary_does_not_depend_on_the_order_of_the_stores_rows(store: pl.DataFrame) -> None:
    """Two identical studies store their parts in the order trials ended: the table must agree to the last digit
    (issue 27: ``make demo`` twice gives the same summary.csv), so no statistic may sum in row order."""
    rng = np.random.default_rng(3)
    finals = store.filter(pl.col("row_kind") == "final")
    # values whose float sums depend on their order (ulps apart when added in another order)
    noisy = finals.with_columns(*(pl.Series(m, rng.uniform(0.1, 0.9, finals.height) * (1 + 1e-12 * rng.random()))
                                  for m in ("test_miou", "test_oa", "test_macc", "test_macro_f1")))
    base = pl.concat([store.filter(pl.col("row_kind") != "final"), noisy], how="diagonal_relaxed")
    reference = analysis.cell_summary(base, n_resamples=200)
    for seed in range(20):
        shuffled = base.sample(fraction=1.0, shuffle=True, seed=seed)
        assert analysis.cell_summary(shuffled, n_resamples=200).equals(reference), f"row order {seed}"


def test_paired_differences_do_not_depend_on_the_order_of_the_stores_rows(store: pl.DataFrame) -> None:
    """The bootstrap CI resamples the paired differences by position: they must come in seed order."""
    reference = analysis.paired_differences(store, n_resamples=200)
    for seed in range(10):
        shuffled = store.sample(fraction=1.0, shuffle=True, seed=seed)
        assert analysis.paired_differences(shuffled, n_resamples=200).equals(reference), f"row order {seed}"
