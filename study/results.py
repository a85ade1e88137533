"""The result store: one declared Arrow schema, atomic Parquet parts, one reader.

Every epoch, every tuning trial and every final (re-trained, test-evaluated)
run becomes one row of :data:`RESULT_SCHEMA`. Writers always pass the schema,
so a misspelt or mistyped column fails at write time instead of surfacing as a
confusing null in the report weeks later.

Layout of a results directory::

    <results>/study.json              study settings + schema version
    <results>/rows/<part>.parquet     immutable parts, each written to a temp file then renamed
    <results>/manifests/*.json        training-subset manifests (their hash is in every row)
    <results>/tune/                   Ray Tune experiment folders (checkpoints, state)
    <results>/optuna.journal          Optuna journal storage (open with optuna-dashboard)

Parts are never rewritten, so a crash can lose at most the part being
written, never an earlier one, and readers never see half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from study.errors import HsiStudyError

#: Bump when a column is renamed, removed or changes meaning; readers refuse other versions.
SCHEMA_VERSION = 1

_F = pa.float64()
_I = pa.int32()
_S = pa.string()
_PER_CLASS = pa.list_(pa.float64())

#: Columns of every result row. Row kinds: ``epoch`` (one per reported epoch),
#: ``trial`` (one per tuning trial: its best epoch), ``final`` (one per
#: re-training seed of the chosen config, with test metrics).
RESULT_SCHEMA = pa.schema(
    [
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
        # hyperparameters (null where a strategy has no such knob); the full config is config_json
        pa.field("lr", _F),
        pa.field("weight_decay", _F),
        pa.field("dropout", _F),
        pa.field("head_lr", _F),
        pa.field("backbone_lr", _F),
        pa.field("freeze_depth", _I),
        pa.field("batch_size", _I),
        pa.field("config_json", _S),
        pa.field("train_loss", _F),
        pa.field("val_miou", _F),
        pa.field("val_oa", _F),
        pa.field("val_macc", _F),
        pa.field("val_macro_f1", _F),
        pa.field("val_iou_per_class", _PER_CLASS),
        pa.field("test_miou", _F),
        pa.field("test_oa", _F),
        pa.field("test_macc", _F),
        pa.field("test_macro_f1", _F),
        pa.field("test_iou_per_class", _PER_CLASS),
        pa.field("wall_s", _F),
        pa.field("device_s", _F),
        pa.field("device", _S),
        pa.field("node_id", _S),  # Ray node the run's last epoch ran on
        pa.field("model_name", _S),
        pa.field("n_params", pa.int64()),
        pa.field("backbone_hash", _S),
        pa.field("data_source", _S),
        pa.field("code_version", _S),
        pa.field("error", _S),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)
ROW_KINDS = ("epoch", "trial", "final")
#: Timing/provenance columns that legitimately differ between two identical runs.
TIMING_COLUMNS = ("wall_s", "device_s", "created_at", "trial_id", "device", "node_id")


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


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder + rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_rows(results_dir: Path, rows: Iterable[Mapping[str, Any]], part_name: str, **defaults: Any) -> Path | None:
    """Append rows to the store as one new Parquet part (temp file + rename). None if no rows."""
    table = rows_to_table(rows, **defaults)
    if table.num_rows == 0:
        return None
    rows_dir = Path(results_dir) / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    final = rows_dir / f"{part_name}-{uuid.uuid4().hex[:8]}.parquet"
    fd, tmp = tempfile.mkstemp(dir=rows_dir, prefix=".part.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def part_files(results_dir: Path) -> list[Path]:
    """Finished parts only (temp files start with a dot and are skipped)."""
    return sorted((Path(results_dir) / "rows").glob("[!.]*.parquet"))


def read_table(results_dir: Path) -> pa.Table:
    """All rows of a store as one Arrow table; refuses a store of another schema version."""
    check_store_version(results_dir)
    parts = part_files(results_dir)
    if not parts:
        return RESULT_SCHEMA.empty_table()
    tables = []
    for p in parts:
        t = pq.read_table(p)
        if t.schema.remove_metadata() != RESULT_SCHEMA:
            raise HsiStudyError(
                f"{p}: columns do not match result schema v{SCHEMA_VERSION}; "
                "this part was written by another hsistudy version (move it aside or use that version)"
            )
        tables.append(t)
    return pa.concat_tables(tables)


def read_store(results_dir: Path):  # -> polars.DataFrame (imported lazily: writers need no polars)
    """All rows as a polars DataFrame."""
    import polars as pl

    return pl.from_arrow(read_table(results_dir))


def study_file(results_dir: Path) -> Path:
    return Path(results_dir) / "study.json"


def check_store_version(results_dir: Path) -> None:
    """Raise a clear error if ``results_dir`` was written with another schema version."""
    f = study_file(results_dir)
    if not f.exists():
        return
    try:
        meta = json.loads(f.read_text())
        version = int(meta["schema_version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HsiStudyError(
            f"{f}: not a valid hsistudy study file ({exc}); expected JSON with 'schema_version'"
        ) from None
    if version != SCHEMA_VERSION:
        raise HsiStudyError(
            f"{results_dir}: written with result schema v{version}, this hsistudy reads v{SCHEMA_VERSION}; "
            "use a new --results directory or the hsistudy version that wrote it"
        )


def write_study_file(results_dir: Path, settings: Mapping[str, Any]) -> Path:
    """Record study settings and the schema version (atomically)."""
    payload = {"schema_version": SCHEMA_VERSION, **settings}
    return atomic_write_text(study_file(results_dir), json.dumps(payload, indent=2, sort_keys=True, default=str))
