"""``python -m study.report``: the command line of :func:`study.report.html.write_report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.errors import HsiStudyError
from study.report.html import write_report
from study.store import check_output_file, is_uri, join, quarantine_corrupt_parts, results_arg
from study.strategies import baseline_strategy

EXAMPLES = """\
examples:
  python -m study.report results/demo
      writes results/demo/report.html (open it in any browser, no network needed)
  python -m study.report results/hyko2 --out /tmp/hyko2.html --csv
      report to /tmp/hyko2.html, summary table to results/hyko2/summary.csv
  python -m study.report results/hyko2 --csv summary.csv --baseline STRATEGY
      the summary table as CSV for a spreadsheet; paired differences against STRATEGY instead of the default
  python -m study.report s3://my-bucket/studies/hyko2 --out hyko2.html
      a study stored in a bucket, read in place; the report is written locally (default: into the bucket)
  python -m study.report results/backbone-a results/backbone-b --out compare.html
      several studies in one page: each labelled by its folder, strategies named e.g. "STRATEGY [backbone-a]"
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.report",
        description="Write one self-contained HTML report (data-efficiency curves with bootstrap CIs, paired "
        "differences, per-class IoU, tuning traces, hyperparameters, summary and compute tables) from a study's "
        "Parquet result store. The page embeds plotly.js and opens without network access.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=results_arg, metavar="RESULTS_DIR", nargs="+",
                   help="a study's results folder or object-store URI (has rows/); several: one comparison page")
    p.add_argument("--out", type=results_arg, default=None,
                   help="HTML file (local path or URI) to write (default RESULTS_DIR/report.html; "
                   "with several studies: the first one's compare.html)")
    p.add_argument("--csv", nargs="?", const="", default=None, metavar="PATH",
                   help="also write the summary table as CSV (default path RESULTS_DIR/summary.csv)")
    p.add_argument("--baseline", default=None,
                   help=f"strategy the others are compared with (default {baseline_strategy()})")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="move unreadable (truncated, corrupt) Parquet parts into RESULTS_DIR/rows/quarantine/ "
                   "first and report the rest (nothing is deleted; study.run trains those trials again)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    studies, args.results = args.results, args.results[0]  # several: one comparison page, defaults beside the first
    csv = None if args.csv is None else results_arg(args.csv) if args.csv else join(args.results, "summary.csv")
    try:
        # paths the user gave are checked before any work (a folder, under a file, read-only); the defaults
        # go into RESULTS_DIR, whose absence load_store reports
        for target, flag, example in ((args.out, "--out", "report.html"), (args.csv and csv, "--csv", "summary.csv")):
            if target:
                check_output_file(target, flag, example)
        if args.skip_corrupt:
            for moved in (m for r in studies for m in quarantine_corrupt_parts(r)):
                print(f"unreadable part moved to {moved}", file=sys.stderr)
        out, csv_out = write_report(studies if len(studies) > 1 else args.results, args.out, csv, args.baseline)
    except HsiStudyError as exc:
        if args.debug:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    size = "" if is_uri(out) else f"{Path(out).stat().st_size / 1e6:.1f} MB, "
    print(f"report written to {out} ({size}opens offline)")
    if csv_out is not None:
        print(f"summary table written to {csv_out}")
    return 0

