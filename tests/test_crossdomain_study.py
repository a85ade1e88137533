"""The crossdomain strategies through the real driver: features computed once, reused by every trial."""

from __future__ import annotations

import polars as pl

import study.features.cache as features_cache
from study.models.checkpoints import checkpoint_hash
from study.run import main
from study.store import read_store


def test_study_with_n_trials_exports_each_split_once(ray_session, tiny_root, tiny_backbone, tmp_path, monkeypatch,
                                                     capsys) -> None:
    calls: list[str] = []
    real = features_cache.export_split

    def counting(model, data_root, dataset, split, *args, **kwargs):
        calls.append(split)
        return real(model, data_root, dataset, split, *args, **kwargs)

    monkeypatch.setattr(features_cache, "export_split", counting)  # the name the feature cache calls
    argv = ["--strategy", "crossdomain,crossdomain-fc", "--dataset", "hyko2", "--data-root", str(tiny_root),
            "--backbone", str(tiny_backbone), "--width", "tiny", "--fractions", "1.0", "--trials", "3",
            "--epochs", "2", "--grace-period", "1", "--seeds", "1", "--cache-dir", str(tmp_path / "cache"),
            "--max-freeze-depth", "1",
            "--results", str(tmp_path / "res")]
    assert main(argv) == 0, capsys.readouterr()
    assert sorted(calls) == ["test", "train", "val"]  # 2 strategies x (3 trials + 1 seed): once each

    df = read_store(tmp_path / "res")
    finals = df.filter(pl.col("row_kind") == "final")
    assert sorted(finals["strategy"].unique().to_list()) == ["crossdomain", "crossdomain-fc"]
    assert (df["backbone_hash"] == checkpoint_hash(tiny_backbone)).all()
    assert set(finals["model_name"].to_list()) == {"hypersl-runet-tiny", "hypersl-fc"}
    # all strategies at a fraction use the same training subset
    assert df["subset_hash"].n_unique() == 1
    # freeze depth is searched: its columns are filled, and the seeded search runs trials with k > 0 (no export:
    # those recompute features from the raw spectra the driver attaches)
    summaries = df.filter(pl.col("row_kind") != "epoch")
    assert summaries["freeze_depth"].null_count() == 0 and summaries["backbone_lr"].null_count() == 0
    assert (summaries["freeze_depth"] > 0).sum() >= 2 and (summaries["status"] != "error").all()

    calls.clear()  # a second study on the same data reuses the cache
    argv[argv.index("--results") + 1] = str(tmp_path / "res2")
    argv[argv.index("--fractions") + 1] = "0.5"
    assert main(argv) == 0
    assert calls == []


def test_max_freeze_depth_caps_the_searched_range_and_presets_freeze() -> None:
    """--max-freeze-depth clips freeze_depth; --smoke/--demo search frozen backbones only; other keys untouched."""
    from optuna.distributions import IntDistribution

    from study.config import build_config
    from study.search import search_space
    from study.strategies import get_strategy

    for name in ("crossdomain", "crossdomain-fc", "crossmodality"):
        strategy = get_strategy(name)
        full = strategy.load_search_space()
        assert full["freeze_depth"].high >= 2
        capped = search_space(build_config("full", strategies=(name,), dataset="hyko2", results="r",
                                           max_freeze_depth=1), strategy)
        assert capped["freeze_depth"] == IntDistribution(0, 1)
        assert {k: v for k, v in capped.items() if k != "freeze_depth"} == {
            k: v for k, v in full.items() if k != "freeze_depth"}
        for preset in ("smoke", "demo"):
            frozen = search_space(build_config(preset, strategies=(name,), dataset="hyko2", results="r"), strategy)
            assert frozen["freeze_depth"] == IntDistribution(0, 0)
        assert search_space(build_config("full", strategies=(name,), dataset="hyko2", results="r"), strategy) == full
