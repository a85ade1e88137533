"""The ``hsistudy`` console script (study.cli), the notebook API (study.api) and study.provenance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from store_builder import build_store

from study import api, cli, provenance

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand_with_a_description(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("run", "report", "prepare", "features", "pretrain", "bench"):
        assert f"  {name} " in out
    assert cli.main([]) == 2


def test_every_subcommand_module_has_main() -> None:
    import importlib

    for name, (module, _) in cli.COMMANDS.items():
        if name != "bench":
            assert callable(importlib.import_module(module).main), module


def test_subcommand_help_is_the_module_help() -> None:
    res = subprocess.run([sys.executable, "-m", "study.cli", "run", "--help"], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == 0 and "--smoke" in res.stdout and "examples:" in res.stdout


@pytest.mark.parametrize("module", ["study.run", "study.report", "study.prepare", "study.features",
                                    "study.pretrain"])
def test_every_python_m_entry_point_answers_help(module: str) -> None:
    """The commands users type stay as they are after the move into role packages (``python -m``)."""
    res = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and f"python -m {module}" in res.stdout and "examples:" in res.stdout, res.stderr


def test_unknown_command_is_one_line(capsys) -> None:
    assert cli.main(["fly"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'fly'" in err and err.count("\n") == 1


def test_bench_outside_a_checkout_says_source_tree_only(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["bench", "--only", "feature_cache"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_report_subcommand_and_api(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store", strategies=("indomain",), seeds=(0, 1))
    assert cli.main(["report", str(store)]) == 0 and (store / "report.html").is_file()
    rows = api.load_rows(store)
    assert {"epoch", "trial", "final"} == set(rows["row_kind"].unique().to_list())
    assert len(api.summary(store)) == 3
    assert Path(api.write_report(store, tmp_path / "nb.html")).is_file()


def test_study_argv_maps_keywords_to_flags() -> None:
    argv = api.study_argv(strategy=["indomain", "crossdomain"], smoke=True, demo=False, max_freeze_depth=0,
                          results=Path("r"), backbone=None)
    assert argv == ["--strategy", "indomain,crossdomain", "--smoke", "--max-freeze-depth", "0", "--results", "r"]
    assert str(api.results_of(strategy="indomain", smoke=True, results="r/x")) == "r/x"


def test_code_version_names_the_commit_of_this_checkout(monkeypatch) -> None:
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if sha.returncode != 0:
        pytest.skip("not a git checkout")
    described = provenance.git_describe()
    assert described is not None and described.removesuffix(".dirty") == f"g{sha.stdout.strip()}"
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version().startswith("0.1.0+g")
        monkeypatch.setenv(provenance.ENV_VAR, "0.1.0+gfeedbeef")
        provenance.code_version.cache_clear()
        assert provenance.code_version() == "0.1.0+gfeedbeef"
    finally:
        provenance.code_version.cache_clear()


def test_a_package_outside_its_checkout_reports_the_plain_version(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "sub" / "study").mkdir(parents=True)  # a venv inside some other repository
    assert provenance.git_describe(tmp_path / "sub" / "study") is None
