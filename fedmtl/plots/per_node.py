"""The per-node figures (per_node.csv): each node's personalized metric against the global and
local models' (scatter), the gains as histograms, and the metric against node size."""

from __future__ import annotations

import numpy as np

from fedmtl.objectives import HIGHER_IS_BETTER
from fedmtl.plots import style
from fedmtl.plots.reading import Run
from fedmtl.plots.style import GAINED, LOST, NAMES, PERCENT, SAME, STYLE, UNITS, gain


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
    fig = style.new_figure(figsize=(max(5.6, 4.8 * len(baselines)), 5.3))
    axes = fig.subplots(1, len(baselines), squeeze=False)[0]
    limits = style.span([mine, *(b for _, b in baselines)])  # one range: the diagonal at 45°
    label = style.label(metric)
    for ax, (name, base) in zip(axes, baselines, strict=True):
        both = np.isfinite(mine) & np.isfinite(base)
        x, y = base[both], mine[both]
        style.value_axis(ax, metric, "x", limits)
        style.value_axis(ax, metric, "y", limits)
        lo, hi = ax.get_xlim()
        line = np.array([lo, hi])
        ax.fill_between(line, line, hi if higher else lo, color=GAINED, alpha=0.10, linewidth=0,
                        label="personalized better (gained)")
        ax.plot(line, line, color="0.25", linewidth=1, label="diagonal: equal")
        ax.scatter(x, y, s=22, alpha=0.6, color=STYLE["personalized"]["color"],
                   edgecolors="none", label=f"node ({both.sum()} with both values)")
        ax.set_box_aspect(1)  # equal limits on both axes: the diagonal is at 45°
        ax.set(xlabel=f"{name} model: {label}", ylabel=f"{algorithm} personalized: {label}",
               title=f"vs {name}: {style.tally(gain(y, x, metric))}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if higher else "upper left", fontsize=8)
    side = "Above" if higher else "Below"
    fig.suptitle(f"{algorithm}: {style.name(metric)} of each node, personalized vs "
                 + " and ".join(n for n, _ in baselines) + f"{style.status_note(run)}\n{side} "
                 f"the diagonal (shaded): nodes that gained\n({style.direction(metric)} "
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
    fig = style.new_figure(figsize=(max(6.4, 4.8 * len(baselines)), 4.2))
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
        ax.set(xlabel=f"gain in {style.name(metric)} ({unit})\n{order}", ylabel="nodes",
               title=f"vs {name} model: gained on {100 * np.mean(g > 0):.0f}% of nodes "
                     f"({(g > 0).sum()} of {g.size})")
        ax.title.set_fontsize(9)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(0, 1.45 * ax.get_ylim()[1])  # headroom: the legend never hides a bar
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle(f"{algorithm}: per-node gain of the personalized model in {style.name(metric)}"
                 f"{style.status_note(run)}\npositive = better ({style.direction(metric)} "
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

    fig = style.new_figure(figsize=(max(6.4, 4.0 * len(panels)), 4.2))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    limits = style.span(v for _, _, v in panels)
    sized = run.n_train > 0
    for ax, (title, kind, v) in zip(axes, panels, strict=True):
        shown = sized & np.isfinite(v)
        ax.scatter(run.n_train[shown], v[shown], s=22, alpha=0.65, color=STYLE[kind]["color"],
                   marker=STYLE[kind]["marker"], edgecolors="none",
                   label=f"node ({shown.sum()} shown)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 10, 100: no 10¹
        style.value_axis(ax, metric, "y", limits)
        ax.set(title=title, xlabel="training examples per node (log scale)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(style.label(metric))
    which = (f"{best} (best personalized by node mean) and the local models" if best
             else "the local models")
    missing = int((~sized).sum())
    fig.suptitle(f"Test {NAMES.get(metric, metric)} against node size "
                 f"({style.direction(metric)} is better)\n{which}" + (
                     f"; {missing} nodes without training data not shown" if missing else "")
                 + style.status_note(run), fontsize=10)
    return fig
