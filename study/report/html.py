"""``python -m study.report RESULTS_DIR``: one self-contained HTML report of a study (no network needed).

plotly.js is embedded once in the page head and every figure is a div that
calls it, so the file opens offline, can be mailed or archived with the
results, and never depends on a CDN that may change or vanish. The file is
written atomically, so a report being regenerated is never seen half-written.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline
import polars as pl

from study.config import DEFAULT_SEARCH_BATCH
from study.data.specs import SPECS
from study.errors import HsiStudyError
from study.provenance import code_version
from study.report import accounting, analysis, compare, plots
from study.report import tables as report_tables
from study.store import (
    SCHEMA_VERSION,
    STUDY_FILE,
    Results,
    join,
    open_results,
    part_paths,
    read_store,
    resolve,
    write_to,
)
from study.strategies import BACKBONES, STRATEGIES

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:16px 28px;
color:#1d2733;line-height:1.45}
h1{margin-bottom:4px} h2{border-bottom:2px solid #e3e8ef;padding-bottom:4px;margin-top:36px}
.sub{color:#5b6b7c;margin-top:0} nav a{margin-right:14px;color:#1f5fa8;text-decoration:none}
.banner{background:#fff4d6;border:1px solid #e3b341;border-radius:6px;padding:10px 14px;margin:14px 0}
.headlines li{margin:6px 0} .note{color:#5b6b7c;font-size:0.92em}
table.kv td{padding:2px 12px 2px 0;vertical-align:top} pre{background:#f5f7fa;padding:10px;overflow-x:auto}
""" + report_tables.CSS

_NONE = "<p class='note'>No finished cells yet.</p>"
_TITLES = (("headlines", "Headlines"), ("curves", "Data-efficiency curves"), ("paired", "Paired differences"),
           ("perclass", "Per-class IoU"), ("traces", "Tuning traces"), ("params", "Hyperparameters"),
           ("summary", "Summary table"), ("crossdata", "Across datasets"), ("compute", "Compute accounting"),
           ("provenance", "Provenance"))


def load_store(results: Results) -> pl.DataFrame:
    """The store's rows; HsiStudyError (one clear line) for a missing directory, no rows or a bad part."""
    loc = open_results(results)  # a URI: unknown scheme, missing bucket or credentials fail here, in one line
    if not loc.is_dir():
        raise HsiStudyError(f"{loc.show()}: no such results directory; give the --results folder of a study "
                            "(python -m study.run ... --results DIR)")
    if not part_paths(loc):
        raise HsiStudyError(f"{loc.show()}: no result rows in {loc.show('rows')}; run a study into it first "
                            "(python -m study.run --results DIR)")
    try:
        df = read_store(loc)
    except HsiStudyError:
        raise
    except Exception as exc:  # a corrupt or foreign Parquet file: name it instead of a pyarrow traceback
        raise HsiStudyError(f"{loc.show()}: cannot read the result store ({type(exc).__name__}: {exc})") from exc
    if df.is_empty():
        raise HsiStudyError(f"{loc.show()}: the result store is empty; run a study into it first")
    return df


def _study_settings(results: Results) -> dict:
    try:
        return json.loads(resolve(results).read_text(STUDY_FILE))
    except (OSError, ValueError):
        return {}


def search_mode(study_file: dict) -> str:
    """Whether a study's search was deterministic (study.json's settings; older studies: asynchronous)."""
    s = study_file.get("settings", {})
    if not s:
        return "unknown (no study.json)"
    if s.get("protocol") == "paper":
        return "none (paper protocol)"
    if s.get("deterministic"):
        batch = s.get("search_batch") or s.get("max_concurrent") or DEFAULT_SEARCH_BATCH
        return (f"deterministic: proposals in waves of {batch}, ASHA decided in trial order; the same command gives "
                "the same table")
    return "asynchronous (OptunaSearch + ASHA): trials and stops may differ between runs with the machine's timing"


def _div(fig: go.Figure, div_id: str) -> str:
    """A figure as a div + inline newPlot call; plotly.js itself is in the page head, once."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _slug(*parts: object) -> str:
    return "-".join("".join(ch if ch.isalnum() else "_" for ch in str(p)) for p in parts)


def backbone_banners(df: pl.DataFrame, settings: dict | None) -> str:
    """Warnings a reader must see before quoting a transfer curve: which backbones were not the real ones.

    A run whose rows say ``backbone_pretrained = false`` trained a random-init
    backbone (the architecture, not transfer); a strategy whose backbone kind has
    a default-weights note (``study.strategies.BACKBONES``) and ran without
    explicit weights gets that note (e.g. the local sanity HyperSL).
    """
    out = []
    present = df["strategy"].drop_nulls().unique().sort().to_list()
    if "backbone_pretrained" in df.columns:
        random = df.filter(pl.col("backbone_pretrained") == False)["strategy"].unique().sort().to_list()  # noqa: E712
        if random:
            names = html.escape(", ".join(random))
            out.append(f'<div class="banner"><b>Random-init backbone.</b> {names} ran with a randomly initialised '
                       "backbone (<code>--allow-random-init</code>): its curves measure the architecture trained "
                       "from scratch, not transfer from a pretrained foundation model.</div>")
    meta = settings if isinstance(settings, dict) else {}
    study, per = meta.get("settings") or {}, meta.get("strategy_settings") or {}
    notes: dict[str, list[str]] = {}
    for name in present:
        strategy = STRATEGIES.get(compare.base_strategy(name))
        kind = BACKBONES.get(strategy.backbone or "") if strategy else None
        if kind is None or kind.default_note is None:
            continue
        # strategies may have been run one at a time, each with its own weights (or none)
        mine = per.get(compare.base_strategy(name)) if per else (study if kind.weights_setting in study else None)
        if mine is not None and not mine.get(kind.weights_setting):
            notes.setdefault(kind.name, []).append(name)
    for kind_name, names in notes.items():
        hashes = ", ".join(sorted(str(h) for h in df.filter(pl.col("strategy").is_in(names))["backbone_hash"]
                                  .drop_nulls().unique().to_list())) or "unknown"
        note = BACKBONES[kind_name].default_note or ""
        out.append('<div class="banner">' + note.format(strategies=html.escape(", ".join(names)),
                                                        hashes=html.escape(hashes)) + "</div>")
    return "".join(out)


def deviation_banner(df: pl.DataFrame) -> str:
    """A paper study run with ``--allow-deviations``: which settings contradicted the recipe (rows'
    ``protocol = paper-modified`` and ``deviations``), so no one quotes its numbers as the paper's."""
    if "deviations" not in df.columns or "protocol" not in df.columns:
        return ""
    modified = df.filter(pl.col("protocol") == "paper-modified")
    if modified.is_empty():
        return ""
    lists = sorted({str(d) for d in modified["deviations"].drop_nulls().unique().to_list()})
    names = ", ".join(modified["strategy"].drop_nulls().unique().sort().to_list())
    return (f'<div class="banner"><b>Paper recipe, modified.</b> {html.escape(names)} ran the published recipe '
            f"(<code>--protocol paper</code>) with deviations (<code>--allow-deviations</code>): "
            f"<code>{html.escape(' | '.join(lists) or 'unknown')}</code>. Its rows say "
            "<code>protocol = paper-modified</code>; these are not the paper's numbers.</div>")


def _backbone_origins(per_study: dict[str, dict]) -> str:
    """Where Hub-referenced weights came from (study.json ``backbone_origins``: ``hf://OWNER/REPO/FILE@<commit>``)."""
    found = sorted({f"{kind}: {origin}" for meta in per_study.values() if isinstance(meta, dict)
                    for kind, origin in (meta.get("backbone_origins") or {}).items()})
    return ", ".join(found) or "–"


def _code_versions(df: pl.DataFrame) -> str:
    """The code versions of the rows, with what a ``+g<sha>`` / ``.dirty`` suffix means spelled out."""
    vals = [str(v) for v in df["code_version"].drop_nulls().unique().sort().to_list()]
    if not vals:
        return "–"
    text = ", ".join(vals)
    if any(".dirty" in v for v in vals):
        text += "  (.dirty: the checkout had uncommitted changes when it ran)"
    elif not any("+g" in v for v in vals):
        text += "  (no git commit recorded: an installed package, or rows written before commits were recorded)"
    if len(vals) > 1:
        text += "  (SEVERAL code versions wrote these rows)"
    return text


def _provenance(df: pl.DataFrame, results: Results | list[Results]) -> tuple[str, str]:
    """(banner, section): data source (synthetic called out), code version, study id, models, settings."""
    def values(col: str) -> str:
        vals = [str(v) for v in df[col].drop_nulls().unique().sort().to_list()]
        return ", ".join(vals) if vals else "–"

    kinds = ", ".join(f"{k}: {n}" for k, n in df["row_kind"].value_counts().sort("row_kind").iter_rows())
    sources = df["data_source"].drop_nulls().unique().sort().to_list()
    synthetic = [s for s in sources if str(s).startswith("synthetic")]
    banner = ""
    if synthetic:
        banner = (f'<div class="banner"><b>Synthetic data.</b> These results were computed on the embedded '
                  f"synthetic HS3-like data ({html.escape(', '.join(synthetic))}), not on the real HS3-Bench "
                  "datasets: do not quote them as benchmark numbers.</div>")
    many = results if isinstance(results, list) else [results]
    labels = df[compare.STUDY_COLUMN].unique(maintain_order=True).to_list() if len(many) > 1 else [""]
    per_study = {label: _study_settings(r) for label, r in zip(labels, many, strict=True)}
    for label, study_settings in per_study.items():
        part = df.filter(pl.col(compare.STUDY_COLUMN) == label) if label else df
        banner += backbone_banners(part, study_settings)
    banner += deviation_banner(df)
    settings = per_study[""] if len(many) == 1 else {k: v for k, v in per_study.items() if v}
    rows = [("study id", values("study_id")), ("data source", values("data_source") + (
        "  (SYNTHETIC: generated HS3-like scenes, not HS3-Bench)" if synthetic else "")),
        ("code version", _code_versions(df)), ("model", values("model_name")),
        ("parameters", values("n_params")), ("backbone checkpoint hash", values("backbone_hash")),
        ("backbone origin", _backbone_origins(per_study)),
        ("devices", values("device")), ("search", "; ".join(search_mode(v) for v in per_study.values())),
        ("result schema", f"v{SCHEMA_VERSION}"),
        ("rows", f"{len(df)} ({kinds})"),
        ("results directory", ", ".join((loc := resolve(r)).name_of(loc.path()) for r in many)),
        ("report generated", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC") + f" by hsistudy {code_version()}")]
    table = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    details = (f"<details><summary>study settings (study.json)</summary><pre>"
               f"{html.escape(json.dumps(settings, indent=2, sort_keys=True))}</pre></details>" if settings else "")
    return banner, f'<table class="kv">{table}</table>{details}'


def build_html(df: pl.DataFrame, results: Results | list[Results],
               baseline: str = analysis.BASELINE) -> tuple[str, pl.DataFrame]:
    """The report page and the summary frame (the CSV export writes exactly that frame).

    ``results`` is a list when ``df`` combines several studies (:func:`study.report.compare.combine`).
    """
    df, variant_notes = compare.split_cell_variants(df)  # cells of two search spaces are never pooled
    baseline = compare.variant_baseline(df, baseline)
    cells = analysis.cell_summary(df)
    paired = analysis.paired_differences(df, baseline)
    savings = analysis.label_savings(df, baseline, cells=cells)
    acc = accounting.compute_accounting(df)
    traces = analysis.tuning_traces(df)
    trials = analysis.trial_table(df)
    sentences = analysis.headlines(df, baseline, cells=cells, paired=paired, savings=savings, accounting=acc)
    datasets = df["dataset"].unique(maintain_order=True).sort().to_list()
    sections = _figure_sections(df, datasets, cells, paired, traces, trials, baseline)
    _add_tables(sections, df, cells, paired, acc, baseline)
    banner, provenance = _provenance(df, results)
    banner += "".join(f'<div class="banner"><b>Separate cells.</b> {html.escape(n)}.</div>' for n in variant_notes)
    sections["provenance"] = [provenance]
    return _page(df, datasets, baseline, sentences, banner, sections), cells


def _figure_sections(df: pl.DataFrame, datasets: list[str], cells: pl.DataFrame, paired: pl.DataFrame,
                     traces: pl.DataFrame, trials: pl.DataFrame, baseline: str) -> dict[str, list[str]]:
    """The figures of every dataset, per section, in dataset order (div ids name section and dataset)."""
    sec: dict[str, list[str]] = {k: [] for k in ("curves", "paired", "perclass", "traces", "params")}
    for d in datasets:
        sec["curves"].append(_div(plots.curves_figure(cells, d), f"curves-{_slug(d)}"))
        if paired.filter((pl.col("dataset") == d) & (pl.col("n_pairs") > 0)).is_empty():
            sec["paired"].append(f"<p class='note'><b>{html.escape(d)}:</b> no strategy besides "
                                 f"{html.escape(baseline)} has runs paired with it (same seed and subset).</p>")
        else:
            sec["paired"].append(_div(plots.paired_figure(paired, d, baseline), f"paired-{_slug(d)}"))
        names = SPECS[d].class_names if d in SPECS else tuple(f"class {i}" for i in range(256))
        per_class = analysis.per_class_iou(df.filter(pl.col("dataset") == d), names)
        sec["perclass"].append(_div(plots.per_class_heatmap(per_class, d), f"perclass-{_slug(d)}"))
        sec["traces"].append(_div(plots.tuning_traces_figure(traces, d), f"traces-{_slug(d)}"))
        for s in trials.filter(pl.col("dataset") == d)["strategy"].unique().sort().to_list():
            fig = plots.parallel_figure(trials, d, s, analysis.HYPERPARAMETERS)
            sec["params"].append(_div(fig, f"params-{_slug(d, s)}"))
    return sec


def _add_tables(sec: dict[str, list[str]], df: pl.DataFrame, cells: pl.DataFrame, paired: pl.DataFrame,
                acc: pl.DataFrame, baseline: str) -> None:
    """The table sections (a note instead where there is nothing to tabulate), and the paired table after
    the paired figures."""
    sec["summary"] = [report_tables.summary_table(cells) if len(cells) else _NONE]
    sec["crossdata"] = [report_tables.cross_dataset_table(cells) if len(cells) else _NONE]
    sec["compute"] = [(report_tables.time_use_note(df) + report_tables.compute_table(acc)) if len(acc) else _NONE]
    if len(paired):
        sec["paired"].append(report_tables.paired_table(paired, baseline))
    if not sec["params"]:
        sec["params"].append("<p class='note'>No finished tuning trials in the store.</p>")


def _notes(baseline: str) -> dict[str, str]:
    """The note under each section's title: how to read its figure or table."""
    return {
        "curves": "Mean test mIoU over training seeds; the band is the 95 % percentile bootstrap CI of the mean "
                  "(10,000 resamples). Hover a point for images, subset hash and seeds.",
        "paired": f"Each strategy minus {baseline} on the same training subset and seed. p: exact sign-flip "
                  "permutation test of the mean difference, Holm-corrected across the fractions of one curve "
                  "(with n pairs the smallest possible p is 2/2ⁿ).",
        "perclass": "Mean test IoU of each class over seeds; the ignore class and classes absent from a split "
                    "are blank.",
        "traces": "Validation mIoU per epoch of every tuning trial; grey lines ending in ✕ were stopped early "
                  "(by ASHA or patience).",
        "params": "One line per tuning trial, coloured by its best validation mIoU; drag along an axis to filter.",
        "crossdata": "Mean ± sd of test mIoU over seeds for every strategy and labelled fraction, one column per "
                     "dataset (blank: the cell was not run on that dataset).",
        "compute": report_tables.COMPUTE_NOTE,
    }


def _page(df: pl.DataFrame, datasets: list[str], baseline: str, sentences: list[str], banner: str,
          sections: dict[str, list[str]]) -> str:
    """The whole document: title, navigation, banners, headlines, then each section under its title and note."""
    study_ids = ", ".join(df["study_id"].unique().sort().to_list())
    items = "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
    # the cross-dataset table only says something new when the store holds several datasets
    titles = [(k, t) for k, t in _TITLES if k != "crossdata" or len(datasets) > 1]
    nav = "".join(f'<a href="#{k}">{t}</a>' for k, t in titles)
    notes = _notes(baseline)
    body = [f"<h1>hsistudy report: {html.escape(study_ids)}</h1>",
            f'<p class="sub">datasets: {html.escape(", ".join(datasets))} · baseline: {html.escape(baseline)}</p>',
            f"<nav>{nav}</nav>", banner, f'<h2 id="headlines">Headlines</h2><ul class="headlines">{items}</ul>']
    for key, title in titles[1:]:
        body.append(f'<h2 id="{key}">{title}</h2>')
        if key in notes:
            body.append(f'<p class="note">{html.escape(notes[key])}</p>')
        body += sections.get(key, [])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>hsistudy report: {html.escape(study_ids)}</title><style>{_CSS}</style>"
            f"<script type=\"text/javascript\">{plotly.offline.get_plotlyjs()}</script></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def load_studies(results: list[Results], baseline: str = analysis.BASELINE) -> tuple[pl.DataFrame, str]:
    """Several stores as one frame (strategies renamed per study, :mod:`study.report.compare`) and the
    baseline to use."""
    frames = [load_store(r) for r in results]
    labels = compare.study_labels(results, frames)
    df = compare.combine(list(zip(labels, frames, strict=True)))
    return df, compare.comparison_baseline(df, baseline, labels)


def check_baseline(df: pl.DataFrame, baseline: str) -> None:
    """An explicit ``--baseline`` must name a strategy in the store (or a variant of one): else one line
    listing those there are."""
    present = sorted(df["strategy"].unique().to_list())
    if baseline in present or any(compare.base_strategy(s) == baseline for s in present):
        return
    raise HsiStudyError(f"--baseline {baseline}: no such strategy in this store; it holds {', '.join(present)}")


def write_report(results: Results | list[Results], out: Path | str | None = None, csv: Path | str | None = None,
                 baseline: str | None = None) -> tuple[Path | str, Path | str | None]:
    """Build the report (and optionally the summary CSV) for ``results``; both written whole.

    ``results`` may be an object-store URI; ``out`` and ``csv`` may each be a local path or a URI
    (by default they go next to the rows, i.e. into the bucket for a URI store). A list of several
    studies makes one comparison page (default ``<first>/compare.html``). ``baseline`` given: it must be a
    strategy in the store(s) (else HsiStudyError listing them); None: the registry's baseline, if present.
    """
    explicit, baseline = baseline is not None, baseline or analysis.BASELINE
    if isinstance(results, list) and len(results) > 1:
        df, baseline = load_studies(results, baseline)
        default_out = join(results[0], "compare.html")
    else:
        results = results[0] if isinstance(results, list) else results
        df, default_out = load_store(results), join(results, "report.html")
    if explicit:
        check_baseline(df, baseline)
    page, cells = build_html(df, results, baseline)
    out = out if out is not None else default_out
    write_to(out, page.encode("utf-8"))
    if csv is not None:
        write_to(csv, cells.write_csv().encode("utf-8"))
    return out, csv
