"""Figures of a results folder (matplotlib, optional): learning curves, per-node scatter and
gains, the metric against node size, and MOCHA's task correlations, as PNG and PDF.

`plot_results(folder)` writes them into `folder / "plots"`; `figures(folder)` yields them as
matplotlib `Figure`s (for a notebook). Nothing here switches matplotlib's global backend:
figures are drawn on `matplotlib.figure.Figure` and saved through Agg (PNG) or the PDF backend.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmtl.objectives import HIGHER_IS_BETTER
from fedmtl.report import KIND_ORDER, headline_metrics

RESULTS, PER_NODE, CURVES, PLOTS = "results.json", "per_node.csv", "curves.jsonl", "plots"
# Metadata that would make two renderings of the same figure differ (dates, versions): none.
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
# The files `plot_results` owns in plots/: an earlier call's ones it did not redraw are removed.
PREFIXES = ("curves_", "scatter_", "gains_", "size_", "correlation_")

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
MISSING = "plots need matplotlib, which is not installed: pip install 'fedmtl[plots]'"


class PlotError(ValueError):
    """A results folder that cannot be plotted; the message names the file and the problem."""


def available() -> bool:
    """Whether matplotlib can be imported (the `plots` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(**kwargs):
    """A new figure on no global backend (savefig picks Agg or PDF by format)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(MISSING) from None
    return Figure(layout="constrained", **kwargs)


def _save(fig, path: Path, fmt: str) -> Path:
    """Saves `fig` to `path` through a temporary file and a rename: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        mask = os.umask(0o022)  # read the umask (by setting it and setting it back)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=130, metadata=METADATA.get(fmt))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ----- MOCHA's task relationships -----


def heatmap_figure(sigma: np.ndarray, title: str, names=None):
    """A heatmap of a task covariance Σ [N, N] as correlations Σ_st / sqrt(Σ_ss Σ_tt), nodes
    in data order (named on the axes when `names` has at most 40)."""
    sigma = np.asarray(sigma, dtype=float)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise PlotError(f"{title}: Σ must be square [N, N], got shape {sigma.shape}")
    scale = np.sqrt(np.clip(np.diag(sigma), np.finfo(float).tiny, None))
    correlation = sigma / scale[:, None] / scale[None, :]
    fig = _figure(figsize=(5.4, 4.6))
    ax = fig.add_subplot()
    image = ax.imshow(correlation, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="task correlation")
    ax.set(title=title, xlabel="node", ylabel="node")
    if names is not None and 0 < len(names) <= 40 and len(names) == len(sigma):
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, [str(n) for n in names], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [str(n) for n in names], fontsize=7)
    return fig


def relationship_heatmap(sigma: np.ndarray, path: Path, title: str, fmt: str = "png",
                         names=None) -> Path:
    """`heatmap_figure` saved to `path` as `fmt` (PNG by default). Returns the path."""
    fig = heatmap_figure(sigma, title, names)
    fig.savefig(path, format=fmt, dpi=120, metadata=METADATA.get(fmt))
    return Path(path)


# ----- reading a results folder -----


@dataclass(frozen=True)
class Run:
    """What a results folder holds, as the figures need it.

    Attributes:
      folder: the results folder.
      status: "complete", "in progress", "interrupted".
      task, num_classes: the data's task ("classification" or "regression") and classes.
      algorithms: completed algorithms, in the order they ran.
      names, n_train, n_test: per node [N] (empty when per_node.csv is absent).
      per_node: {(algorithm, kind, metric): [N]} test metrics, NaN where undefined.
      curves: {algorithm: [records of curves.jsonl, rounds ascending]} ({} when absent).
    """

    folder: Path
    status: str
    task: str
    num_classes: int | None
    algorithms: tuple[str, ...]
    names: tuple[str, ...]
    n_train: np.ndarray
    n_test: np.ndarray
    per_node: dict
    curves: dict

    def kinds(self, algorithm: str, metric: str) -> list[str]:
        """The model kinds of `algorithm` with per-node values of `metric`, in report order."""
        return [k for k in KIND_ORDER if (algorithm, k, metric) in self.per_node]

    def local(self, metric: str) -> np.ndarray | None:
        """Per-node `metric` [N] of the local-only models, when the run has them."""
        return next((v for (a, k, m), v in self.per_node.items()
                     if k == "local" and m == metric), None)


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise PlotError(f"{path} is not valid JSON ({e}); was the run killed while writing "
                        "it?") from None
    if not isinstance(doc, dict):
        raise PlotError(f"{path} holds a {type(doc).__name__}, not a JSON object")
    return doc


def _read_per_node(path: Path):
    """(names, n_train [N], n_test [N], {(algorithm, kind, metric): [N]}) of per_node.csv."""
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except (OSError, csv.Error) as e:
        raise PlotError(f"cannot read {path}: {e}") from None
    if not rows or rows[0][:3] != ["node", "n_train", "n_test"]:
        raise PlotError(f"{path}: the header must start with node,n_train,n_test")
    header, body = rows[0], rows[1:]
    try:
        values = np.array([[float(v) if v else np.nan for v in r[1:]] for r in body]).reshape(
            len(body), len(header) - 1)
    except ValueError as e:
        raise PlotError(f"{path}: a row has a value that is not a number or a row of the "
                        f"wrong length ({e})") from None
    per_node = {}
    for j, name in enumerate(header[3:], start=2):
        parts = name.rsplit("/", 2)
        if len(parts) != 3:
            raise PlotError(f"{path}: column {name!r} is not algorithm/kind/metric")
        per_node[tuple(parts)] = values[:, j]
    return tuple(r[0] for r in body), values[:, 0], values[:, 1], per_node


def _read_curves(path: Path) -> dict[str, list[dict]]:
    """{algorithm: records by ascending round} of curves.jsonl; a last line that a running
    job is still writing (no newline yet) is left out."""
    try:
        text = path.read_text()
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e.strerror or e}") from None
    lines = text.split("\n")
    curves: dict[str, list[dict]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            algorithm, _ = record["algorithm"], float(record["round"])
            if not isinstance(record.get("test", {}), dict):
                raise TypeError("'test' is not an object")
        except (ValueError, KeyError, TypeError) as e:
            if number == len(lines):  # the unterminated last line: still being written
                break
            raise PlotError(f"{path}, line {number}: not a learning-curve record "
                            f"({type(e).__name__}: {e})") from None
        curves.setdefault(str(algorithm), []).append(record)
    return {a: sorted(r, key=lambda x: x["round"]) for a, r in curves.items()}


def load(folder) -> Run:
    """Reads a results folder (results.json, and per_node.csv and curves.jsonl if present).

    Raises:
      PlotError: no such folder, no results.json, or a file that is unreadable or malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PlotError(f"no results folder at {str(folder)!r}")
    if not (folder / RESULTS).is_file():
        raise PlotError(f"{str(folder)!r} holds no {RESULTS}: not a results folder (fedmtl "
                        "compare --out writes one)")
    doc = _read_json(folder / RESULTS)
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("task") not in ("classification", "regression"):
        raise PlotError(f"{folder / RESULTS}: no data.task (classification or regression): "
                        "not a fedmtl results file")
    algorithms = doc.get("algorithms") if isinstance(doc.get("algorithms"), dict) else {}
    names, n_train, n_test, per_node = (), np.zeros(0), np.zeros(0), {}
    if (folder / PER_NODE).is_file():
        names, n_train, n_test, per_node = _read_per_node(folder / PER_NODE)
    curves = _read_curves(folder / CURVES) if (folder / CURVES).is_file() else {}
    return Run(
        folder, str(doc.get("status", "unknown")), data["task"], data.get("num_classes"),
        tuple(a for a, v in algorithms.items()
              if isinstance(v, dict) and v.get("status") == "complete"),
        names, n_train, n_test, per_node, curves,
    )


# ----- small helpers -----


def gain(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """How much better `a` is than `b` per node [N], in the metric's units: a - b when higher
    is better, b - a when lower is (RMSE, loss), so positive always means `a` gained."""
    return a - b if HIGHER_IS_BETTER[metric] else b - a


def _name(metric: str) -> str:
    """For sentences: "test RMSE"."""
    return f"test {NAMES.get(metric, metric)}"


def _label(metric: str) -> str:
    """For axes: "test RMSE (target units)"."""
    return _name(metric) + (f" ({UNITS[metric]})" if metric in UNITS else "")


def _direction(metric: str) -> str:
    return "higher" if HIGHER_IS_BETTER[metric] else "lower"


def _value_axis(ax, metric: str, axis: str, top: float) -> None:
    """The full range of a bounded metric ([0, 1], accuracies in %); others from zero: no
    truncated axis makes a small difference look large."""
    setter = ax.set_ylim if axis == "y" else ax.set_xlim
    if metric in BOUNDED:
        setter(-0.02, 1.02)
    else:
        setter(0, 1.05 * top if np.isfinite(top) and top > 0 else 1)
    if metric in PERCENT:
        from matplotlib.ticker import PercentFormatter

        (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(PercentFormatter(1))


def _top(arrays) -> float:
    """The largest finite value of some arrays (NaN when there is none)."""
    finite = [a[np.isfinite(a)] for a in map(np.asarray, arrays)]
    return max((float(a.max()) for a in finite if a.size), default=float("nan"))


def _status_note(run: Run) -> str:
    return "" if run.status == "complete" else f" [run {run.status}]"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _tally(g: np.ndarray) -> str:
    return f"better on {(g > 0).sum()}, equal on {(g == 0).sum()}, worse on {(g < 0).sum()}"


# ----- the figures -----


def _series(records: list[dict], kind: str, metric: str):
    """(rounds, mean, se) [E] of one kind's metric in curve records, or None."""
    rows = [(r["round"], s.get("mean"), s.get("se")) for r in records
            if isinstance(s := ((r.get("test") or {}).get(kind) or {}).get(metric), dict)]
    if not rows:
        return None
    rounds, mean, se = np.array(rows, dtype=float).T
    return rounds, mean, se


def _curve(ax, series, kind: str, label: str, dashed: bool = False) -> None:
    rounds, mean, se = series
    style = STYLE[kind]
    ax.plot(rounds, mean, color=style["color"], linestyle="--" if dashed else "-",
            marker=style["marker"] if len(rounds) <= 30 else None, markersize=3.5, label=label)
    band = np.isfinite(se)
    if band.any():
        ax.fill_between(rounds, mean - np.where(band, se, 0), mean + np.where(band, se, 0),
                        where=band, color=style["color"], alpha=0.18, linewidth=0)


def curves_figure(run: Run, metric: str):
    """Node-mean test `metric` by round, a panel per algorithm, a line per model kind with a
    ±1 standard-error band; the local models' curve dashed on every panel. None when
    curves.jsonl holds no such metric."""
    reference = _series(run.curves.get("local", []), "local", metric)
    order = dict.fromkeys(a for a in (*run.algorithms, *run.curves) if a in run.curves)
    panels = [a for a in order if a != "local"] or (["local"] if reference is not None else [])
    drawn = {a: {k: s for k in KIND_ORDER if (s := _series(run.curves.get(a, []), k, metric))}
             for a in panels}
    drawn = {a: s for a, s in drawn.items() if s}
    if not drawn:
        return None
    final_local = run.local(metric)
    cols = min(3, len(drawn))
    rows = math.ceil(len(drawn) / cols)
    fig = _figure(figsize=(4.3 * cols, 3.2 * rows + 1.0))
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    top = _top(s[1] + np.nan_to_num(s[2]) for d in drawn.values() for s in d.values())
    for ax, (algorithm, kinds) in zip(axes.flat, drawn.items(), strict=False):
        for kind, series in kinds.items():
            _curve(ax, series, kind, f"{kind} model" + (" (each node's own)" * (kind == "local")))
        if algorithm != "local" and reference is not None:
            _curve(ax, reference, "local", "local models (the local algorithm)", dashed=True)
        elif algorithm != "local" and final_local is not None and np.isfinite(final_local).any():
            ax.axhline(np.nanmean(final_local), color=STYLE["local"]["color"], linestyle="--",
                       label="local models, final (no curve)")
        failed = "" if algorithm in run.algorithms else " (did not complete)"
        ax.set_title(f"{algorithm}{failed}")
        _value_axis(ax, metric, "y", top)
        ax.grid(alpha=0.3)
    for ax in axes.flat:  # every panel: the last row may be partly empty
        ax.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{_label(metric)}, mean over nodes")
    for ax in axes.flat[len(drawn):]:
        ax.set_visible(False)
    handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels(),
                                                            strict=True)}
    handles["±1 standard error over nodes"] = _band_handle()
    fig.legend(handles.values(), handles.keys(), loc="outside lower center",
               ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle(f"Learning curves: {_name(metric)} by round, mean over tested nodes "
                 f"({_direction(metric)} is better){_status_note(run)}")
    return fig


def _band_handle():
    from matplotlib.patches import Patch

    return Patch(color="0.5", alpha=0.3, linewidth=0)


def _baselines(run: Run, algorithm: str, metric: str) -> list[tuple[str, np.ndarray]]:
    """(name, per-node values) the personalized model of `algorithm` is compared with."""
    out = []
    if (algorithm, "global", metric) in run.per_node:
        out.append(("global", run.per_node[algorithm, "global", metric]))
    if (local := run.local(metric)) is not None:
        out.append(("local", local))
    return out


def scatter_figure(run: Run, algorithm: str, metric: str):
    """Personalized against global and against local test `metric`, one point per node, the
    diagonal drawn and the side where nodes gained shaded. None without a comparison."""
    if (algorithm, "personalized", metric) not in run.per_node:
        return None
    mine = run.per_node[algorithm, "personalized", metric]
    baselines = _baselines(run, algorithm, metric)
    if not baselines:
        return None
    higher = HIGHER_IS_BETTER[metric]
    fig = _figure(figsize=(max(5.6, 4.8 * len(baselines)), 5.3))
    axes = fig.subplots(1, len(baselines), squeeze=False)[0]
    top = _top([mine, *(b for _, b in baselines)])
    for ax, (name, base) in zip(axes, baselines, strict=True):
        both = np.isfinite(mine) & np.isfinite(base)
        x, y = base[both], mine[both]
        _value_axis(ax, metric, "x", top)
        _value_axis(ax, metric, "y", top)
        lo, hi = ax.get_xlim()
        line = np.array([lo, hi])
        ax.fill_between(line, line, hi if higher else lo, color=GAINED, alpha=0.10, linewidth=0,
                        label="personalized better (gained)")
        ax.plot(line, line, color="0.25", linewidth=1, label="diagonal: equal")
        ax.scatter(x, y, s=22, alpha=0.6, color=STYLE["personalized"]["color"],
                   edgecolors="none", label=f"node ({both.sum()} with both values)")
        ax.set_box_aspect(1)  # equal limits on both axes: the diagonal is at 45°
        ax.set(xlabel=f"{name} model: {_label(metric)}",
               ylabel=f"{algorithm} personalized: {_label(metric)}",
               title=f"vs {name}: {_tally(gain(y, x, metric))}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if higher else "upper left", fontsize=8)
    side = "Above" if higher else "Below"
    fig.suptitle(f"{algorithm}: {_name(metric)} of each node, personalized vs "
                 + " and ".join(n for n, _ in baselines) + f"{_status_note(run)}\n{side} the "
                 f"diagonal (shaded): nodes that gained\n({_direction(metric)} "
                 f"{NAMES.get(metric, metric)} is better)", fontsize=10)
    return fig


def _bins(g: np.ndarray) -> np.ndarray:
    """Histogram edges with a bin centred on zero (no change), at most about 40 bins."""
    edges = np.histogram_bin_edges(g, bins="auto")
    spread = float(g.max() - g.min())
    width = float(edges[1] - edges[0]) if len(edges) > 1 else 0.0
    width = max(width, spread / 40, 1e-9) if spread > 0 else max(abs(float(g[0])), 1.0) / 5
    lo, hi = round(min(g.min(), 0) / width), round(max(g.max(), 0) / width)
    return (np.arange(lo, hi + 2) - 0.5) * width


def gains_figure(run: Run, algorithm: str, metric: str):
    """Histograms of per-node gains of the personalized model over the local and the global
    ones (positive = better whatever the metric's direction), zero marked, gained / equal /
    lost counted in the legend. None without a comparison."""
    if (algorithm, "personalized", metric) not in run.per_node:
        return None
    mine = run.per_node[algorithm, "personalized", metric]
    baselines = _baselines(run, algorithm, metric)[::-1]  # local first: the main question
    if not baselines:
        return None
    scale, unit = (100.0, "percentage points") if metric in PERCENT else (
        1.0, UNITS.get(metric, "metric units"))
    fig = _figure(figsize=(max(6.4, 4.8 * len(baselines)), 4.2))
    axes = fig.subplots(1, len(baselines), squeeze=False)[0]
    for ax, (name, base) in zip(axes, baselines, strict=True):
        g = gain(mine, base, metric)
        g = scale * g[np.isfinite(g)]
        if g.size == 0:
            ax.set_title(f"vs {name}: no node has both values")
            continue
        parts = [(g < 0, LOST, "lost"), (g == 0, SAME, "no change"), (g > 0, GAINED, "gained")]
        ax.hist([g[m] for m, _, _ in parts], bins=_bins(g), stacked=True,
                color=[c for _, c, _ in parts], edgecolor="white", linewidth=0.5,
                label=[f"{'_' * (not m.any())}{w} ({m.sum()} of {g.size})"  # _: no legend
                       for m, _, w in parts])
        ax.axvline(0, color="black", linestyle="--", linewidth=1, label="zero: no change")
        order = "personalized − " + name if HIGHER_IS_BETTER[metric] else name + " − personalized"
        ax.set(xlabel=f"gain in {_name(metric)} ({unit})\n{order}", ylabel="nodes",
               title=f"vs {name} model: gained on {100 * np.mean(g > 0):.0f}% of nodes "
                     f"({(g > 0).sum()} of {g.size})")
        ax.title.set_fontsize(9)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(0, 1.45 * ax.get_ylim()[1])  # headroom: the legend never hides a bar
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle(f"{algorithm}: per-node gain of the personalized model in {_name(metric)}"
                 f"{_status_note(run)}\npositive = better ({_direction(metric)} "
                 f"{NAMES.get(metric, metric)} is better)", fontsize=10)
    return fig


def best_personalized(run: Run, metric: str) -> str | None:
    """The algorithm whose personalized model has the best node-mean `metric` (first on
    ties), or None."""
    means = {a: np.nanmean(v) for (a, k, m), v in run.per_node.items()
             if k == "personalized" and m == metric and np.isfinite(v).any()}
    if not means:
        return None
    return (max if HIGHER_IS_BETTER[metric] else min)(means, key=means.get)


def size_figure(run: Run, metric: str):
    """Test `metric` against training examples per node (log x) for each model kind of the
    best personalized algorithm and for the local models. None without such per-node data."""
    best = best_personalized(run, metric)
    panels = [(f"{best}: {k} model", k, run.per_node[best, k, metric])
              for k in run.kinds(best, metric) if k != "local"] if best else []
    if (local := run.local(metric)) is not None:
        panels.append(("local models (each node's own)", "local", local))
    if not panels:
        return None
    from matplotlib.ticker import FuncFormatter

    fig = _figure(figsize=(max(6.4, 4.0 * len(panels)), 4.2))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    top = _top(v for _, _, v in panels)
    sized = run.n_train > 0
    for ax, (title, kind, v) in zip(axes, panels, strict=True):
        shown = sized & np.isfinite(v)
        ax.scatter(run.n_train[shown], v[shown], s=22, alpha=0.65, color=STYLE[kind]["color"],
                   marker=STYLE[kind]["marker"], edgecolors="none",
                   label=f"node ({shown.sum()} shown)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 10, 100: no 10¹
        _value_axis(ax, metric, "y", top)
        ax.set(title=title, xlabel="training examples per node (log scale)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(_label(metric))
    which = (f"{best} (best personalized by node mean) and the local models" if best
             else "the local models")
    missing = int((~sized).sum())
    fig.suptitle(f"Test {NAMES.get(metric, metric)} against node size "
                 f"({_direction(metric)} is better)\n{which}" + (
                     f"; {missing} nodes without training data not shown" if missing else "")
                 + _status_note(run), fontsize=10)
    return fig


def _sigma_files(run: Run) -> list[tuple[str, Path]]:
    found = {p.name[: -len("_sigma.json")]: p for p in sorted(run.folder.glob("*_sigma.json"))}
    order = [a for a in run.algorithms if a in found] + sorted(set(found) - set(run.algorithms))
    return [(a, found[a]) for a in order]


def figures(folder) -> Iterator[tuple[str, object]]:
    """Every figure the folder's files allow, as (file stem, matplotlib Figure), one at a
    time: learning curves (curves.jsonl), per-node scatter, gains and node-size figures
    (per_node.csv) for each headline metric (`report.headline_metrics`), and a task
    correlation heatmap per `<algorithm>_sigma.json`.

    Raises:
      PlotError: as `load`, or matplotlib is missing.
    """
    run = load(folder)
    if not available():
        raise PlotError(MISSING)
    return _figures(run)


def _figures(run: Run) -> Iterator[tuple[str, object]]:
    metrics = headline_metrics(run.task, run.num_classes)
    for metric in metrics:
        if (fig := curves_figure(run, metric)) is not None:
            yield f"curves_{metric}", fig
    personalized = dict.fromkeys(a for (a, k, _) in run.per_node if k == "personalized")
    for metric in metrics:
        for algorithm in personalized:
            if (fig := scatter_figure(run, algorithm, metric)) is not None:
                yield f"scatter_{_safe(algorithm)}_{metric}", fig
            if (fig := gains_figure(run, algorithm, metric)) is not None:
                yield f"gains_{_safe(algorithm)}_{metric}", fig
        if (fig := size_figure(run, metric)) is not None:
            yield f"size_{metric}", fig
    for algorithm, path in _sigma_files(run):
        doc = _read_json(path)
        if "sigma" not in doc:
            raise PlotError(f"{path}: no 'sigma' matrix")
        yield f"correlation_{_safe(algorithm)}", heatmap_figure(
            doc["sigma"], f"{algorithm}: learned task correlation{_status_note(run)}",
            doc.get("nodes"))


def plot_results(folder: Path, formats=("png", "pdf")) -> list[Path]:
    """Writes every figure the folder's files allow (`figures`) into `folder / "plots"`
    (created), each in every format, atomically; figures an earlier call wrote there that
    this one does not are removed. Returns the paths written.

    Example:
      >>> plot_results(Path("results"))  # doctest: +SKIP
      [PosixPath('results/plots/curves_accuracy.png'), ...]

    Raises:
      PlotError: no folder, no results.json, an unreadable or malformed file, an unknown
        format, or matplotlib is missing (pip install 'fedmtl[plots]').
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in METADATA]
    if unknown or not formats:
        raise PlotError(f"unknown figure format(s) {unknown or formats}; choose from "
                        f"{sorted(METADATA)}")
    drawn = figures(folder)  # reads and checks the folder before anything is written
    out = Path(folder) / PLOTS
    out.mkdir(exist_ok=True)
    written = []
    for stem, fig in drawn:
        written += [_save(fig, out / f"{stem}.{fmt}", fmt) for fmt in formats]
    for path in sorted(out.iterdir()):
        if path.name.startswith(PREFIXES) and path.suffix[1:] in METADATA and path not in written:
            path.unlink()
    return written
