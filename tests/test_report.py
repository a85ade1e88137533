"""study.report: one self-contained HTML file, the CSV export, and one-line CLI errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import plotly.offline
import polars as pl
import pytest
from store_builder import build_store

from study.report import BAND_META, CURVE_META, analysis, curves_figure
from study.report import cli as report_cli
from study.report import html as report
from study.store import SCHEMA_VERSION, read_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("store"))


def test_main_writes_one_self_contained_file_and_the_csv(store_dir: Path, tmp_path: Path, capsys) -> None:
    out, csv = tmp_path / "r" / "report.html", tmp_path / "s.csv"
    assert report_cli.main([str(store_dir), "--out", str(out), "--csv", str(csv)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temp file or asset folder left
    page = out.read_text(encoding="utf-8")
    assert page.count(plotly.offline.get_plotlyjs()) == 1  # the bundle, embedded exactly once
    assert not re.search(r"<script[^>]+src=", page) and '<script src="http' not in page
    assert not re.search(r"<link[^>]+href=[\"']https?:", page)
    for section in ("Headlines", "Data-efficiency curves", "Paired differences", "Per-class IoU", "Tuning traces",
                    "Hyperparameters", "Summary table", "Compute accounting", "Provenance"):
        assert f">{section}</h2>" in page
    for div in ("curves-hyko2", "paired-hyko2", "perclass-hyko2", "traces-hyko2", "params-hyko2-indomain",
                "params-hyko2-crossdomain", "summary-table", "compute-table"):
        assert f'id="{div}"' in page
    assert "2x fewer labels" in page and "Synthetic data." in page and "0.1.0-test" in page
    printed = capsys.readouterr().out
    assert str(out) in printed and str(csv) in printed


def test_csv_matches_the_summary_frame(store_dir: Path, tmp_path: Path) -> None:
    assert report_cli.main([str(store_dir), "--out", str(tmp_path / "r.html"), "--csv", str(tmp_path / "s.csv")]) == 0
    written = pl.read_csv(tmp_path / "s.csv")
    expected = analysis.cell_summary(read_store(store_dir))
    assert written.columns == expected.columns and len(written) == 6
    for col in expected.columns:
        if expected[col].dtype.is_float():
            assert written[col].to_list() == pytest.approx(expected[col].to_list())
        else:
            assert written[col].cast(pl.String).to_list() == expected[col].cast(pl.String).to_list()


def test_default_paths_are_inside_the_results_dir(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store", strategies=("indomain",), seeds=(0, 1))
    assert report_cli.main([str(store), "--csv"]) == 0
    assert (store / "report.html").is_file() and (store / "summary.csv").is_file()


def test_curve_figure_has_one_tagged_trace_per_strategy(store_dir: Path) -> None:
    fig = curves_figure(analysis.cell_summary(read_store(store_dir)), "hyko2")
    assert sorted(t.name for t in fig.data if t.meta == CURVE_META) == ["crossdomain", "indomain"]
    assert sum(t.meta == BAND_META for t in fig.data) == 2
    assert fig.layout.xaxis.type == "log"
    hover = next(t for t in fig.data if t.meta == CURVE_META).hovertemplate
    assert "images" in hover and "subset" in hover and "seeds" in hover


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.report", *args], cwd=REPO, capture_output=True, text=True)


def test_cli_help_has_examples() -> None:
    res = _cli("--help")
    assert res.returncode == 0 and "examples:" in res.stdout and "--csv" in res.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "version"])
def test_errors_exit_2_with_one_line(case: str, tmp_path: Path, capsys) -> None:
    target = tmp_path / "results"
    if case == "empty":
        (target / "rows").mkdir(parents=True)
    elif case == "version":
        build_store(target, strategies=("indomain",), seeds=(0,))
        (target / "study.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    assert report_cli.main([str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(target) in err


def test_cli_error_in_a_subprocess_and_debug_traceback(tmp_path: Path) -> None:
    res = _cli(str(tmp_path / "nowhere"))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    with pytest.raises(report.HsiStudyError):
        report_cli.main([str(tmp_path / "nowhere"), "--debug"])


def test_store_without_finished_cells_still_reports(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store", strategies=("indomain",), seeds=())
    out, _ = report.write_report(store)
    page = out.read_text(encoding="utf-8")
    assert "No finished cells yet" in page and 'id="traces-hyko2"' in page


def test_backbone_banners_name_the_backbones_that_were_not_the_real_ones() -> None:
    """A random-init crossmodality ViT and the locally pretrained HyperSL are called out; real weights are not."""
    from study.report import backbone_banners

    df = pl.DataFrame({"strategy": ["indomain", "crossmodality", "crossdomain", "crossdomain-fc"],
                       "backbone_pretrained": [None, False, None, None],
                       "backbone_hash": [None, None, "abc123", "abc123"]})
    text = backbone_banners(df, {"settings": {"backbone": None}})
    assert "Random-init backbone" in text and "Locally pretrained HyperSL" in text and "abc123" in text
    given = backbone_banners(df.with_columns(backbone_pretrained=pl.lit(True)),
                              {"settings": {"backbone": "/weights/hypersl.pt"}})
    assert given == ""
    assert backbone_banners(df.filter(pl.col("strategy") == "indomain"), {"settings": {"backbone": None}}) == ""
    assert "Locally" not in backbone_banners(df, {})  # no study.json: nothing is claimed
    # strategies run one at a time: crossdomain with released weights, crossdomain-fc later without
    per = {"settings": {"backbone": None}, "strategy_settings": {"crossdomain": {"backbone": "/w/hypersl.pt"},
                                                                 "crossdomain-fc": {"backbone": None}}}
    text = backbone_banners(df, per)
    assert "crossdomain-fc used" in text and "crossdomain, " not in text and "Indian Pines" in text


def _rows_of(page: str, table_id: str) -> int:
    table = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    return table.count("<tr>") - 1  # minus the header row


def test_summary_and_compute_tables_hold_every_cell(store_dir: Path, tmp_path: Path) -> None:
    out, _ = report.write_report(store_dir, tmp_path / "r.html")
    page = out.read_text(encoding="utf-8")
    assert _rows_of(page, "summary-table") == 6 and _rows_of(page, "compute-table") == 6
    assert "52.0 ± 2.0 %" in page  # mIoU in % with the sign
    assert "Busy fraction" in page and "run-s" in page and "GPU-s" in page
    assert 'id="cross-dataset-table"' not in page and "Across datasets" not in page  # one dataset only


def test_several_datasets_get_the_cross_dataset_table(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store", strategies=("indomain",), seeds=(0, 1))
    df = read_store(store)
    both = pl.concat([df, df.with_columns(pl.lit("hsidrive").alias("dataset"))])
    page, _ = report.build_html(both, store)
    assert _rows_of(page, "cross-dataset-table") == 3 and ">Across datasets</h2>" in page


def test_integer_axes_for_epochs_and_integer_knobs(store_dir: Path) -> None:
    from study.report import plots

    df = read_store(store_dir)
    traces = plots.tuning_traces_figure(analysis.tuning_traces(df), "hyko2")
    assert traces.layout.xaxis.dtick == 1 and traces.layout.xaxis.tickformat == "d"
    trials = analysis.trial_table(df).with_columns(
        (pl.col("trial_id").str.slice(-1).cast(pl.Int32) + 1).alias("freeze_depth"))
    fig = plots.parallel_figure(trials, "hyko2", "indomain", analysis.HYPERPARAMETERS)
    depth = next(d for d in fig.data[0].dimensions if d.label == "freeze_depth")
    assert list(depth.tickvals) == [1, 2, 3, 4]


def test_several_studies_in_one_page(tmp_path: Path) -> None:
    a = build_store(tmp_path / "backbone-a")
    b = build_store(tmp_path / "backbone-b", strategies=("crossdomain",))
    out = tmp_path / "cmp.html"
    assert report_cli.main([str(a), str(b), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    for name in ("indomain [backbone-a]", "crossdomain [backbone-a]", "crossdomain [backbone-b]"):
        assert name in page
    assert _rows_of(page, "summary-table") == 9
    assert "crossdomain [backbone-b] − indomain [backbone-a]" in page or "paired differences to indomain [backbone-a]" \
        in page
    assert str(a) in page and str(b) in page  # both results folders in the provenance


def test_provenance_names_the_commit_and_dirty_flag(store_dir: Path) -> None:
    df = read_store(store_dir).with_columns(pl.lit("0.1.0+gabc123def456.dirty").alias("code_version"))
    page, _ = report.build_html(df, store_dir)
    assert "0.1.0+gabc123def456.dirty" in page and "uncommitted changes" in page


def test_an_unknown_baseline_is_refused_listing_the_strategies_in_the_store(store_dir: Path, tmp_path: Path,
                                                                            capsys) -> None:
    out = tmp_path / "r.html"
    assert report_cli.main([str(store_dir), "--baseline", "nosuch", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--baseline nosuch" in err and "crossdomain, indomain" in err
    assert not out.exists()
    assert report_cli.main([str(store_dir), "--baseline", "crossdomain", "--out", str(out)]) == 0
