"""The chart of a report: a run's score distribution against its baseline's, as a PNG."""

import io
import math

from scoring.quality.levels import baseline_label


def score_chart_png(quality: dict) -> bytes:
    """This run's score distribution against the baseline's, as a 600×260 PNG."""
    # Figure and the Agg canvas directly, not pyplot: no global state, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    histogram = quality["histogram"]
    edges = [float(edge) for edge in histogram["edges"]]
    if not all(math.isfinite(edge) for edge in edges):
        raise ValueError("the histogram's edges must be finite")
    figure = Figure(figsize=(6, 2.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.stairs(
        histogram["current"],
        edges,
        fill=True,
        facecolor="#3358d44d",
        edgecolor="#3358d4",
        linewidth=1.6,
        label="this run",
    )
    if histogram.get("baseline"):
        axes.stairs(
            histogram["baseline"],
            edges,
            color="#1d2330",
            linewidth=1.4,
            linestyle="--",
            label=baseline_label(quality.get("baseline")),
        )
    axes.set_xlabel("score", fontsize=9)
    axes.set_ylabel("share of rows", fontsize=9)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.tick_params(labelsize=8)
    axes.set_ylim(bottom=0)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(loc="best", fontsize=8, frameon=False)
    figure.tight_layout(pad=0.6)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
