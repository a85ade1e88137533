"""``--protocol paper`` means the paper (issue 26): the sanity backbone and every flag that contradicts the recipe
are refused before Ray unless ``--allow-deviations``, and then rows say ``paper-modified`` and list them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from study.config import build_config
from study.errors import ConfigError
from study.run import build_parser, config_from_args, effective_config, parse_args

ROOT = Path(__file__).resolve().parent.parent


def _cfg(*flags: str):
    return config_from_args(build_parser().parse_args(list(flags)))


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """Stands in for the released checkpoint where only its presence is checked (no study runs here)."""
    path = tmp_path / "5_base_mask95_checkpoint.pt"
    path.write_bytes(b"")
    return path


def test_paper_without_backbone_exits_2_in_one_line_before_ray() -> None:
    env = {**os.environ, "RAY_ADDRESS": ""}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "study.run", "--protocol", "paper", "--strategy", "crossdomain",
                        "--dataset", "hyko2"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    elapsed = time.perf_counter() - t0
    assert p.returncode == 2, p.stderr
    assert p.stdout == "" and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr  # no header: nothing ran
    for needle in ("--backbone", "WeilKon/HyperSL", "5_base_mask95_checkpoint.pt", "cross-domain-hsi",
                   "--allow-deviations"):
        assert needle in p.stderr, needle
    assert elapsed < 10, f"{elapsed:.1f} s"


@pytest.mark.parametrize(("flags", "deviation"), [
    (["--epochs", "3"], "epochs=3"),
    (["--width", "tiny"], "width=tiny"),
    (["--width", "16"], "width=16"),
    (["--patience", "5"], "patience=5"),
    (["--batch-size", "4"], "batch_size=4"),
    (["--max-freeze-depth", "2"], "max_freeze_depth=2"),
    (["--feature-dtype", "float16"], "feature_dtype=float16"),
    (["--bn-mode", "running"], "bn_mode=running"),
])
def test_every_flag_that_contradicts_the_recipe_is_refused_unless_allowed(flags: list[str], deviation: str,
                                                                          weights: Path) -> None:
    base = ["--protocol", "paper", "--strategy", "indomain,crossdomain-fc", "--backbone", str(weights)]
    with pytest.raises(ConfigError, match=f"{flags[0]} {flags[1]} contradicts .*--allow-deviations"):
        _cfg(*base, *flags)
    real = _cfg(*base)
    modified = _cfg(*base, *flags, "--allow-deviations")
    assert real.deviations == () and real.protocol_label == "paper"
    assert modified.deviations == (deviation,) and modified.protocol_label == "paper-modified"
    assert modified.settings()["deviations"] == deviation
    # a modified study never shares a study id (and so a default results folder) with the real one
    assert modified.study_id != real.study_id and modified.runtime.results != real.runtime.results


def test_the_sanity_backbone_is_a_deviation_and_the_data_is_not(weights: Path) -> None:
    with pytest.raises(ConfigError, match="--backbone .*WeilKon/HyperSL"):
        _cfg("--protocol", "paper", "--strategy", "crossdomain-fc")
    sanity = _cfg("--protocol", "paper", "--strategy", "crossdomain-fc", "--allow-deviations")
    assert sanity.deviations == ("backbone=sanity",)
    assert _cfg("--protocol", "paper", "--strategy", "indomain").deviations == ()  # no backbone, nothing to refuse
    # the recipe on the synthetic default: the recipe's full-width RU-Net, and no deviation
    synthetic = _cfg("--protocol", "paper", "--strategy", "indomain,crossdomain", "--backbone", str(weights))
    assert synthetic.data.data_root is None and synthetic.model_width == "full" and synthetic.deviations == ()
    assert _cfg("--strategy", "indomain").model_width == "small"  # the tuned protocol's synthetic default stays
    # several deviations: all named, in the recipe's order, one line
    with pytest.raises(ConfigError, match="--epochs 3 and --width tiny contradict it"):
        _cfg("--protocol", "paper", "--strategy", "indomain", "--width", "tiny", "--epochs", "3")
    both = _cfg("--protocol", "paper", "--strategy", "indomain,crossdomain", "--width", "tiny", "--epochs", "1",
                "--allow-deviations")
    assert ";".join(both.deviations) == "epochs=1;width=tiny;backbone=sanity"


def test_presets_under_the_paper_protocol_are_deviations_too() -> None:
    with pytest.raises(ConfigError, match="--smoke preset"):
        _cfg("--protocol", "paper", "--strategy", "indomain", "--smoke")
    smoke = _cfg("--protocol", "paper", "--strategy", "indomain", "--smoke", "--allow-deviations")
    assert smoke.deviations == ("epochs=2", "width=tiny") and smoke.budget.patience == 30
    demo = _cfg("--protocol", "paper", "--strategy", "indomain", "--demo", "--allow-deviations")
    assert demo.deviations == ("epochs=30", "width=small", "batch_size=4")
    # tuned studies know no deviations, whatever their flags
    assert _cfg("--strategy", "indomain", "--smoke", "--allow-deviations").deviations == ()


def test_allow_deviations_survives_the_study_file(tmp_path: Path) -> None:
    cfg = _cfg("--protocol", "paper", "--strategy", "indomain", "--epochs", "3", "--allow-deviations")
    text = effective_config(cfg)
    assert "allow_deviations = true" in text
    path = tmp_path / "study.toml"
    path.write_text(text.split("\n\n[")[0] + "\n")  # the settings only: the paper protocol takes no spaces
    again = config_from_args(parse_args(["--config", str(path)]))
    assert again.deviations == ("epochs=3",) and again.study_id == cfg.study_id
    assert "allow_deviations" not in effective_config(_cfg("--protocol", "paper", "--strategy", "indomain"))


def test_a_batch_size_deviation_reaches_the_trials() -> None:
    from study.data.specs import get_spec
    from study.orchestration.cell import cell_constants, row_identity
    from study.strategies import get_strategy

    spec = get_spec("hyko2")
    subset = SimpleNamespace(names=tuple(f"s{i}" for i in range(40)), fraction=1.0, content_hash="h", subset_seed=42)
    prep = SimpleNamespace(spec=spec, backbones={}, stage_hashes={}, source="synthetic:x")
    for name, key in (("indomain", "batch_size"), ("indomain-fc", "images_per_batch")):
        strategy = get_strategy(name)
        recipe = strategy.load_recipe("hyko2")
        real = build_config("full", "paper", strategies=(name,), dataset="hyko2", results="r")
        modified = build_config("full", "paper", True, strategies=(name,), dataset="hyko2", results="r", batch_size=3)
        assert cell_constants(real, prep, strategy, subset, "c", 1, recipe)[key] == recipe[key]
        assert cell_constants(modified, prep, strategy, subset, "c", 1, recipe)[key] == 3
        assert row_identity(modified, prep, strategy, subset, "c")["deviations"] == "batch_size=3"
        assert row_identity(real, prep, strategy, subset, "c")["deviations"] is None


def test_stores_written_before_the_deviations_column_still_read(tmp_path: Path) -> None:
    from study.store import RESULT_SCHEMA, read_store, rows_to_table

    row = {"study_id": "s", "row_kind": "final", "phase": "final", "dataset": "hyko2", "strategy": "indomain",
           "train_fraction": 1.0, "n_train_images": 4, "subset_hash": "h", "subset_seed": 0, "cell_id": "c",
           "trial_id": "t", "protocol": "paper"}
    old = rows_to_table([row]).drop(["deviations"])
    (tmp_path / "rows").mkdir()
    pq.write_table(old, tmp_path / "rows" / "old.parquet")
    df = read_store(tmp_path)
    assert "deviations" in df.columns and df["deviations"].null_count() == 1
    assert RESULT_SCHEMA.field("deviations").type == pa.string()


def test_the_report_banner_lists_the_deviations() -> None:
    from study.report.html import deviation_banner

    df = pl.DataFrame({"strategy": ["indomain", "indomain", "crossdomain"],
                       "protocol": ["paper-modified", "paper-modified", "tuned"],
                       "deviations": ["epochs=3;width=tiny", "epochs=3;width=tiny", None]})
    banner = deviation_banner(df)
    assert "paper-modified" in banner and "epochs=3;width=tiny" in banner and "crossdomain" not in banner
    assert deviation_banner(df.with_columns(pl.lit("paper").alias("protocol"))) == ""
    assert deviation_banner(df.drop("deviations")) == ""  # a store from before the column
