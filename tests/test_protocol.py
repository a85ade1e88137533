"""--protocol paper (the published recipe verbatim) and the tuned protocol that starts from it."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from study.config import build_config
from study.errors import ConfigError
from study.run import build_parser, config_from_args, main
from study.store import read_store

PAPER_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)


def _randperm_prefix(names: list[str], fraction: float) -> list[str]:
    """HS3-Bench's subset, computed here without the project's code: random_split(seed 42) over sorted keys."""
    ordered = sorted(names)
    k = max(1, round(fraction * len(ordered)))
    first, _ = torch.utils.data.random_split(ordered, [k, len(ordered) - k],
                                             generator=torch.Generator().manual_seed(42))
    return [ordered[i] for i in first.indices]


def test_paper_subsets_are_the_benchmarks_seed_42_prefixes(tmp_path: Path) -> None:
    from study.data.subsets import make_subset

    names = [f"set-_{i:05d}_spec_annotated" for i in range(81)]  # HyKo2's train size
    classes = [frozenset({1 + i % 7}) for i in range(81)]
    previous: set[str] = set()
    for f in PAPER_FRACTIONS:
        m = make_subset("hyko2", names, classes, f, 0, method="paper")
        assert list(m.names) == _randperm_prefix(names, f), f
        assert m.method == "paper" and m.subset_seed == 42
        assert previous <= set(m.names)  # nested: prefixes of one permutation
        previous = set(m.names)
    assert [len(make_subset("hyko2", names, classes, f, 0, method="paper").names)
            for f in PAPER_FRACTIONS] == [1, 4, 8, 20, 81]  # docs/reference.md §R19's image counts


def test_paper_protocol_fixes_the_recipe_and_refuses_contradictions(tmp_path: Path) -> None:
    weights = tmp_path / "5_base_mask95_checkpoint.pt"  # the released weights (only their presence is checked here)
    weights.write_bytes(b"")
    cfg = build_config("full", "paper", strategies=("indomain", "crossdomain-fc"), dataset="hyko2", results="r",
                       backbone=weights)
    assert cfg.budget.epochs == 500 and cfg.budget.patience == 30 and cfg.budget.trials == 1
    assert cfg.options.feature_dtype == "float32" and cfg.options.max_freeze_depth == 0
    assert cfg.options.bn_mode == "chunk" and cfg.subset_method == "paper"
    tuned = build_config("full", strategies=("indomain",), dataset="hyko2", results="r")
    assert tuned.study_id != cfg.study_id and tuned.subset_method == "cover"
    for bad in (dict(feature_dtype="float16"), dict(max_freeze_depth=2), dict(trials=8), dict(bn_mode="running")):
        with pytest.raises(ConfigError, match="--protocol paper"):
            build_config("full", "paper", strategies=("indomain",), dataset="hyko2", results="r", **bad)
    with pytest.raises(ConfigError, match="crossmodality has no published recipe"):
        build_config("full", "paper", strategies=("crossmodality",), dataset="hyko2", results="r")
    # the CLI: one line naming the flag, exit 2
    args = build_parser().parse_args(["--protocol", "paper", "--feature-dtype", "float16"])
    with pytest.raises(ConfigError, match="--feature-dtype float16 contradicts"):
        config_from_args(args)


def test_tuned_full_study_on_real_data_defaults_to_the_papers_epochs(tiny_root: Path) -> None:
    real = build_config("full", strategies=("indomain",), dataset="hyko2", results="r", data_root=tiny_root)
    assert real.budget.epochs == 500
    assert build_config("full", strategies=("indomain",), dataset="hyko2", results="r").budget.epochs == 100
    assert build_config("demo", strategies=("indomain",), dataset="hyko2", results="r",
                        data_root=tiny_root).budget.epochs == 30  # presets keep their small budgets


def test_paper_study_trains_the_recipe_on_the_benchmark_subsets(ray_session, tiny_root: Path, tmp_path: Path,
                                                                capsys) -> None:
    results = tmp_path / "paper"
    rc = main(["--protocol", "paper", "--strategy", "indomain", "--dataset", "hyko2", "--data-root", str(tiny_root),
               "--results", str(results), "--fractions", "0.5", "--epochs", "2", "--seeds", "2", "--width", "tiny",
               "--allow-deviations"])
    out = capsys.readouterr().out
    assert rc == 0, out
    df = read_store(results)
    assert set(df["row_kind"]) == {"epoch", "final"}  # nothing searched
    finals = df.filter(pl.col("row_kind") == "final")
    assert finals.height == 2 and set(finals["seed"]) == {0, 1}
    # a shortened recipe is never labelled the paper's: issue 26
    assert set(finals["protocol"]) == {"paper-modified"} and set(finals["deviations"]) == {"epochs=2;width=tiny"}
    assert "protocol paper-modified" in out and "deviations epochs=2;width=tiny" in out  # the run header
    config = json.loads(finals["config_json"][0])
    assert (config["lr"], config["weight_decay"], config["dropout"]) == (1e-3, 0.0, 0.25)
    manifest = json.loads(next((results / "manifests").glob("*.json")).read_text())
    from study.data.datasets import validate_dataset
    from study.data.specs import get_spec

    train_names = validate_dataset(tiny_root, get_spec("hyko2"))["train"].names
    assert manifest["names"] == _randperm_prefix(list(train_names), 0.5) and manifest["method"] == "paper"


def test_tuned_cells_try_the_recipe_first_and_the_report_shows_what_tuning_added(
        ray_session, tiny_root: Path, tmp_path: Path, capsys) -> None:
    from study.report import cell_summary

    results = tmp_path / "tuned"
    rc = main(["--strategy", "indomain", "--dataset", "hyko2", "--data-root", str(tiny_root), "--results",
               str(results), "--fractions", "1.0", "--trials", "3", "--epochs", "2", "--grace-period", "1",
               "--seeds", "1", "--width", "tiny", "--max-concurrent", "1"])
    assert rc == 0, capsys.readouterr().out
    df = read_store(results)
    trials = df.filter(pl.col("row_kind") == "trial")
    recipe = trials.filter(pl.col("protocol") == "recipe")
    assert recipe.height == 1 and trials.height == 3
    assert (recipe["lr"][0], recipe["weight_decay"][0], recipe["dropout"][0]) == (1e-3, 0.0, 0.25)
    assert set(trials.filter(pl.col("protocol") != "recipe")["protocol"]) == {"tuned"}
    cells = cell_summary(df, n_resamples=10)
    row = cells.row(0, named=True)
    assert row["recipe_val_miou"] == recipe["val_miou"][0]
    assert row["tuning_gain"] == pytest.approx(row["best_val_miou"] - row["recipe_val_miou"])


def test_a_paper_study_writes_the_benchmarks_manifests_at_every_fraction(tiny_root: Path, tmp_path: Path) -> None:
    from study.data.datasets import validate_dataset
    from study.data.specs import get_spec
    from study.orchestration import check_inputs

    cfg = build_config("full", "paper", strategies=("indomain",), dataset="hyko2", data_root=tiny_root,
                       fractions=PAPER_FRACTIONS, results=tmp_path / "r")
    prep = check_inputs(cfg, echo=lambda _: None)["hyko2"]
    names = list(validate_dataset(tiny_root, get_spec("hyko2"))["train"].names)
    written = {json.loads(p.read_text())["fraction"]: json.loads(p.read_text())["names"]
               for p in (tmp_path / "r" / "manifests").glob("*.json")}
    for f in PAPER_FRACTIONS:
        assert list(prep.subsets[f].names) == written[f] == _randperm_prefix(names, f), f


def test_the_hcv2_split_a_file_follows_reaches_every_rows_data_source(tiny_root: Path, tmp_path: Path) -> None:
    import shutil

    import h5py

    from study.orchestration import split_variant

    copy = tmp_path / "hyko2_train.h5"
    shutil.copy(tiny_root / "hyko2_train.h5", copy)
    assert split_variant(copy) == ""
    with h5py.File(copy, "r+") as fh:
        fh.attrs["hcv2_split"] = "old"
    assert split_variant(copy) == " (hcv2 split old)"
