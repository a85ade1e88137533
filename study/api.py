"""A small Python API for notebooks: run a study, load its rows, build the report.

Thin wrappers over the command-line entry points, so a notebook and
``hsistudy run`` cannot disagree: :func:`run_study` turns keyword arguments into
exactly the flags ``hsistudy run`` takes (``smoke=True`` -> ``--smoke``,
``max_freeze_depth=0`` -> ``--max-freeze-depth 0``) and runs the same code.

Example::

    from study.api import load_rows, run_study, summary, write_report
    results = run_study(strategy="all", smoke=True, results="results/nb")
    rows = load_rows(results)          # polars DataFrame, one row per epoch / trial / final run
    summary(results)                   # per cell: test mIoU mean, sd, bootstrap CI, ...
    write_report(results)              # -> results/nb/report.html
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study.errors import HsiStudyError
from study.store import Results, read_store


def study_argv(**flags: Any) -> list[str]:
    """Keyword arguments -> ``hsistudy run`` flags: True -> bare flag, False/None -> left out, lists comma-joined."""
    argv: list[str] = []
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, Sequence) and not isinstance(value, str):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def results_of(**flags: Any) -> str | Path:
    """The results location a study with these flags writes to (``results/<study id>`` unless ``results=`` is given)."""
    from study.run import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(study_argv(**flags))).runtime.results


def run_study(**flags: Any) -> str | Path:
    """Run (or resume) a study in this process; returns its results location.

    Raises :class:`~study.errors.HsiStudyError` when the run fails (exit status != 0): the
    message printed on stderr says why. Finished cells are skipped, as on the command line.
    """
    from study import run

    argv = study_argv(**flags)
    status = run.main(argv, own_process=False)  # a second Ctrl+C must not end the notebook's kernel
    if status != 0:
        raise HsiStudyError(f"hsistudy run {' '.join(argv)} exited with status {status} (see the messages above)")
    return results_of(**flags)


def load_rows(results: Results):  # -> polars.DataFrame
    """Every row of a study's Parquet store as a polars DataFrame (``.to_pandas()`` for pandas)."""
    return read_store(results)


def summary(results: Results):  # -> polars.DataFrame
    """Per cell (dataset, strategy, fraction): the report's summary table (test mIoU mean, sd, CI, ...)."""
    from study.report import cell_summary

    return cell_summary(load_rows(results))


def write_report(results: Results | Sequence[Results], out: str | Path | None = None,
                 csv: str | Path | None = None, baseline: str | None = None) -> str | Path:
    """Write the HTML report of one study (or a comparison page of several); returns the page's path.

    ``out`` defaults to ``<results>/report.html`` for one study; a comparison needs ``out``.
    """
    from study.report import html as report

    kwargs: dict[str, Any] = {} if baseline is None else {"baseline": baseline}
    if isinstance(results, (str, Path)) or not isinstance(results, Sequence):
        page, _ = report.write_report(results, out, csv, **kwargs)
        return page
    if out is None:
        raise HsiStudyError("comparing several studies needs out= (the page to write)")
    page, _ = report.write_report(list(results), out, csv, **kwargs)
    return page
