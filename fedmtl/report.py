"""Reports: per-node global vs local vs personalized metrics, summaries and tables.

Each number says which model kind of which algorithm it measures on which split (test).
"""

from __future__ import annotations

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from fedmtl.experiment import Comparison
from fedmtl.objectives import HIGHER_IS_BETTER, METRICS

KIND_ORDER = ("global", "personalized", "local")


def primary_metric(task: str) -> str:
    """accuracy for classification, RMSE for regression."""
    return METRICS[task][0]


def columns(comparison: Comparison) -> list[tuple[str, str]]:
    """(algorithm, kind) pairs in display order."""
    return [
        (r.name, kind)
        for r in comparison.results
        for kind in KIND_ORDER
        if kind in r.per_node
    ]


def local_baseline(comparison: Comparison, metric: str) -> np.ndarray | None:
    """Per-node metric [N] of the local-only model, if the comparison has one."""
    for r in comparison.results:
        if "local" in r.per_node:
            return r.per_node["local"][metric]
    return None


def _beats(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    better = a > b if HIGHER_IS_BETTER[metric] else a < b
    return float(np.mean(better))


def summarize(comparison: Comparison) -> list[dict]:
    """One summary row per (algorithm, kind) for each metric.

    Fields: algorithm, kind, metric, weighted_mean (weighted by test examples), node_mean,
    node_std, worst10 (mean over the worst 10% of nodes, at least one), and for personalized
    models beats_global / beats_local: share of nodes where it is strictly better. Nodes
    without test examples are left out (`untested_nodes` says how many).
    """
    data = comparison.data
    tested = data.test.counts > 0  # nodes without test examples have no metric
    if not tested.any():
        raise ValueError("no node has test examples: nothing to summarize")
    weights = data.test.counts[tested] / data.test.counts.sum()
    worst_count = max(1, int(np.ceil(0.1 * tested.sum())))
    rows = []
    for metric in METRICS[data.task]:
        local = local_baseline(comparison, metric)
        local = None if local is None else local[tested]
        for name, kind in columns(comparison):
            per_node = {k: {m: v[tested] for m, v in d.items()}
                        for k, d in comparison.result(name).per_node.items()}
            v = per_node[kind][metric]
            ordered = np.sort(v)
            worst = ordered[:worst_count] if HIGHER_IS_BETTER[metric] else ordered[-worst_count:]
            row = {
                "algorithm": name, "kind": kind, "metric": metric,
                "weighted_mean": float(np.sum(weights * v)),
                "node_mean": float(np.mean(v)),
                "node_std": float(np.std(v)),
                "worst10": float(np.mean(worst)),
                "beats_global": None, "beats_local": None,
                "untested_nodes": int((~tested).sum()),
            }
            if kind == "personalized":
                if "global" in per_node:
                    row["beats_global"] = _beats(v, per_node["global"][metric], metric)
                if local is not None:
                    row["beats_local"] = _beats(v, local, metric)
            rows.append(row)
    return rows


def _fmt(value, metric: str | None = None) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    if metric in ("accuracy",):
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def summary_table(comparison: Comparison) -> Table:
    """Summary of the primary metric: one row per algorithm and model kind."""
    metric = primary_metric(comparison.data.task)
    direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Test {metric} summary over {int((comparison.data.test.counts > 0).sum())} "
        f"nodes with test data "
        f"({direction} is better)",
        caption="wtd: mean weighted by test examples; mean, std: over nodes; worst10: mean of "
        "the worst 10% of nodes; >glob, >local: share of nodes where the personalized model "
        "is strictly better than the global, the local-only one",
    )
    for col in ("algorithm", "model", "wtd", "mean", "std", "worst10", ">glob", ">local"):
        table.add_column(col, justify="left" if col in ("algorithm", "model") else "right",
                         no_wrap=True)
    share = lambda s: "—" if s is None else f"{100 * s:.0f}%"
    for row in summarize(comparison):
        if row["metric"] != metric:
            continue
        table.add_row(
            row["algorithm"], row["kind"], _fmt(row["weighted_mean"], metric),
            _fmt(row["node_mean"], metric), _fmt(row["node_std"], metric),
            _fmt(row["worst10"], metric), share(row["beats_global"]), share(row["beats_local"]),
        )
    return table


def shown_nodes(train_counts: np.ndarray, max_rows: int) -> np.ndarray:
    """Which nodes a table of at most `max_rows` rows shows (-1: all, in order): otherwise
    nodes evenly spaced from the smallest to the largest training set, smallest first, so
    that a short table spans the federation rather than its first few nodes."""
    n = len(train_counts)
    if max_rows < 0 or max_rows >= n:
        return np.arange(n)
    by_size = np.argsort(train_counts, kind="stable")
    return by_size[np.linspace(0, n - 1, max_rows).round().astype(int)] if max_rows else by_size[:0]


def node_table(comparison: Comparison, max_rows: int = 10) -> Table:
    """Per-node primary metric, every algorithm and model kind side by side."""
    data, metric = comparison.data, primary_metric(comparison.data.task)
    cols = columns(comparison)
    nodes = shown_nodes(data.train.counts, max_rows)
    title = f"Test {metric} per node"
    if len(nodes) < data.num_nodes:
        title += (f" ({len(nodes)} of {data.num_nodes}, smallest to largest training set; all "
                  "in per_node.csv)")
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("node", "train", "test"):
        table.add_column(col, justify="left" if col == "node" else "right")
    for name, kind in cols:
        table.add_column(f"{name}\n{kind}", justify="right")
    for k in nodes:
        table.add_row(
            data.names[k], str(data.train.counts[k]), str(data.test.counts[k]),
            *[_fmt(comparison.result(n).per_node[kd][metric][k], metric) for n, kd in cols],
        )
    return table


def print_report(comparison: Comparison, console: Console | None = None,
                 max_rows: int = 10) -> None:
    console = console or Console()
    console.print(node_table(comparison, max_rows))
    console.print(summary_table(comparison))
