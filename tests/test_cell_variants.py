"""Cells that differ in anything but the fraction (a changed --config search space, another backbone) are
never pooled as if they were seeds of one cell: every summary, table, curve and CSV keeps them apart."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from store_builder import build_store

from study.report import cli as report_cli
from study.report import compare, print_summary
from study.report.summary import summary_frame
from study.store import read_store


def _two_spaces(root: Path) -> Path:
    """indomain run twice into one store, the second time with a changed [search_space.indomain] (new cell
    ids, same dataset, strategy and fractions), each with one final seed."""
    build_store(root, strategies=("indomain",), seeds=(0,), cell_key="aaaa111111")
    return build_store(root, strategies=("indomain",), seeds=(0,), cell_key="bbbb222222")


def test_the_console_summary_keeps_two_search_spaces_apart(tmp_path: Path, capsys) -> None:
    root = _two_spaces(tmp_path / "s")
    frame = summary_frame(root)
    assert frame.height == 6  # 3 fractions x 2 spaces, never 3 lines of "n=2"
    assert set(frame["seeds"].to_list()) == {1}
    assert sorted(frame["strategy"].unique().to_list()) == ["indomain [space aaaa11…]", "indomain [space bbbb22…]"]
    print_summary(root)
    out = capsys.readouterr().out
    assert "(n=2)" not in out and "note: indomain on hyko2: the store holds cells of 2 different search spaces" in out


def test_the_report_csv_and_curves_keep_two_search_spaces_apart(tmp_path: Path) -> None:
    root = _two_spaces(tmp_path / "s")
    out, csv = tmp_path / "r.html", tmp_path / "s.csv"
    assert report_cli.main([str(root), "--out", str(out), "--csv", str(csv)]) == 0
    written = pl.read_csv(csv)
    assert written.height == 6 and set(written["seeds"].to_list()) == {1}
    page = out.read_text(encoding="utf-8")
    assert "Separate cells." in page and "indomain [space bbbb22…]" in page


def test_a_store_of_one_space_is_unchanged() -> None:
    df = pl.DataFrame({"dataset": ["hyko2"] * 2, "strategy": ["indomain"] * 2, "train_fraction": [0.5, 1.0],
                       "cell_id": ["indomain-f0.5-abcd1234-k1", "indomain-f1-abcd5678-k1"],
                       "backbone_hash": [None, None]})
    assert compare.split_cell_variants(df) == (df, [])


def test_two_backbones_are_labelled_by_backbone(tmp_path: Path) -> None:
    df = read_store(_two_spaces(tmp_path / "s"))
    df = df.with_columns(pl.when(pl.col("cell_id").str.ends_with("aaaa111111")).then(pl.lit("0be1c4ffff"))
                         .otherwise(pl.lit("77aa00ffff")).alias("backbone_hash"))
    split, notes = compare.split_cell_variants(df)
    assert sorted(split["strategy"].unique().to_list()) == ["indomain [backbone 0be1c4…]",
                                                             "indomain [backbone 77aa00…]"]
    assert "2 different backbones" in notes[0]
