"""The result store: where a study's rows live (local folder or object-store URI), the Parquet schema,
rows <-> Tune reports, the study file, the one-writer lock and the checks and errors of every write.

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.store.checks import check_output_file, check_writable
from study.store.errors import disk_full_error, is_disk_full
from study.store.lease import LEASE, results_lock
from study.store.location import (
    Location,
    WorkingCopy,
    atomic_write_bytes,
    atomic_write_text,
    check_results_text,
    is_uri,
    join,
    open_results,
    resolve,
    results_arg,
    write_to,
)
from study.store.records import REPORT_KEYS, TrialLog, replay_from_rows, trial_key, trial_rows
from study.store.results import (
    QUARANTINE,
    RESULT_SCHEMA,
    SCHEMA_VERSION,
    STUDY_FILE,
    TIMING_COLUMNS,
    Results,
    check_store_version,
    part_files,
    part_paths,
    quarantine_corrupt_parts,
    read_store,
    read_study_file,
    read_table,
    rows_to_table,
    write_rows,
    write_study_file,
)

__all__ = [
    "LEASE",
    "Location",
    "QUARANTINE",
    "REPORT_KEYS",
    "RESULT_SCHEMA",
    "Results",
    "SCHEMA_VERSION",
    "STUDY_FILE",
    "TIMING_COLUMNS",
    "TrialLog",
    "WorkingCopy",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_file",
    "check_results_text",
    "check_store_version",
    "check_writable",
    "disk_full_error",
    "is_disk_full",
    "is_uri",
    "join",
    "open_results",
    "part_files",
    "part_paths",
    "quarantine_corrupt_parts",
    "read_store",
    "read_study_file",
    "read_table",
    "replay_from_rows",
    "resolve",
    "results_arg",
    "results_lock",
    "rows_to_table",
    "trial_key",
    "trial_rows",
    "write_rows",
    "write_study_file",
    "write_to",
]
