"""What every figure shares: names, units, colours and axes of the metrics, a new figure on no
global backend, and the file metadata left out so that a redrawn figure has the same bytes."""

from __future__ import annotations

import re

import numpy as np

from fedmtl.objectives import HIGHER_IS_BETTER
from fedmtl.plots.reading import PlotError, Run

# Metadata that would make two renderings of the same figure differ (dates, versions): none.
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
MISSING = "plots need matplotlib, which is not installed: pip install 'fedmtl[plots]'"

NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auc": "ROC AUC",
         "loss": "loss", "rmse": "RMSE", "mse": "MSE"}
UNITS = {"rmse": "target units", "mse": "target units²"}  # accuracies show their own %
BOUNDED = ("accuracy", "balanced_accuracy", "auc")  # in [0, 1]: axes show all of it
PERCENT = ("accuracy", "balanced_accuracy")  # shown in %, differences in percentage points
STYLE = {  # one colour and marker per model kind, in every figure
    "global": {"color": "tab:blue", "marker": "s"},
    "personalized": {"color": "tab:orange", "marker": "o"},
    "local": {"color": "0.35", "marker": "^"},
}
GAINED, LOST, SAME = "tab:green", "tab:red", "0.6"


def available() -> bool:
    """Whether matplotlib can be imported (the `plots` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(**kwargs):
    """A new figure on no global backend (savefig picks Agg or PDF by format).

    Raises:
      PlotError: matplotlib is missing.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(MISSING) from None
    return Figure(layout="constrained", **kwargs)


def gain(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """How much better `a` is than `b` per node [N], in the metric's units: a - b when higher
    is better, b - a when lower is (RMSE, loss), so positive always means `a` gained."""
    return a - b if HIGHER_IS_BETTER[metric] else b - a


def name(metric: str) -> str:
    """For sentences: "test RMSE"."""
    return f"test {NAMES.get(metric, metric)}"


def label(metric: str) -> str:
    """For axes: "test RMSE (target units)"."""
    return name(metric) + (f" ({UNITS[metric]})" if metric in UNITS else "")


def direction(metric: str) -> str:
    """"higher" or "lower": which way `metric` is better."""
    return "higher" if HIGHER_IS_BETTER[metric] else "lower"


def value_axis(ax, metric: str, axis: str, span: tuple[float, float]) -> None:
    """Limits that show the data's range `span` (lo, hi) with a margin, within the metric's
    bounds ([0, 1] for accuracies and AUC): wide enough to read every point, never padded
    out to a range where the points merge (the tick labels give the scale)."""
    setter = ax.set_ylim if axis == "y" else ax.set_xlim
    lo, hi = span
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo, hi = (0.0, 1.0)
    margin = max(0.08 * (hi - lo), 0.01 if metric in BOUNDED else 1e-3 * max(abs(hi), 1.0))
    lo, hi = lo - margin, hi + margin
    if metric in BOUNDED:
        lo, hi = max(lo, -0.005), min(hi, 1.005)
    setter(lo, hi)
    if metric in PERCENT:
        from matplotlib.ticker import PercentFormatter

        (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(PercentFormatter(1))


def span(arrays) -> tuple[float, float]:
    """The smallest and largest finite values of some arrays ((NaN, NaN) when none)."""
    finite = [a[np.isfinite(a)] for a in map(np.asarray, arrays)]
    finite = [a for a in finite if a.size]
    if not finite:
        return float("nan"), float("nan")
    return min(float(a.min()) for a in finite), max(float(a.max()) for a in finite)


def status_note(run: Run) -> str:
    """" [run interrupted]" for a run that did not complete, "" for one that did."""
    return "" if run.status == "complete" else f" [run {run.status}]"


def safe(text: str) -> str:
    """`text` with every character unsafe in a file name replaced by "_"."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def tally(g: np.ndarray) -> str:
    """"better on 7, equal on 3, worse on 10" of per-node gains [N]."""
    return f"better on {(g > 0).sum()}, equal on {(g == 0).sum()}, worse on {(g < 0).sum()}"
