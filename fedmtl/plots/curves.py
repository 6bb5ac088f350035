"""The learning-curves figure: node-mean test metric by round (curves.jsonl), a panel per
algorithm, a ±1 standard-error band, the local models as a dashed reference."""

from __future__ import annotations

import math

import numpy as np

from fedmtl.plots import style
from fedmtl.plots.reading import Run
from fedmtl.report import KIND_ORDER


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
    look = style.STYLE[kind]
    ax.plot(rounds, mean, color=look["color"], linestyle="--" if dashed else "-",
            marker=look["marker"] if len(rounds) <= 30 else None, markersize=3.5, label=label)
    band = np.isfinite(se)
    if band.any():
        ax.fill_between(rounds, mean - np.where(band, se, 0), mean + np.where(band, se, 0),
                        where=band, color=look["color"], alpha=0.18, linewidth=0)


def _band_handle():
    from matplotlib.patches import Patch

    return Patch(color="0.5", alpha=0.3, linewidth=0)


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
    fig = style.new_figure(figsize=(4.3 * cols, 3.2 * rows + 1.0))
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    bands = [(s[1] - np.nan_to_num(s[2]), s[1] + np.nan_to_num(s[2]))
             for d in drawn.values() for s in d.values()]
    if reference is not None:
        bands.append((reference[1], reference[1]))
    limits = style.span([b for pair in bands for b in pair])
    for ax, (algorithm, kinds) in zip(axes.flat, drawn.items(), strict=False):
        for kind, series in kinds.items():
            _curve(ax, series, kind, f"{kind} model" + (" (each node's own)" * (kind == "local")))
        if algorithm != "local" and reference is not None:
            _curve(ax, reference, "local", "local models (the local algorithm)", dashed=True)
        elif algorithm != "local" and final_local is not None and np.isfinite(final_local).any():
            ax.axhline(np.nanmean(final_local), color=style.STYLE["local"]["color"],
                       linestyle="--", label="local models, final (no curve)")
        failed = "" if algorithm in run.algorithms else " (did not complete)"
        ax.set_title(f"{algorithm}{failed}")
        style.value_axis(ax, metric, "y", limits)
        ax.grid(alpha=0.3)
    for ax in axes.flat:  # every panel: the last row may be partly empty
        ax.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{style.label(metric)}, mean over nodes")
    for ax in axes.flat[len(drawn):]:
        ax.set_visible(False)
    handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels(),
                                                            strict=True)}
    handles["±1 standard error over nodes"] = _band_handle()
    fig.legend(handles.values(), handles.keys(), loc="outside lower center",
               ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle(f"Learning curves: {style.name(metric)} by round, mean over tested nodes "
                 f"({style.direction(metric)} is better){style.status_note(run)}")
    return fig
