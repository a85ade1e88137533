"""Several studies in one report: label each study and give its strategies distinct names.

Why rename: two studies typically run the same strategy with different settings
(e.g. one strategy with two backbones), and every table and curve of the
report groups by strategy name, so strategy ``S`` of study A and of study B
must not be pooled. Each study is labelled by its folder name (its study id
when folder names collide) and its strategies become ``S [A]``.
Rows keep their seeds and subset hashes, so paired differences across studies
still pair a run with the baseline's run on the same subset and seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from study.store import resolve

STUDY_COLUMN = "study_label"


def folder_name(results: object) -> str:
    """The last path component of a results location (local folder or URI)."""
    loc = resolve(results)
    name = str(loc.name_of(loc.path())).rstrip("/")
    return name.rsplit("/", 1)[-1] or name


def study_labels(results: Sequence[object], frames: Sequence[pl.DataFrame]) -> list[str]:
    """Folder names, unless two collide: then study ids (and, if those collide too, ``#1``, ``#2`` ...)."""
    labels = [folder_name(r) for r in results]
    if len(set(labels)) == len(labels):
        return labels
    ids = [",".join(sorted(f["study_id"].unique().to_list())) for f in frames]
    if len(set(ids)) == len(ids):
        return ids
    return [f"{label} #{i + 1}" for i, label in enumerate(labels)]


def strategy_name(strategy: str, label: str) -> str:
    return f"{strategy} [{label}]"


def base_strategy(name: str) -> str:
    """``S [A]`` -> ``S`` (a plain name is returned unchanged)."""
    return name.split(" [", 1)[0] if name.endswith("]") and " [" in name else name


def combine(labelled: Sequence[tuple[str, pl.DataFrame]]) -> pl.DataFrame:
    """One frame of all studies' rows, strategies renamed per study, the label in :data:`STUDY_COLUMN`."""
    parts = [df.with_columns(pl.lit(label).alias(STUDY_COLUMN),
                             pl.format("{} [{}]", pl.col("strategy"), pl.lit(label)).alias("strategy"))
             for label, df in labelled]
    return pl.concat(parts, how="diagonal_relaxed")


def comparison_baseline(df: pl.DataFrame, baseline: str, labels: Sequence[str]) -> str:
    """The comparison baseline: ``baseline`` if given renamed, else the first study's ``baseline [label]``."""
    present = set(df["strategy"].unique().to_list())
    if baseline in present:
        return baseline
    for label in labels:
        if strategy_name(baseline, label) in present:
            return strategy_name(baseline, label)
    return baseline
