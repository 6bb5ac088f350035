"""Reports: per-node global vs local vs personalized metrics, summaries and tables.

Each number says which model kind of which algorithm it measures on which split (test).
Binary tasks (2 classes) also report balanced accuracy and ROC AUC: with rare positives,
accuracy hardly differs from always predicting the majority class. A node's AUC is undefined
(NaN, shown as "—") when its test set holds one class only; summaries leave such nodes out of
that metric and count them (`undefined_nodes`). A seed sweep (`compare_seeds`) is summarized
as each statistic's mean ± standard error over the training seeds (`summarize_seeds`).
"""

from __future__ import annotations

import math

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from fedmtl.experiment import Comparison, SeedComparison
from fedmtl.objectives import HIGHER_IS_BETTER, METRICS, metrics

KIND_ORDER = ("global", "personalized", "local")


def primary_metric(task: str) -> str:
    """accuracy for classification, RMSE for regression."""
    return METRICS[task][0]


def headline_metrics(task: str, num_classes: int | None = None) -> tuple[str, ...]:
    """The metrics the printed report summarizes: the primary one, and for binary tasks also
    balanced accuracy and ROC AUC."""
    if task == "classification" and num_classes == 2:
        return ("accuracy", "balanced_accuracy", "auc")
    return (primary_metric(task),)


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


def _beats(a: np.ndarray, b: np.ndarray, metric: str) -> float | None:
    """Share of nodes where `a` is strictly better than `b`, over the nodes where both are
    defined (None when there is none)."""
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return None
    better = a[both] > b[both] if HIGHER_IS_BETTER[metric] else a[both] < b[both]
    return float(np.mean(better))


def worst10(values: np.ndarray, metric: str) -> float:
    """The mean of the worst 10% (at least one) of defined values [K] of `metric`."""
    ordered = np.sort(values)
    count = max(1, int(np.ceil(0.1 * len(ordered))))
    return float(np.mean(ordered[:count] if HIGHER_IS_BETTER[metric] else ordered[-count:]))


def summarize(comparison: Comparison) -> list[dict]:
    """One summary row per (algorithm, kind) for each metric.

    Fields: algorithm, kind, metric, epsilon (the run's DP ε, None without privacy),
    weighted_mean (weighted by test examples), node_mean,
    node_std, worst10 (mean over the worst 10% of nodes, at least one), and for personalized
    models beats_global / beats_local: share of nodes where it is strictly better. Nodes
    without test examples are left out (`untested_nodes` says how many), and so are, per
    metric, tested nodes where it is undefined (NaN: the AUC of a node whose test set holds one
    class; `undefined_nodes` says how many). The metrics are `objectives.metrics(task,
    num_classes)`; a metric defined on no node has None for its means.
    """
    data = comparison.data
    tested = data.test.counts > 0  # nodes without test examples have no metric
    if not tested.any():
        raise ValueError("no node has test examples: nothing to summarize")
    rows = []
    for metric in metrics(data.task, data.num_classes):
        local = local_baseline(comparison, metric)
        local = None if local is None else local[tested]
        for name, kind in columns(comparison):
            per_node = {k: {m: v[tested] for m, v in d.items()}
                        for k, d in comparison.result(name).per_node.items()}
            v = per_node[kind][metric]
            defined = np.isfinite(v)
            counts = data.test.counts[tested][defined]
            row = {
                "algorithm": name, "kind": kind, "metric": metric,
                "weighted_mean": None, "node_mean": None, "node_std": None, "worst10": None,
                "beats_global": None, "beats_local": None,
                "epsilon": comparison.result(name).privacy.get("epsilon"),
                "untested_nodes": int((~tested).sum()),
                "undefined_nodes": int((~defined).sum()),
            }
            if defined.any():
                row.update(
                    weighted_mean=float(np.sum(counts / counts.sum() * v[defined])),
                    node_mean=float(np.mean(v[defined])),
                    node_std=float(np.std(v[defined])),
                    worst10=worst10(v[defined], metric),
                )
            if kind == "personalized":
                if "global" in per_node:
                    row["beats_global"] = _beats(v, per_node["global"][metric], metric)
                if local is not None:
                    row["beats_local"] = _beats(v, local, metric)
            rows.append(row)
    return rows


def format_metric(value, metric: str | None = None) -> str:
    """A metric value as the tables show it ("—" when undefined)."""
    if value is None or not np.isfinite(value):
        return "—"
    if metric in ("accuracy", "balanced_accuracy"):
        return f"{100 * value:.1f}%"
    if metric == "auc":  # in [0, 1]: three decimals fit an 80-column table
        return f"{value:.3f}"
    return f"{value:.4g}"


def summary_table(comparison: Comparison, metric: str | None = None, *,
                  caption: bool = True) -> Table:
    """Summary of one metric (default: the primary one): one row per algorithm and model kind;
    `caption`: explain the columns below the table."""
    metric = metric or primary_metric(comparison.data.task)
    direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    rows = [r for r in summarize(comparison) if r["metric"] == metric]
    tested = int((comparison.data.test.counts > 0).sum())
    undefined = max((r["undefined_nodes"] for r in rows), default=0)
    over = (f"{tested - undefined} of {tested} nodes with test data ({undefined} with one "
            "test class only: AUC undefined)" if undefined else f"{tested} nodes with test data")
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Test {metric} summary over {over} ({direction} is better)",
        caption="wtd: mean weighted by test examples; mean, std: over nodes; worst10: mean of "
        "the worst 10% of nodes; >glob, >local: share of nodes where the personalized model "
        "is strictly better than the global, the local-only one" if caption else None,
    )
    private = any(r["epsilon"] is not None for r in rows)
    for col in ("algorithm", "model", "wtd", "mean", "std", "worst10", ">glob", ">local",
                *(("ε",) if private else ())):
        table.add_column(col, justify="left" if col in ("algorithm", "model") else "right",
                         no_wrap=True)
    share = lambda s: "—" if s is None else f"{100 * s:.0f}%"
    for row in rows:
        eps = row["epsilon"]
        table.add_row(
            row["algorithm"], row["kind"], format_metric(row["weighted_mean"], metric),
            format_metric(row["node_mean"], metric), format_metric(row["node_std"], metric),
            format_metric(row["worst10"], metric), share(row["beats_global"]),
            share(row["beats_local"]),
            *(() if not private else ("—" if eps is None else "∞" if math.isinf(eps)
                                      else f"{eps:.3g}",)),
        )
    if private:
        table.caption = (table.caption or "") + ("; " if table.caption else "") + (
            "ε: the run's differential privacy after its rounds, at the δ of --delta")
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


def node_table(comparison: Comparison, max_rows: int = 10, metric: str | None = None) -> Table:
    """Per-node metric (default: the primary one), every algorithm and model kind side by side;
    "—" where it is undefined (no test data; AUC: one test class only)."""
    data, metric = comparison.data, metric or primary_metric(comparison.data.task)
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
            *[format_metric(comparison.result(n).per_node[kd][metric][k], metric)
              for n, kd in cols],
        )
    return table


def print_report(comparison: Comparison, console: Console | None = None,
                 max_rows: int = 10) -> None:
    """Per-node tables (the primary metric; binary tasks also AUC), then a summary table of each
    headline metric (`headline_metrics`)."""
    console = console or Console()
    data = comparison.data
    shown = headline_metrics(data.task, data.num_classes)
    for metric in dict.fromkeys((shown[0], shown[-1])):
        console.print(node_table(comparison, max_rows, metric))
    for metric in shown:  # one caption, below the last table
        console.print(summary_table(comparison, metric, caption=metric == shown[-1]))


SEED_STATS = ("node_mean", "worst10", "beats_local")  # what a seed sweep's summary averages


def mean_se(values: list) -> dict:
    """{"mean", "se"} of one statistic over seeds: se = std (ddof 1) / sqrt(S), None for one
    seed; both None when some seed has no value (e.g. >local of a global model)."""
    if not values or any(v is None for v in values):
        return {"mean": None, "se": None}
    v = np.asarray(values, float)
    se = float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
    return {"mean": float(v.mean()), "se": se}


def summarize_seeds(sweep: SeedComparison) -> list[dict]:
    """One row per (algorithm, kind, metric) of `summarize`, over the sweep's seeds.

    Fields: algorithm, kind, metric, seeds (S), and for each of node_mean, worst10 and
    beats_local a {"mean", "se"} over the seeds (`mean_se`: standard error = std over seeds,
    ddof 1, / sqrt(S)). Empty when no algorithm finished.
    """
    if not sweep.runs[0].results:
        return []
    per_seed = [summarize(run) for run in sweep.runs]  # rows in the same order for every seed
    rows = []
    for i, first in enumerate(per_seed[0]):
        row = {k: first[k] for k in ("algorithm", "kind", "metric")}
        row["seeds"] = len(per_seed)
        for stat in SEED_STATS:
            row[stat] = mean_se([seed_rows[i][stat] for seed_rows in per_seed])
        rows.append(row)
    return rows


def seeds_table(sweep: SeedComparison, metric: str | None = None, *,
                caption: bool = True) -> Table:
    """One metric (default: the primary one) over the seeds: per algorithm and model kind the
    node mean, worst10 and >local as mean ± standard error over S seeds."""
    metric = metric or primary_metric(sweep.data.task)
    direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    rows = [r for r in summarize_seeds(sweep) if r["metric"] == metric]
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Test {metric}: mean ± s.e. over {len(sweep.seeds)} seeds ({direction} is "
        "better)",
        caption="over training seeds " + ", ".join(map(str, sweep.seeds)) + " (same data "
        "split; " + ("initial weights drawn from each seed" if sweep.weights_per_seed else
                     "same initial model") + "): mean: over nodes; worst10: mean of the worst "
        "10% of nodes; >local: share of nodes where the personalized model is strictly better than "
        "the local-only one; ± one standard error (std over seeds / √S)" if caption else None,
    )
    for col in ("algorithm", "model", "mean", "worst10", ">local"):
        table.add_column(col, justify="left" if col in ("algorithm", "model") else "right",
                         no_wrap=True)
    share = lambda s: "—" if s is None else f"{100 * s:.0f}%"

    def cell(stat: dict, show) -> str:
        if stat["mean"] is None:
            return "—"
        return show(stat["mean"]) + ("" if stat["se"] is None else f" ± {show(stat['se'])}")

    as_metric = lambda v: format_metric(v, metric)
    for row in rows:
        table.add_row(row["algorithm"], row["kind"], cell(row["node_mean"], as_metric),
                      cell(row["worst10"], as_metric), cell(row["beats_local"], share))
    return table


def seed_line(comparison: Comparison, seed: int) -> str:
    """One line per seed: every column's node-mean primary metric ("seed 3: fedavg/global
    70.2% · ...")."""
    metric = primary_metric(comparison.data.task)
    rows = [r for r in summarize(comparison) if r["metric"] == metric] if (
        comparison.results) else []
    parts = [f"{r['algorithm']}/{r['kind']} {format_metric(r['node_mean'], metric)}"
             for r in rows]
    return f"seed {seed}: {metric} " + (" · ".join(parts) if parts else "no results")


def print_seeds_report(sweep: SeedComparison, console: Console | None = None) -> None:
    """A line per seed, then a mean ± s.e. table of each headline metric (`headline_metrics`)."""
    console = console or Console()
    for seed, run in zip(sweep.seeds, sweep.runs, strict=True):
        console.print(seed_line(run, seed))
    shown = headline_metrics(sweep.data.task, sweep.data.num_classes)
    for metric in shown:
        console.print(seeds_table(sweep, metric, caption=metric == shown[-1]))
