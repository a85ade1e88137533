"""The result store: schema enforcement, atomic parts, version refusal, readers."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from study.errors import HsiStudyError
from study.store import (
    RESULT_SCHEMA,
    SCHEMA_VERSION,
    part_files,
    read_store,
    read_table,
    rows_to_table,
    write_rows,
    write_study_file,
)

BASE = dict(
    study_id="s", row_kind="epoch", phase="tune", dataset="hyko2", strategy="indomain", train_fraction=0.5,
    n_train_images=3, subset_hash="abc", subset_seed=0, cell_id="c", trial_id="t",
)


def test_rows_get_exactly_the_schema_with_nulls_for_missing_columns() -> None:
    t = rows_to_table([{**BASE, "epoch": 1, "val_miou": 0.5, "val_iou_per_class": [math.nan, 0.5, 0.25]}])
    assert t.schema == RESULT_SCHEMA
    row = t.to_pylist()[0]
    assert row["schema_version"] == SCHEMA_VERSION
    assert row["test_miou"] is None and row["freeze_depth"] is None
    assert row["val_iou_per_class"][1:] == [0.5, 0.25]


def test_unknown_column_fails_at_write_time() -> None:
    with pytest.raises(ValueError, match="val_mIoU"):
        rows_to_table([{**BASE, "val_mIoU": 0.5}])


def test_wrong_type_fails_at_write_time() -> None:
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        rows_to_table([{**BASE, "epoch": "first"}])


def test_bad_row_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="row_kind"):
        rows_to_table([{**BASE, "row_kind": "epochs"}])


def test_parts_append_and_read_back_with_polars_and_pyarrow(tmp_path) -> None:
    write_rows(tmp_path, [{**BASE, "epoch": e, "val_miou": e / 10} for e in (1, 2)], "cell-a")
    write_rows(tmp_path, [{**BASE, "row_kind": "final", "phase": "final", "test_miou": 0.7}], "cell-a-final")
    assert write_rows(tmp_path, [], "empty") is None
    assert len(part_files(tmp_path)) == 2
    df = read_store(tmp_path)
    assert df.height == 3
    assert sorted(df["row_kind"].to_list()) == ["epoch", "epoch", "final"]
    assert pq.read_table(part_files(tmp_path)[0]).schema.remove_metadata() == RESULT_SCHEMA


def test_temp_files_are_ignored_by_readers(tmp_path) -> None:
    write_rows(tmp_path, [{**BASE}], "a")
    (tmp_path / "rows" / ".part.half-written.tmp").write_bytes(b"PAR1 garbage")
    assert read_table(tmp_path).num_rows == 1


def test_store_of_another_schema_version_is_refused(tmp_path) -> None:
    write_study_file(tmp_path, {"study_id": "x"})
    meta = json.loads((tmp_path / "study.json").read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "study.json").write_text(json.dumps(meta))
    with pytest.raises(HsiStudyError, match="schema v"):
        read_table(tmp_path)


def test_foreign_part_is_refused_with_its_name(tmp_path) -> None:
    (tmp_path / "rows").mkdir()
    pq.write_table(pa.table({"a": [1]}), tmp_path / "rows" / "foreign.parquet")
    with pytest.raises(HsiStudyError, match="foreign.parquet"):
        read_table(tmp_path)
