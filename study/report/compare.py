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


def _variant_key(cell_id: str) -> str:
    """The part of a cell id that is neither strategy, fraction nor subset: ``S-f0.5-<subset>-<key>`` -> key
    (its settings and search space, hashed)."""
    parts = cell_id.rsplit("-", 3)
    return parts[-1] if len(parts) == 4 else cell_id


def split_cell_variants(df: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Cells of one (dataset, strategy, fraction) that differ in anything but the fraction (another search
    space from ``--config``, another ``--backbone``) are not seeds of one cell: every aggregate groups by
    strategy name, so each such variant gets a name of its own, ``S [what differs]``, e.g.
    ``<strategy> [space 3f2a9c…]`` or ``<strategy> [backbone 0be1c4…]``. Stores without such cells come
    back unchanged. Returns the frame and one note per split strategy."""
    from study.strategies import STRATEGIES

    if df.is_empty() or "cell_id" not in df.columns:
        return df, []
    dup = (df.group_by("dataset", "strategy", "train_fraction").agg(pl.col("cell_id").n_unique().alias("n"))
           .filter(pl.col("n") > 1).select("dataset", "strategy").unique().sort("dataset", "strategy"))
    if dup.is_empty():
        return df, []
    names: dict[tuple[str, str], str] = {}
    notes = []
    for dataset, strategy in dup.iter_rows():
        part = df.filter((pl.col("dataset") == dataset) & (pl.col("strategy") == strategy))
        keys = sorted({_variant_key(c) for c in part["cell_id"].unique().to_list()})
        backbones = part["backbone_hash"] if "backbone_hash" in part.columns else [None] * part.height
        hashes = {k: sorted({h for c, h in zip(part["cell_id"], backbones, strict=True)
                             if _variant_key(c) == k and h}) for k in keys}
        entry = STRATEGIES.get(strategy)
        if len({tuple(h) for h in hashes.values()}) == len(keys) and all(len(h) == 1 for h in hashes.values()):
            labels = {k: f"backbone {hashes[k][0][:6]}…" for k in keys}
            what = "backbones"
        elif entry is not None and not entry.settings:  # nothing but the search space keys its cells
            labels, what = {k: f"space {k[:6]}…" for k in keys}, "search spaces"
        else:
            labels, what = {k: f"cells {k[:6]}…" for k in keys}, "search spaces or strategy settings"
        for c in part["cell_id"].unique().to_list():
            names[(dataset, c)] = strategy_name(strategy, labels[_variant_key(c)])
        notes.append(f"{strategy} on {dataset}: the store holds cells of {len(keys)} different {what} (e.g. a "
                     f"changed --config [search_space.{strategy}]); each is its own line, "
                     + ", ".join(strategy_name(strategy, labels[k]) for k in keys))
    key = pl.concat_str("dataset", pl.lit("\x00"), "cell_id")
    mapping = {f"{d}\x00{c}": n for (d, c), n in names.items()}
    return df.with_columns(key.replace_strict(mapping, default=pl.col("strategy")).alias("strategy")), notes


def variant_baseline(df: pl.DataFrame, baseline: str) -> str:
    """``baseline``, or, when :func:`split_cell_variants` split it into variants, the first of them."""
    present = sorted(df["strategy"].unique().to_list()) if "strategy" in df.columns else []
    if baseline in present:
        return baseline
    variants = [s for s in present if base_strategy(s) == baseline and s.startswith(f"{baseline} [")]
    return variants[0] if variants else baseline
