"""The report: polars analysis, Plotly figures and the self-contained HTML page of one or several
studies (free of torch and Ray: it runs wherever polars and Plotly do).

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.report.analysis import cell_summary
from study.report.cli import main
from study.report.html import backbone_banners, deviation_banner, write_report
from study.report.plots import BAND_META, CURVE_META, curves_figure, strategy_color
from study.report.summary import print_summary, summary_frame

__all__ = [
    "BAND_META",
    "CURVE_META",
    "backbone_banners",
    "cell_summary",
    "curves_figure",
    "deviation_banner",
    "main",
    "print_summary",
    "strategy_color",
    "summary_frame",
    "write_report",
]
