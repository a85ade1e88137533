"""--config study.toml: settings and search-space overrides from a file, keyed into cell ids; --print-config."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import polars as pl
import pytest

from study.run import build_parser, config_from_args, main, parse_args
from study.store import read_store

SPACE = """
[search_space.indomain]
lr = {type = "float", low = 1e-4, high = 1e-2, log = true}
dropout = {type="float", low=0, high=0.5, step=0.05}
weight_decay = {type = "categorical", choices = [0.0, 1e-4]}
"""


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, needles", [
    ("[search_space.nope]\nlr = {low = 1}\n", ["[search_space.nope]", "unknown strategy"]),
    ("[search_space.indomain]\nfoo = {type = 'float', low = 0, high = 1}\n", ["foo", "searchable: dropout"]),
    ("[search_space.indomain]\nlr = {low = 1e-2, high = 1e-4}\n", ["lr", "low 0.01 > high 0.0001", "make low <= high"]),
    ("[search_space.indomain]\nlr = {low = 0, high = 1e-2, log = true}\n", ["lr", "log = true needs low > 0"]),
    ("[search_space.indomain]\nlr = {type = 'beta', low = 0, high = 1}\n", ["unknown type 'beta'"]),
    ("[search_space.indomain]\nlr = {lo = 0}\n", ["unknown key(s) lo"]),
    ("trails = 3\n", ["unknown setting 'trails'", "valid settings"]),
    ("gpus = 'maybe'\n", ["gpus = 'maybe'", "one of auto, on, off"]),
    ("x = [\n", ["not valid TOML"]),
    ('trials = "many"\n', ["trials = 'many'", "--trials takes a whole number"]),
    ("epochs = 2.5\n", ["epochs = 2.5", "--epochs takes a whole number"]),
    ('loader_memory_gib = "lots"\n', ["loader_memory_gib = 'lots'", "takes a number"]),
])
def test_bad_entries_are_one_line_naming_file_key_and_fix(tmp_path: Path, capsys, text: str, needles) -> None:
    path = _write(tmp_path, text)
    assert main(["--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err
    assert all(n in err for n in needles), err


def test_flags_win_over_the_file_and_the_file_over_presets(tmp_path: Path) -> None:
    path = _write(tmp_path, "smoke = true\ntrials = 5\nmax-freeze-depth = 0\nfractions = [0.25, 1.0]\n"
                            "log_to = []\n")
    cfg = config_from_args(parse_args(["--config", str(path), "--trials", "7"]))
    assert cfg.budget.trials == 7 and cfg.data.fractions == (0.25, 1.0) and cfg.preset == "smoke"
    cfg = config_from_args(parse_args(["--config", str(path)]))
    assert cfg.budget.trials == 5 and cfg.budget.epochs == 2  # epochs from the smoke preset


def test_print_config_is_a_study_file_that_gives_the_same_config(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, "smoke = true\n" + SPACE)
    assert main(["--config", str(path), "--print-config"]) == 0
    printed = capsys.readouterr().out
    data = tomllib.loads(printed)
    assert data["search_space"]["indomain"]["dropout"] == {"type": "float", "low": 0.0, "high": 0.5, "log": False,
                                                           "step": 0.05}
    again = _write(tmp_path, printed, "again.toml")
    a = config_from_args(parse_args(["--config", str(path)]))
    b = config_from_args(parse_args(["--config", str(again)]))
    assert a.settings() == b.settings() and a.search_spaces == b.search_spaces
    assert main(["--config", str(path), "--print-config", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["trials"] == 2


def test_only_a_changed_space_changes_cell_ids(tmp_path: Path) -> None:
    from study.data.subsets import make_subset
    from study.orchestration import cell_id
    from study.strategies import get_strategy

    subset = make_subset("hyko2", [f"s{i}" for i in range(4)], [frozenset({1})] * 4, 1.0, 0)
    builtin = config_from_args(build_parser().parse_args(["--smoke"]))
    space = get_strategy("indomain").load_search_space()
    same = _write(tmp_path, f"[search_space.indomain]\nlr = {{low = {space['lr'].low}, high = {space['lr'].high}}}\n")
    wider = _write(tmp_path, "[search_space.indomain]\nlr = {high = 0.1}\n", "wider.toml")
    cfg_same = config_from_args(parse_args(["--smoke", "--config", str(same)]))
    cfg_wider = config_from_args(parse_args(["--smoke", "--config", str(wider)]))
    assert cell_id(cfg_same, "indomain", subset) == cell_id(builtin, "indomain", subset)
    assert cell_id(cfg_wider, "indomain", subset) != cell_id(builtin, "indomain", subset)
    assert cell_id(cfg_wider, "indomain", subset, legacy=True) != cell_id(builtin, "indomain", subset, legacy=True)
    assert cfg_wider.study_id == builtin.study_id  # a space keys its strategy's cells, not the study
    with pytest.raises(Exception, match="protocol paper"):
        config_from_args(parse_args(["--smoke", "--protocol", "paper", "--config", str(wider)]))


def test_a_changed_bound_trains_again_and_an_unchanged_file_skips(ray_session, tiny_root: Path, tmp_path: Path,
                                                                   capsys) -> None:
    results = tmp_path / "res"
    base = ["--strategy", "indomain", "--smoke", "--fractions", "1.0", "--trials", "2", "--epochs", "2",
            "--data-root", str(tiny_root), "--results", str(results)]
    first = _write(tmp_path, "[search_space.indomain]\nlr = {low = 1e-3, high = 2e-3}\n")
    assert main([*base, "--config", str(first)]) == 0, capsys.readouterr().out
    rows = read_store(results)
    tuned = rows.filter((pl.col("row_kind") == "trial") & (pl.col("protocol") == "tuned"))
    assert tuned["lr"].is_between(1e-3, 2e-3).all()
    study = json.loads((results / "study.json").read_text())
    assert study["search_spaces"]["indomain"]["lr"]["high"] == 2e-3
    capsys.readouterr()

    assert main([*base, "--config", str(first)]) == 0  # unchanged: skipped
    assert "already finished" in capsys.readouterr().out and read_store(results).height == rows.height

    changed = _write(tmp_path, "[search_space.indomain]\nlr = {low = 1e-3, high = 3e-3}\n", "changed.toml")
    assert main([*base, "--config", str(changed)]) == 0
    out = capsys.readouterr().out
    assert "already finished" not in out
    after = read_store(results)
    assert after["cell_id"].n_unique() == 2 and after.filter(pl.col("row_kind") == "final").height == 2
