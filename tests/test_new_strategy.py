"""Adding a strategy touches one registry entry (+ its trainable and search space), nothing else.

The throwaway ``probe-fc`` below is registered in a fixture only, with a
setting of its own and a colour, and runs a smoke study and the report end to
end: no module outside the registry needs to know its name. A second test
checks the same promise statically: no module of the framework spells a
registered strategy's name.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from study import strategies
from study.strategies import STRATEGIES, Strategy

ROOT = Path(__file__).resolve().parents[1]
#: modules that must stay strategy-agnostic (the registry, the trainables and search spaces may name them)
AGNOSTIC = sorted(
    [str(p.relative_to(ROOT)) for pkg in ("orchestration", "search", "store", "report", "config", "features")
     for p in (ROOT / "study" / pkg).glob("*.py")] + ["study/run.py", "study/api.py", "study/progress.py"])


@pytest.fixture
def probe_fc(monkeypatch: pytest.MonkeyPatch) -> Strategy:
    """``probe-fc``: a copy of the per-pixel raw-spectra head, registered for this test only."""
    entry = Strategy(
        name="probe-fc",
        description="a throwaway per-pixel probe (test only)",
        trainable="trainables.indomain_fc:train_indomain_fc",
        search_space="search_spaces.indomain_fc:SPACE",
        model_name="fc",
        settings=("feature_dtype",),  # pretend it reads a setting of its own: it keys only its cells
        header="probe head",
        color="#123456",
        gpus_per_trial=0.25,
    )
    monkeypatch.setitem(STRATEGIES, "probe-fc", entry)
    return entry


def test_a_strategy_registered_in_one_place_runs_a_study_and_the_report(
        probe_fc: Strategy, ray_session, tiny_root: Path, tmp_path: Path, capsys) -> None:
    from study.report import write_report
    from study.run import build_parser, main
    from study.store import read_store

    assert "probe-fc" in build_parser().format_help()  # the CLI lists it without knowing it
    results = tmp_path / "res"
    rc = main(["--strategy", "probe-fc", "--data-root", str(tiny_root), "--results", str(results), "--smoke",
               "--fractions", "1.0", "--trials", "2", "--epochs", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "probe head" in out  # the header names its model from the registry entry
    df = read_store(results)
    assert set(df["strategy"]) == {"probe-fc"}
    assert df.filter(pl.col("row_kind") == "final").height == 1 and df.filter(pl.col("row_kind") == "trial").height == 2
    page, _ = write_report(results)
    text = Path(page).read_text()
    assert "probe-fc" in text and "#123456" in text  # its colour comes from its entry


def test_only_its_own_settings_key_a_strategys_cells(probe_fc: Strategy) -> None:
    from study.config import build_config
    from study.data.subsets import make_subset
    from study.orchestration import cell_id

    subset = make_subset("hyko2", [f"s{i}" for i in range(4)], [frozenset({1})] * 4, 1.0, 0)
    a = build_config("smoke", strategies=("probe-fc", "indomain"), dataset="hyko2", results="r")
    b = build_config("smoke", strategies=("probe-fc", "indomain"), dataset="hyko2", results="r",
                     feature_dtype="float32")
    assert a.study_id == b.study_id and cell_id(a, "indomain", subset) == cell_id(b, "indomain", subset)
    assert cell_id(a, "probe-fc", subset) != cell_id(b, "probe-fc", subset)


def test_no_framework_module_names_a_strategy() -> None:
    names = sorted(STRATEGIES, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    found = {path: sorted(set(pattern.findall((ROOT / path).read_text()))) for path in AGNOSTIC}
    assert {p: n for p, n in found.items() if n} == {}
    assert strategies.baseline_strategy() in STRATEGIES
    assert sum(s.baseline for s in STRATEGIES.values()) == 1
