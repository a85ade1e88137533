"""The result store: one declared Arrow schema, atomic Parquet parts, one reader.

Every epoch, every tuning trial and every final (re-trained, test-evaluated)
run becomes one row of :data:`RESULT_SCHEMA`. Writers always pass the schema,
so a misspelt or mistyped column fails at write time instead of surfacing as a
confusing null in the report weeks later.

Layout of a results location (a local folder or an object-store URI, see :mod:`study.store.location`)::

    <results>/study.json              study settings + schema version
    <results>/rows/<part>.parquet     immutable parts, each written whole (temp file + rename locally;
                                      one upload on an object store, which shows an object only once complete)
    <results>/manifests/*.json        training-subset manifests (their hash is in every row)
    <results>/tune/                   Ray Tune experiment folders (checkpoints, state)
    <results>/optuna.journal          Optuna journal storage (open with optuna-dashboard)

Parts are never rewritten, so a crash can lose at most the part being
written, never an earlier one, and readers never see half a file. Every
function here takes a local path, a URI or a :class:`study.store.location.Location`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from study.errors import CorruptPartError, HsiStudyError, ResultsWriteError
from study.store.location import Location, resolve

#: What every reader/writer here accepts as the store: a local path, a URI, or a resolved Location.
Results = str | Path | Location

#: Bump when a column is renamed, removed or changes meaning; readers refuse other versions.
SCHEMA_VERSION = 1

_F = pa.float64()
_I = pa.int32()
_S = pa.string()
_PER_CLASS = pa.list_(pa.float64())

#: Columns of every result row, declared in groups by what they hold. Row kinds: ``epoch`` (one per
#: reported epoch), ``trial`` (one per tuning trial: its best epoch), ``final`` (one per re-training seed
#: of the chosen config, with test metrics). The key lists every other module uses (hyperparameters,
#: metrics, run facts) are these groups' names (:mod:`study.store.records`), never lists of their own.
_IDENTITY = [
    pa.field("schema_version", _I, nullable=False),
    pa.field("study_id", _S, nullable=False),
    pa.field("row_kind", _S, nullable=False),
    pa.field("phase", _S, nullable=False),  # "tune" | "final"
    pa.field("dataset", _S, nullable=False),
    pa.field("strategy", _S, nullable=False),
    pa.field("train_fraction", _F, nullable=False),
    pa.field("n_train_images", _I, nullable=False),
    pa.field("subset_hash", _S, nullable=False),
    pa.field("subset_seed", _I, nullable=False),
    pa.field("cell_id", _S, nullable=False),
    pa.field("trial_id", _S, nullable=False),
    pa.field("config_hash", _S),
    pa.field("seed", _I),
    pa.field("status", _S),  # trial rows: completed | stopped_early | error
    pa.field("epoch", _I),  # epoch rows: the epoch; trial/final rows: the best-val epoch
    pa.field("epochs_run", _I),
    pa.field("max_epochs", _I),
]
#: hyperparameters (null where a strategy has no such knob); the full config is config_json
_HYPERPARAMETERS = [
    pa.field("lr", _F),
    pa.field("weight_decay", _F),
    pa.field("dropout", _F),
    pa.field("head_lr", _F),
    pa.field("backbone_lr", _F),
    pa.field("freeze_depth", _I),
    pa.field("batch_size", _I),
]
#: what a trial reports every epoch: training loss and validation metrics (one confusion matrix per split)
_EPOCH_METRICS = [
    pa.field("train_loss", _F),
    pa.field("val_miou", _F),
    pa.field("val_oa", _F),
    pa.field("val_macc", _F),
    pa.field("val_macro_f1", _F),
    pa.field("val_iou_per_class", _PER_CLASS),
]
#: test metrics: final rows only (best-validation checkpoint, evaluated once)
_TEST_METRICS = [
    pa.field("test_miou", _F),
    pa.field("test_oa", _F),
    pa.field("test_macc", _F),
    pa.field("test_macro_f1", _F),
    pa.field("test_iou_per_class", _PER_CLASS),
]
#: facts of the run a trial reports with every epoch: time, place, model, backbone
_RUN_FACTS = [
    pa.field("wall_s", _F),
    pa.field("device_s", _F),
    pa.field("device", _S),
    pa.field("node_id", _S),  # Ray node the run's last epoch ran on
    # where the trial's splits lived (--data-placement, auto resolved): device | memory | stream. Every placement
    # gives the same batches, so it is a fact of the run, like the device, never part of a trial's identity
    pa.field("data_placement", _S),
    pa.field("model_name", _S),
    pa.field("n_params", pa.int64()),
    pa.field("backbone_hash", _S),
    pa.field("backbone_pretrained", pa.bool_()),  # True = released weights, False = a random-init backbone
]
_UTC = pa.timestamp("us", tz="UTC")
_PROVENANCE = [
    pa.field("data_source", _S),
    pa.field("code_version", _S),
    pa.field("error", _S),
    pa.field("created_at", _UTC),
    # trial and final rows: when the run started and ended (UTC), so placement and concurrency show in the data
    pa.field("started_at", _UTC),
    pa.field("ended_at", _UTC),
    # "paper": --protocol paper (the published recipe, verbatim); "paper-modified": the same with the deviations
    # --allow-deviations let through; "recipe": a tuned cell's enqueued first trial, the published recipe;
    # "tuned": a searched trial or the final runs of a tuned cell's best configuration
    pa.field("protocol", _S),
    # paper-modified rows: the settings that contradict the recipe, "name=value" joined by ";" (e.g.
    # "epochs=3;width=tiny;backbone=sanity"); null otherwise
    pa.field("deviations", _S),
    # feature strategies' rows: "cache" (k = 0 trials read exported features) or "compute" (they ran the frozen
    # backbone themselves: --features); null for strategies on raw inputs. Results agree within fp32 rounding
    pa.field("features_mode", _S),
]
RESULT_SCHEMA = pa.schema([*_IDENTITY, *_HYPERPARAMETERS, pa.field("config_json", _S), *_EPOCH_METRICS,
                           *_TEST_METRICS, *_RUN_FACTS, *_PROVENANCE])

HYPERPARAMETERS: tuple[str, ...] = tuple(f.name for f in _HYPERPARAMETERS)
EPOCH_METRICS: tuple[str, ...] = tuple(f.name for f in _EPOCH_METRICS)
TEST_METRICS: tuple[str, ...] = tuple(f.name for f in _TEST_METRICS)
RUN_FACTS: tuple[str, ...] = tuple(f.name for f in _RUN_FACTS)
COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)
ROW_KINDS = ("epoch", "trial", "final")
#: Timing/provenance columns that legitimately differ between two identical runs.
TIMING_COLUMNS = ("wall_s", "device_s", "created_at", "trial_id", "device", "node_id", "started_at", "ended_at",
                  "data_placement")
#: Nullable columns added within schema v1: parts written before them are read with nulls there,
#: so older stores stay readable without a version bump (no column was renamed or changed meaning).
ADDED_COLUMNS = ("backbone_pretrained", "started_at", "ended_at", "protocol", "deviations",
                 "features_mode", "data_placement")


def _with_added_columns(t: pa.Table) -> pa.Table:
    """A part written before :data:`ADDED_COLUMNS` existed -> the current schema (nulls in the new columns)."""
    missing = [n for n in ADDED_COLUMNS if n not in t.schema.names]
    for name in missing:
        field = RESULT_SCHEMA.field(name)
        t = t.append_column(field, pa.nulls(t.num_rows, field.type))
    if missing and set(RESULT_SCHEMA.names) <= set(t.schema.names):  # else the schema check names the problem
        t = t.select(list(RESULT_SCHEMA.names))
    return t


def _coerce(row: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"result row has columns not in RESULT_SCHEMA: {sorted(unknown)}")
    out = {name: row.get(name, defaults.get(name)) for name in COLUMNS}
    out["schema_version"] = SCHEMA_VERSION
    if out["row_kind"] not in ROW_KINDS:
        raise ValueError(f"row_kind must be one of {ROW_KINDS}, got {out['row_kind']!r}")
    if out["created_at"] is None:
        out["created_at"] = datetime.now(UTC)
    return out


def rows_to_table(rows: Iterable[Mapping[str, Any]], **defaults: Any) -> pa.Table:
    """Rows (dicts) -> an Arrow table of exactly :data:`RESULT_SCHEMA` (missing columns null)."""
    return pa.Table.from_pylist([_coerce(r, defaults) for r in rows], schema=RESULT_SCHEMA)


def write_rows(results_dir: Results, rows: Iterable[Mapping[str, Any]], part_name: str,
               **defaults: Any) -> str | None:
    """Append rows to the store as one new Parquet part, written whole (see module docstring). None if no rows.

    The part is serialised in memory first (parts are one trial: kilobytes), so the file system sees a
    single complete write: a local temp file + rename, or one object upload.
    """
    table = rows_to_table(rows, **defaults)
    if table.num_rows == 0:
        return None
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    loc = resolve(results_dir)
    try:
        return loc.write_bytes(f"rows/{part_name}-{uuid.uuid4().hex[:8]}.parquet", buf.getvalue().to_pybytes())
    except ResultsWriteError as exc:  # say what is safe: every earlier part is whole and stays
        raise ResultsWriteError(
            f"{exc}. Every trial stored before this one is kept in {loc.show('rows')}; once fixed, re-run the "
            "same command: stored trials are not trained again, the rest are", exc.path, exc.errno) from exc


def part_paths(results_dir: Results) -> list[str]:
    """Finished parts only, as paths on the location's filesystem (temp files start with a dot: skipped)."""
    return resolve(results_dir).list_files("rows", ".parquet")


def part_files(results_dir: str | Path) -> list[Path]:
    """Finished parts of a local store as Paths (scripts and tests that open or delete single parts)."""
    return [Path(p) for p in part_paths(resolve(results_dir).local())]


#: Sub-folder of ``rows/`` where :func:`quarantine_corrupt_parts` moves unreadable parts (never deleted).
QUARANTINE = "quarantine"
#: The fix named in every corrupt-part message (the CLIs that offer it).
REPAIR_HINT = (f"move it aside (its trial is trained again on the next run): python -m study.run ... --repair, "
               f"or python -m study.report ... --skip-corrupt, moves unreadable parts into rows/{QUARANTINE}/ "
               "(nothing is deleted)")


def _read_part(loc: Location, path: str) -> pa.Table:
    with loc.fs.open_input_file(path) as fh:
        try:
            t = _with_added_columns(pq.read_table(fh))
        except (pa.ArrowException, OSError, ValueError) as exc:  # truncated / not Parquet: name the part
            cause = " ".join(str(exc).removeprefix("Could not open Parquet input source '<Buffer>': ").split())
            cause = cause[:200] or type(exc).__name__
            raise CorruptPartError(
                f"{loc.name_of(path)}: not a readable Parquet part ({cause}); it is truncated or corrupt "
                f"(e.g. the disk filled up or a copy was interrupted). Fix: {REPAIR_HINT}", loc.name_of(path)
            ) from exc
    if t.schema.remove_metadata() != RESULT_SCHEMA:
        raise HsiStudyError(
            f"{loc.name_of(path)}: columns do not match "
            f"result schema v{SCHEMA_VERSION}; this part was written by another hsistudy version "
            "(move it aside or use that version)"
        )
    return t


def read_table(results_dir: Results) -> pa.Table:
    """All rows of a store as one Arrow table; refuses a store of another schema version.

    An unreadable part raises :class:`CorruptPartError` naming it (all of them, when several) and the
    fix, :func:`quarantine_corrupt_parts`.
    """
    loc = resolve(results_dir)
    check_store_version(loc)
    parts = part_paths(loc)
    if not parts:
        return RESULT_SCHEMA.empty_table()
    read = _try_read_all(loc, parts)
    bad = [r for r in read if isinstance(r, CorruptPartError)]
    if len(bad) == 1:
        raise bad[0]
    if bad:
        shown = ", ".join(b.path for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CorruptPartError(f"{len(bad)} result parts are not readable Parquet ({shown}); first: {bad[0]}",
                               bad[0].path)
    return pa.concat_tables([r for r in read if isinstance(r, pa.Table)])


def _try_read_all(loc: Location, parts: list[str]) -> list[pa.Table | CorruptPartError]:
    """Every part read, a corrupt one as its error (so all of them can be named at once).

    On an object store every part is one GET with its latency, so parts are fetched by 16 threads.
    """
    def one(path: str) -> pa.Table | CorruptPartError:
        try:
            return _read_part(loc, path)
        except CorruptPartError as exc:
            return exc

    if loc.is_local:
        return [one(p) for p in parts]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, parts))


def quarantine_corrupt_parts(results_dir: Results) -> list[str]:
    """Move every unreadable part into ``rows/quarantine/`` (never delete); returns their new names.

    Why: a truncated part (a full disk, an interrupted copy) makes every read of the store fail. Moved
    aside, the store reads again and the trial that part held counts as not run, so the next
    ``study.run`` trains it again. Parts of another schema version are readable and are not moved
    (their message says to use that version). Works on local folders and object stores alike.
    """
    loc = resolve(results_dir)
    parts = part_paths(loc)
    moved = []
    for path, read in zip(parts, _try_read_all(loc, parts), strict=True):
        if not isinstance(read, CorruptPartError):
            continue
        name = path.rsplit("/", 1)[-1]
        rel = f"rows/{QUARANTINE}/{name}"
        if loc.exists(rel):  # a part of the same name moved before: keep both
            rel = f"rows/{QUARANTINE}/{name.removesuffix('.parquet')}-{uuid.uuid4().hex[:8]}.parquet"
        try:
            moved.append(loc.name_of(loc.move_file(path, rel)))
        except OSError as exc:
            raise ResultsWriteError(f"cannot move the unreadable part {loc.name_of(path)} to {loc.show(rel)} "
                                    f"({' '.join(str(exc).split())[:200]}); move it aside by hand", path,
                                    getattr(exc, "errno", None)) from exc
    return moved


def read_store(results_dir: Results):  # -> polars.DataFrame (imported lazily: writers need no polars)
    """All rows as a polars DataFrame."""
    import polars as pl

    return pl.from_arrow(read_table(results_dir))


STUDY_FILE = "study.json"


def check_store_version(results_dir: Results) -> None:
    """Raise a clear error if ``results_dir`` was written with another schema version."""
    loc = resolve(results_dir)
    try:
        text = loc.read_text(STUDY_FILE)
    except FileNotFoundError:
        return
    try:
        meta = json.loads(text)
        version = int(meta["schema_version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HsiStudyError(
            f"{loc.show(STUDY_FILE)}: not a valid hsistudy study file ({exc}); expected JSON with 'schema_version'"
        ) from None
    if version != SCHEMA_VERSION:
        raise HsiStudyError(
            f"{loc.show()}: written with result schema v{version}, this hsistudy reads v{SCHEMA_VERSION}; "
            "use a new --results location or the hsistudy version that wrote it"
        )


def write_study_file(results_dir: Results, settings: Mapping[str, Any]) -> str:
    """Record study settings and the schema version (written whole)."""
    payload = {"schema_version": SCHEMA_VERSION, **settings}
    return resolve(results_dir).write_text(STUDY_FILE, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_study_file(results: Location) -> dict[str, Any]:
    """The folder's study.json as the last run left it ({} when there is none or it is unreadable)."""
    try:
        previous = json.loads(results.read_text(STUDY_FILE))
    except (FileNotFoundError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}
