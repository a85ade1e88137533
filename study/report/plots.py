"""Plotly figures from :mod:`study.report.analysis` frames (no torch, no Ray).

Every figure is a pure function of an analysis frame, so the report (and a
notebook) can draw the same picture from a store on any laptop. Metric values
arrive as fractions and are shown in percent / mIoU points.

Trace ``meta`` tags make figures checkable by machine (the browser test counts
them): :data:`CURVE_META` marks one data-efficiency line per strategy,
:data:`BAND_META` its CI band, which must not be mistaken for a strategy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from study.report.analysis import fmt_fraction
from study.strategies import STRATEGIES

CURVE_META = "strategy-curve"
BAND_META = "ci-band"
_FALLBACK = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
STOPPED_COLOR = "#9a9a9a"


def strategy_color(strategy: str, order: Sequence[str] = ()) -> str:
    """A stable colour: a registered strategy's own (``Strategy.color``), others cycle through a fallback palette
    (strategies in an old store that the registry no longer has)."""
    if strategy in STRATEGIES:
        return STRATEGIES[strategy].color
    unknown = [s for s in order if s not in STRATEGIES]
    return _FALLBACK[(unknown.index(strategy) if strategy in unknown else 0) % len(_FALLBACK)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _fraction_axis(fractions: Sequence[float]) -> dict:
    """Log x axis ticked at the study's own fractions (labels in percent), the natural scale of label budgets."""
    fr = sorted(set(fractions))
    return dict(type="log", tickvals=fr, ticktext=[fmt_fraction(f) for f in fr], title="labelled training images")


def _empty(message: str, height: int = 160) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(height=height, xaxis_visible=False, yaxis_visible=False, template="plotly_white")
    return fig


def curves_figure(cells: pl.DataFrame, dataset: str) -> go.Figure:
    """Test mIoU vs labelled fraction (log x): mean over seeds with bootstrap 95 % CI band, one line per strategy.

    Hover shows the cell's images, subset hash and seeds, the facts a reader needs to trust a point.
    """
    part = cells.filter(pl.col("dataset") == dataset).sort("train_fraction")
    if part.is_empty():
        return _empty(f"{dataset}: no finished cells yet")
    strategies = part["strategy"].unique(maintain_order=True).to_list()
    fig = go.Figure()
    for s in strategies:
        c = part.filter(pl.col("strategy") == s)
        color = strategy_color(s, strategies)
        x = c["train_fraction"].to_list()
        lo = [100 * v for v in c["test_miou_ci_low"].to_list()]
        hi = [100 * v for v in c["test_miou_ci_high"].to_list()]
        fig.add_trace(go.Scatter(
            x=x + x[::-1], y=hi + lo[::-1], mode="lines", fill="toself", fillcolor=_rgba(color, 0.18),
            line=dict(width=0), hoverinfo="skip", showlegend=False, name=f"{s} 95 % CI", meta=BAND_META, legendgroup=s))
        custom = list(zip(c["n_train_images"].to_list(), c["subset_hash"].to_list(), c["seeds"].to_list(),
                          lo, hi, [100 * (v or 0.0) for v in c["test_miou_std"].to_list()], strict=True))
        fig.add_trace(go.Scatter(
            x=x, y=[100 * v for v in c["test_miou_mean"].to_list()], mode="lines+markers", name=s,
            meta=CURVE_META, legendgroup=s, line=dict(color=color, width=2.5), marker=dict(size=8),
            customdata=custom,
            hovertemplate=(f"<b>{s}</b><br>fraction %{{x:.3g}} · %{{customdata[0]}} images"
                           "<br>test mIoU %{y:.1f} % (sd %{customdata[5]:.1f})"
                           "<br>95 % CI [%{customdata[3]:.1f}, %{customdata[4]:.1f}]"
                           "<br>seeds %{customdata[2]} · subset %{customdata[1]}<extra></extra>")))
    fig.update_layout(title=f"{dataset}: test mIoU vs labelled data (mean over seeds, 95 % bootstrap CI)",
                      xaxis=_fraction_axis(part["train_fraction"].to_list()), yaxis_title="test mIoU (%)",
                      template="plotly_white", height=460, legend_title="strategy", hovermode="closest")
    return fig


def paired_figure(paired: pl.DataFrame, dataset: str, baseline: str) -> go.Figure:
    """Strategy − baseline test mIoU (points) per fraction, paired by seed and subset, with CI and Holm p."""
    part = paired.filter((pl.col("dataset") == dataset) & (pl.col("n_pairs") > 0)).sort("train_fraction")
    if part.is_empty():
        return _empty(f"{dataset}: no strategy besides {baseline} has runs paired with it (same seed and subset)")
    strategies = part["strategy"].unique(maintain_order=True).to_list()
    fig = go.Figure()
    for s in strategies:
        c = part.filter(pl.col("strategy") == s)
        mean = [100 * v for v in c["mean_diff"].to_list()]
        custom = list(zip(c["n_pairs"].to_list(), c["p_value"].to_list(), c["p_holm"].to_list(),
                          [100 * v for v in c["ci_low"].to_list()], [100 * v for v in c["ci_high"].to_list()],
                          strict=True))
        fig.add_trace(go.Scatter(
            x=c["train_fraction"].to_list(), y=mean, mode="lines+markers", name=s, meta=CURVE_META,
            line=dict(color=strategy_color(s, strategies)), customdata=custom,
            error_y=dict(type="data", symmetric=False, array=[h - m for h, m in zip([x[4] for x in custom], mean,
                                                                                  strict=True)],
                         arrayminus=[m - lo for m, lo in zip(mean, [x[3] for x in custom], strict=True)]),
            hovertemplate=(f"<b>{s} − {baseline}</b><br>fraction %{{x:.3g}}<br>%{{y:+.1f}} mIoU points"
                           "<br>95 % CI [%{customdata[3]:+.1f}, %{customdata[4]:+.1f}]"
                           "<br>p = %{customdata[1]:.3g} (Holm %{customdata[2]:.3g}), %{customdata[0]} pairs"
                           "<extra></extra>")))
    fig.add_hline(y=0, line=dict(color="#444", dash="dot"))
    fig.update_layout(title=f"{dataset}: paired difference to {baseline} (test mIoU points, 95 % CI)",
                      xaxis=_fraction_axis(part["train_fraction"].to_list()),
                      yaxis_title=f"Δ test mIoU vs {baseline} (points)", template="plotly_white", height=420)
    return fig


def per_class_heatmap(per_class: pl.DataFrame, dataset: str) -> go.Figure:
    """Mean test IoU per class (columns) for every strategy and fraction (rows): where the labels pay off."""
    part = per_class.filter(pl.col("dataset") == dataset)
    if part.is_empty():
        return _empty(f"{dataset}: no per-class test IoU in the store")
    classes = part.select("class_id", "class_name").unique().sort("class_id")
    rows = part.select("strategy", "train_fraction").unique().sort("strategy", "train_fraction")
    z, labels = [], []
    for strategy, fraction in rows.iter_rows():
        r = part.filter((pl.col("strategy") == strategy) & (pl.col("train_fraction") == fraction))
        by_id = dict(zip(r["class_id"].to_list(), r["iou"].to_list(), strict=True))
        z.append([None if by_id.get(c) is None else 100 * by_id[c] for c in classes["class_id"].to_list()])
        labels.append(f"{strategy} @ {fmt_fraction(fraction)}")
    text = [["" if v is None else f"{v:.0f}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=classes["class_name"].to_list(), y=labels, zmin=0, zmax=100, colorscale="Viridis", text=text,
        texttemplate="%{text}", colorbar=dict(title="IoU %"),
        hovertemplate="%{y}<br>%{x}: %{z:.1f} % IoU<extra></extra>"))
    fig.update_layout(title=f"{dataset}: mean test IoU per class (blank: class absent from test)",
                      template="plotly_white", height=220 + 36 * len(labels),
                      yaxis=dict(autorange="reversed", dtick=1), xaxis=dict(tickangle=-30),
                      margin=dict(l=170, t=70, b=120))
    return fig


def tuning_traces_figure(traces: pl.DataFrame, dataset: str) -> go.Figure:
    """Val mIoU per epoch of every tuning trial, one panel per cell; trials ASHA stopped end in a grey ✕.

    Completed trials are drawn in the strategy colour, stopped ones in grey, so the eye sees at once
    which configurations ASHA gave up on and how early.
    """
    part = traces.filter(pl.col("dataset") == dataset)
    if part.is_empty():
        return _empty(f"{dataset}: no tuning epochs in the store")
    strategies = part["strategy"].unique(maintain_order=True).sort().to_list()
    fractions = sorted(part["train_fraction"].unique().to_list())
    fig = make_subplots(rows=len(strategies), cols=len(fractions), shared_yaxes=True, horizontal_spacing=0.03,
                        vertical_spacing=0.12 if len(strategies) > 1 else 0.0,
                        subplot_titles=[f"{s} @ {fmt_fraction(f)}" for s in strategies for f in fractions])
    legend_done: set[str] = set()
    for i, s in enumerate(strategies, start=1):
        for j, f in enumerate(fractions, start=1):
            cell = part.filter((pl.col("strategy") == s) & (pl.col("train_fraction") == f))
            for (trial_id,), t in cell.group_by(["trial_id"], maintain_order=True):
                status = t["trial_status"][0]
                stopped = status == "stopped_early"
                key = "stopped early" if stopped else status
                fig.add_trace(go.Scatter(
                    x=t["epoch"].to_list(), y=[100 * (v or 0.0) for v in t["val_miou"].to_list()], mode="lines",
                    line=dict(color=STOPPED_COLOR if stopped else strategy_color(s, strategies), width=1.5),
                    name=key, legendgroup=key, showlegend=key not in legend_done,
                    hovertemplate=f"{trial_id[-8:]} ({status})<br>epoch %{{x}}: val mIoU %{{y:.1f}} %<extra></extra>",
                ), row=i, col=j)
                legend_done.add(key)
            ends = cell.filter(pl.col("is_last") & (pl.col("trial_status") == "stopped_early"))
            if len(ends):
                fig.add_trace(go.Scatter(
                    x=ends["epoch"].to_list(), y=[100 * (v or 0.0) for v in ends["val_miou"].to_list()],
                    mode="markers", marker=dict(symbol="x", size=9, color="#555"), name="stopped by ASHA",
                    legendgroup="asha-stop", showlegend="asha-stop" not in legend_done,
                    hovertemplate="stopped at epoch %{x} (val mIoU %{y:.1f} %)<extra></extra>"), row=i, col=j)
                legend_done.add("asha-stop")
    fig.update_yaxes(title_text="val mIoU (%)", col=1)
    fig.update_xaxes(integer_axis(part["epoch"].max() or 1))  # epochs are counts: never "1.5"
    fig.update_xaxes(title_text="epoch", row=len(strategies))
    fig.update_layout(title=f"{dataset}: tuning traces (val mIoU per epoch per trial)", template="plotly_white",
                      height=120 + 260 * len(strategies))
    return fig


_LOG_PARAMS = ("lr", "head_lr", "backbone_lr", "weight_decay")


def integer_axis(largest: int, max_ticks: int = 10) -> dict:
    """Axis settings for counts (epochs): ticks on whole numbers only, at most ``max_ticks`` of them."""
    step = max(1, math.ceil(largest / max_ticks))
    return dict(tickmode="linear", tick0=step if step > 1 else 1, dtick=step, tickformat="d",
                range=[0.5, largest + 0.5])


def _dimension(name: str, values: list[float | None], integer: bool = False) -> dict:
    """One parcoords axis; learning rates and weight decay on log10 with readable decade ticks.

    ``integer`` knobs (freeze_depth, batch_size) are ticked at the values that occur, so an axis
    never shows a depth of 1.5 or a batch size of 6.5.
    """
    if name in _LOG_PARAMS:
        logs = [math.log10(v) if v and v > 0 else None for v in values]
        finite = [v for v in logs if v is not None]
        ticks = list(range(math.floor(min(finite)), math.ceil(max(finite)) + 1)) if finite else []
        text = [f"1e{t}" for t in ticks]
        if any(v == 0 for v in values):  # a searched 0 (e.g. weight decay, the recipes' value): a decade below
            zero = (ticks[0] - 1) if ticks else 0
            logs = [zero if v == 0 else lv for v, lv in zip(values, logs, strict=True)]
            ticks, text = [zero, *ticks], ["0", *text]
        # span whole decades so every tick lies on the axis (a tick outside the range floats above the plot)
        return dict(label=f"{name} (log)", values=logs, tickvals=ticks, ticktext=text,
                    range=[ticks[0], ticks[-1]] if len(ticks) > 1 else None)
    if integer:
        ticks = sorted({int(v) for v in values if v is not None})
        return dict(label=name, values=values, tickvals=ticks, ticktext=[str(t) for t in ticks])
    return dict(label=name, values=values)


def parallel_figure(trials: pl.DataFrame, dataset: str, strategy: str,
                    hyperparameters: Sequence[str]) -> go.Figure:
    """Hyperparameters of every tuning trial vs its best val mIoU (one figure per strategy: knobs differ).

    Only knobs that took more than one value get an axis.
    """
    part = trials.filter((pl.col("dataset") == dataset) & (pl.col("strategy") == strategy)
                         & pl.col("val_miou").is_not_null())
    if part.is_empty():
        return _empty(f"{dataset} / {strategy}: no finished tuning trials")
    # a knob with one value (e.g. a fixed batch size) has nothing to say about the score; leave its axis out
    knobs = [h for h in hyperparameters if part[h].drop_nulls().n_unique() > 1]
    dims = [_dimension("fraction", [math.log10(f) for f in part["train_fraction"].to_list()])]
    fr = sorted(set(part["train_fraction"].to_list()))
    dims[0].update(label="fraction", tickvals=[math.log10(f) for f in fr], ticktext=[fmt_fraction(f) for f in fr])
    dims += [_dimension(h, part[h].cast(pl.Float64).to_list(), integer=part[h].dtype.is_integer()) for h in knobs]
    miou = [100 * v for v in part["val_miou"].to_list()]
    dims.append(dict(label="val mIoU (%)", values=miou))
    fig = go.Figure(go.Parcoords(dimensions=dims, line=dict(color=miou, colorscale="Viridis", showscale=True,
                                                             colorbar=dict(title="val mIoU %"))))
    fig.update_layout(title=f"{dataset} / {strategy}: hyperparameters vs best val mIoU ({len(part)} trials)",
                      template="plotly_white", height=460, margin=dict(l=70, r=60, t=130, b=40))
    return fig
