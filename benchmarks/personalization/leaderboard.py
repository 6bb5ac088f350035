"""The personalization leaderboard: every registered algorithm on four federated data sets.

Every algorithm of `fedmtl.algorithms.ALGORITHMS` (local and FedAvg included; algorithms
registered later join automatically) on Synthetic(1,1), Vehicle Sensor, HAR (6 activities,
raw windows, Conv1D) and C-MAPSS FD001 (RUL regression). Hyper-parameters are chosen on seed
0 by a grid search (GRIDS below, times the data set's learning rates) on a validation split
carved from each node's TRAINING rows; the chosen values then train on the full training rows
with 3 seeds (data split and training) and are tested on the test rows. One table per data set:
node-mean and worst-10% test metric of the global and the personalized model (mean ± std over
seeds), the share of nodes where the personalized model beats the local one and the global
one, the chosen hyper-parameters and the wall time. Writes leaderboard.json and leaderboard.md
into --out; runs of separate data sets (or algorithms) merge into the same files.

    python benchmarks/personalization/leaderboard.py                         # everything
    python benchmarks/personalization/leaderboard.py --datasets vehicle      # one data set
    python benchmarks/personalization/leaderboard.py --quick --out /tmp/lb   # end-to-end check
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedmtl import algorithms, datasets, models
from fedmtl.data import FederatedData
from fedmtl.engine import Federation
from fedmtl.experiment import Comparison, Failure, compare
from fedmtl.objectives import HIGHER_IS_BETTER
from fedmtl.output import atomic_write
from fedmtl.report import primary_metric, summarize
from fedmtl.synthetic import synthetic

# ----- the protocol -----

# Each algorithm's one main hyper-parameter: {factory keyword: values to try}. The search
# crosses it with the data set's learning rates (`Spec.lrs`), so an algorithm with a main
# hyper-parameter of 3 values costs 3 x 3 runs per data set. An algorithm missing here (one
# registered after this script was written) is searched over the learning rate alone, at its
# factory's defaults. --quick keeps the first two values of each list.
GRIDS: dict[str, dict[str, tuple]] = {
    "local": {},  # nothing but the learning rate
    "fedavg": {},  # plain averaging (server rate 1); personalized = 5 fine-tuning steps
    "fedper": {},  # body federated, head personal: nothing else to tune
    "mocha": {"lam": (1e-3, 1e-2, 1e-1)},  # λ: strength of the learned-Ω coupling of the heads
    "ditto": {"lam": (0.01, 0.1, 1.0)},  # λ: pull of the personal model toward the global one
    "fedprox": {"mu": (0.001, 0.01, 0.1)},  # μ: proximal pull toward the round's global model
    "scaffold": {},  # control variates; its server rate stays 1 (the paper's η_g = 1)
    "fedavgm": {"server_optimizer": (0.3, 1.0)},  # server rate, momentum 0.9 (Hsu et al.)
    "fedadam": {"server_optimizer": (0.01, 0.03, 0.1)},  # server rate η (Reddi et al. grid)
    "fedyogi": {"server_optimizer": (0.01, 0.03, 0.1)},  # server rate η
    "fedadagrad": {"server_optimizer": (0.03, 0.1, 0.3)},  # server rate η
    "fedrep": {"head_epochs": (1, 5)},  # head epochs before the body epoch (paper: 10; 5 caps
    #                                     the cost, each head epoch is a pass over the data)
    "lg_fedavg": {},  # head federated, body personal
    "fedbabu": {},  # head frozen in training, fine-tuned (5 steps) before testing
    "fedbn": {},  # normalization layers personal (LayerNorm variant of the model)
    "pfedme": {"lam": (5.0, 15.0)},  # λ of the Moreau envelope (paper 15); lr -> personal_lr
    "perfedavg": {"alpha": (0.005, 0.02)},  # α: the MAML adaptation (and fine-tuning) rate
    "perfedavg_hf": {"alpha": (0.005, 0.02)},  # the same, Hessian-free variant
    "apfl": {"alpha": (0.25, 0.5, 0.75)},  # the initial mixing weight α (then learned)
    "fedala": {"eta": (0.1, 1.0)},  # η: learning rate of the element-wise mixing weights
    "ifca": {"clusters": (2, 3)},  # k cluster models
}
# Where the data set's learning rate goes, when not to `local_optimizer`: pFedMe's data-facing
# rate is the inner rate ν (its local_optimizer η moves w along λ(w - θ); kept at the paper's
# 0.005). A grid point with ν·λ >= 2 is rejected by the factory and recorded as invalid.
LR_ARGUMENT = {"pfedme": "personal_lr"}
VALIDATION_SHARE = 0.2  # of each node's training rows, for the search only
SEEDS = (0, 1, 2)
FINETUNE_STEPS = 5  # steps that personalize a global model (FedAvg & co.) before testing
LOCAL_EPOCHS = 1
QUICK_ROUNDS = 5


@dataclasses.dataclass(frozen=True)
class Spec:
    """One data set of the leaderboard.

    Attributes:
      label: how tables name it.
      load: seed -> FederatedData (regression targets raw; standardized by `prepare`).
      model: `models.build` name; hidden: MLP hidden sizes.
      rounds, batch_size: the federation (E = LOCAL_EPOCHS local epochs per round).
      lrs: local learning rates searched (SGD).
      carve: how the validation rows are taken from each node's training rows: "random", or
        "tail" (the node's last rows: whole engines of a window data set, fewer windows that
        overlap a training window).
      published: a published number for this protocol, or why there is none.
    """

    label: str
    load: Callable[[int], FederatedData]
    model: str
    rounds: int
    batch_size: int
    lrs: tuple[float, ...]
    carve: str = "random"
    hidden: tuple[int, ...] = (64,)
    published: str = ""


DATASETS = {
    "synthetic": Spec(
        "Synthetic(1,1): 30 nodes, 60 features, 10 classes, MLP(64)",
        lambda seed: synthetic(1.0, 1.0, num_nodes=30, seed=seed),
        "mlp", rounds=100, batch_size=10, lrs=(0.01, 0.05, 0.1),
        published="none for this protocol: FedProx (Li et al., MLSys 2020) reports "
        "Synthetic(1,1) as training-loss and test-accuracy curves of the global model of a "
        "linear model (no table), and the personalization papers use other synthetic "
        "settings (pFedMe: Synthetic(0.5,0.5), 100 nodes)."),
    "vehicle": Spec(
        "Vehicle Sensor: 23 sensors, 100 features, binary, MLP(64)",
        lambda seed: datasets.vehicle(seed=seed),
        "mlp", rounds=50, batch_size=32, lrs=(0.01, 0.05, 0.1),
        published="none for this protocol: MOCHA's Table 1 (Smith et al., NeurIPS 2017: "
        "error 13.4 global, 7.81 local, 6.59 MTL, mean over tasks) uses linear SVMs; "
        "benchmarks/reproductions/mocha_table1.py reproduces it with linear models."),
    "har": Spec(
        "HAR: 30 subjects, 6 activities, raw windows [128, 9], Conv1D",
        lambda seed: datasets.har("activity", "raw", seed=seed),
        "conv1d", rounds=20, batch_size=32, lrs=(0.05, 0.1),  # ~9 s a round on 2 CPU cores
        published="none for this protocol: papers on federated HAR (UCI HAR, one node per "
        "subject) use other models, splits and feature sets, and report accuracy pooled or "
        "per paper-specific split; none we found matches a Conv1D on random 75/25 "
        "per-subject splits."),
    "fd001": Spec(
        "C-MAPSS FD001: 10 nodes x 10 engines, windows [30, 14], RUL capped at 125, MLP(64)",
        lambda seed: datasets.turbofan_windows("FD001", seed=seed),
        "mlp", rounds=50, batch_size=32, lrs=(0.003, 0.01, 0.03), carve="tail",
        published="none for this protocol: published FD001 RMSEs (about 12-16 cycles for "
        "centralized deep nets, e.g. the CNN of Li, Ding & Sun 2018 at 12.6) train one model "
        "on all 100 engines; federated papers use other node splits and models."),
}


# ----- data -----


def prepare(data: FederatedData) -> FederatedData:
    """Regression targets standardized as the CLI does (train mean/std over all nodes);
    metrics come back in raw units (cycles)."""
    return data.standardize_targets() if data.task == "regression" else data


def carve(data: FederatedData, share: float, mode: str, seed: int = 0) -> FederatedData:
    """The search's data: each node's training rows split into train and validation (as the
    test split); the test rows are never read.

    Args:
      share: validation share of each node's training rows (at least one row, at least one
        left to train on).
      mode: "random" (a seeded random subset) or "tail" (the node's last rows).
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list, list] = ([], [], [], [])
    for k in range(data.num_nodes):
        x, y = data.train.node(k)
        n = len(y)
        n_val = min(max(1, round(share * n)), n - 1)
        order = np.arange(n) if mode == "tail" else rng.permutation(n)
        train_rows, val_rows = np.sort(order[: n - n_val]), np.sort(order[n - n_val:])
        for part, rows in zip(parts, (x[train_rows], y[train_rows], x[val_rows], y[val_rows]),
                              strict=True):
            part.append(rows)
    return FederatedData.from_splits(*parts, task=data.task, num_classes=data.num_classes,
                                     names=data.names)


# ----- algorithms -----


def algorithm_names() -> list[str]:
    """local, fedavg, then every other registered algorithm in the registry's order."""
    return list(dict.fromkeys(["local", "fedavg", *algorithms.ALGORITHMS]))


def build_module(spec: Spec, data: FederatedData, seed: int, norm: str | None):
    kwargs = {"norm": norm} if norm is not None else {}
    return models.build(spec.model, data.feature_shape, data.num_classes or 1, seed=seed,
                        hidden=spec.hidden, **kwargs)


def build(name: str, spec: Spec, data: FederatedData, params: dict, seed: int,
          norm: str | None, label: str | None = None) -> algorithms.Algorithm:
    """`name`'s factory on a fresh model, with the learning rate and hyper-parameters in
    `params` ({"lr": ..., keyword: ...}); renamed `label` (grid points need distinct names)."""
    params = dict(params)
    kwargs = {LR_ARGUMENT.get(name, "local_optimizer"): params.pop("lr"), "loss": None}
    algo = algorithms.ALGORITHMS[name](build_module(spec, data, seed, norm),
                                       **kwargs, **params)
    return algo._replace(name=label or name)


def model_variant(name: str, spec: Spec, data: FederatedData) -> tuple[str | None, str | None]:
    """(norm, None) when `name` applies to the data set's model, plain (norm None) or with
    LayerNorm layers (norm "layer", e.g. FedBN, whose personal parameters are the
    normalization layers); (None, reason) when it applies to neither."""
    defaults = {"lr": searched_lrs(spec, True)[0]}
    try:
        build(name, spec, data, defaults, 0, None)
        return None, None
    except algorithms.AlgorithmError as e:
        first = str(e)
    if "norm" not in inspect.signature(models.build).parameters:
        return None, first
    try:
        build(name, spec, data, defaults, 0, "layer")
        return "layer", None
    except (algorithms.AlgorithmError, ValueError) as e:
        return None, f"{first} (with norm='layer': {e})"


def searched_lrs(spec: Spec, quick: bool) -> tuple[float, ...]:
    """The data set's learning rates; --quick: the middle one."""
    return (spec.lrs[len(spec.lrs) // 2],) if quick else spec.lrs


def grid_points(name: str, spec: Spec, quick: bool) -> list[dict]:
    """Every {"lr": ..., keyword: value} the search tries for `name`."""
    own = {k: v[:2] if quick else v for k, v in GRIDS.get(name, {}).items()}
    grid = {"lr": searched_lrs(spec, quick), **own}
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def label_of(name: str, point: dict) -> str:
    return name + "[" + ",".join(f"{k}={v:g}" for k, v in point.items()) + "]"


def evaluated_kind(per_node: dict) -> str:
    """The model kind the search scores: personalized, else global, else local."""
    return next(k for k in ("personalized", "global", "local") if k in per_node)


# ----- search and final runs -----


def federation(spec: Spec, rounds: int, seed: int) -> Federation:
    return Federation(rounds=rounds, local_epochs=LOCAL_EPOCHS, batch_size=spec.batch_size,
                      finetune_steps=FINETUNE_STEPS, seed=seed, rounds_per_sync=rounds)


def search(name: str, spec: Spec, val: FederatedData, norm, rounds: int, quick: bool,
           console: Console) -> dict:
    """Grid search of `name` on the validation split (seed 0): every point's node-mean
    validation metric (or why it has none), and the best point (None if every point failed)."""
    metric = primary_metric(val.task)
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    points, algos, tried = grid_points(name, spec, quick), [], []
    for point in points:
        try:
            algos.append(build(name, spec, val, point, 0, norm, label_of(name, point)))
            tried.append({"params": point, "label": algos[-1].name})
        except algorithms.AlgorithmError as e:
            tried.append({"params": point, "invalid": str(e)})
    start = time.perf_counter()
    comparison = guarded_compare(algos, val, federation(spec, rounds, 0), console)
    failures = {f.name: f.error for f in comparison.failures}
    best = None
    for entry in tried:
        label = entry.pop("label", None)
        if label is None:
            continue
        if label in failures:
            entry["failed"] = failures[label]
            continue
        per_node = comparison.result(label).per_node
        kind = evaluated_kind(per_node)
        entry["kind"] = kind
        entry["score"] = float(np.nanmean(per_node[kind][metric]))
        if best is None or sign * entry["score"] > sign * best["score"]:
            best = entry
    shown = ", ".join(
        f"{label_of('', e['params'])[1:-1]}: "
        + (f"{e['score']:.4g}" if "score" in e else "failed" if "failed" in e else "invalid")
        for e in tried)
    console.print(f"  {name}: validation {metric} {shown} ({time.perf_counter() - start:.0f} s)")
    return {"grid": tried, "chosen": None if best is None else best["params"],
            "seconds": time.perf_counter() - start}


def guarded_compare(algos: list, data: FederatedData, fed: Federation, console: Console
                    ) -> Comparison:
    """`compare`, one algorithm at a time, so that an algorithm that raises (a bug, not a
    divergence) is recorded as a failure with its error instead of ending a long run."""
    results, failures = [], []
    for algo in algos:
        start = time.perf_counter()
        try:
            done = compare([algo], data, fed)
        except Exception as e:  # noqa: BLE001 - recorded and shown, never silent
            error = f"raised {type(e).__name__}: {' '.join(str(e).split())[:300]}"
            console.print(f"  [red]{algo.name} {error}[/]")
            failures.append(Failure(algo.name, error, time.perf_counter() - start))
            continue
        results += done.results
        failures += done.failures
    return Comparison(data, fed, tuple(results), tuple(failures))


def final_runs(names: list[str], chosen: dict, norms: dict, spec: Spec, seed: int, rounds: int,
               console: Console) -> dict:
    """Every algorithm with its chosen values on the full training rows of seed `seed`,
    tested on the test rows: {name: run record}."""
    data = prepare(spec.load(seed))
    metric = primary_metric(data.task)
    algos = [build(n, spec, data, chosen[n], seed, norms[n]) for n in names]
    comparison = guarded_compare(algos, data, federation(spec, rounds, seed), console)
    rows = [r for r in summarize(comparison) if r["metric"] == metric]
    out = {f.name: {"seed": seed, "failed": f.error, "seconds": f.seconds}
           for f in comparison.failures}
    for result in comparison.results:
        kinds = {r["kind"]: {k: r[k] for k in ("node_mean", "worst10", "weighted_mean",
                                                "beats_local", "beats_global")}
                 for r in rows if r["algorithm"] == result.name}
        out[result.name] = {"seed": seed, "kinds": kinds, "seconds": result.seconds}
    return out


def aggregate(runs: list[dict]) -> dict:
    """Mean and std over the seeds that finished, per (kind, field)."""
    done = [r for r in runs if "kinds" in r]
    summary = {"seeds_done": len(done), "seeds_failed": len(runs) - len(done),
               "seconds_per_run": float(np.mean([r["seconds"] for r in runs])) if runs else None}
    for kind in dict.fromkeys(k for r in done for k in r["kinds"]):
        fields = {}
        for field in ("node_mean", "worst10", "beats_local", "beats_global"):
            values = [r["kinds"][kind][field] for r in done
                      if kind in r["kinds"] and r["kinds"][kind][field] is not None]
            if values:
                fields[field] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
        summary[kind] = fields
    return summary


def run_dataset(key: str, args, console: Console) -> dict:
    spec = DATASETS[key]
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else spec.rounds)
    search_rounds = args.search_rounds or rounds
    seeds = args.seeds or ((0,) if args.quick else SEEDS)
    names = [n for n in algorithm_names() if args.algorithms is None or n in args.algorithms
             or n == "local"]
    start = time.perf_counter()
    val = prepare(carve(spec.load(0), VALIDATION_SHARE, spec.carve))
    console.rule(f"[bold]{key}[/]: {spec.label}")
    console.print(f"validation data (seed 0, {VALIDATION_SHARE:.0%} of each node's training "
                  f"rows, {spec.carve}): {val.summary()}")
    entry = {"algorithms": {}, "left_out": {}}
    norms, chosen = {}, {}
    for name in names:
        norm, reason = model_variant(name, spec, val)
        if reason is not None:
            entry["left_out"][name] = f"does not apply to {spec.model}: {reason}"
            console.print(f"  [yellow]{name} left out[/]: {reason}")
            continue
        norms[name] = norm
        found = search(name, spec, val, norm, search_rounds, args.quick, console)
        entry["algorithms"][name] = {"model": spec.model + (f", norm={norm}" if norm else ""),
                                     "search": found, "runs": []}
        if found["chosen"] is None:
            entry["left_out"][name] = "failed (diverged or raised) or invalid at every grid point"
        else:
            chosen[name] = found["chosen"]
    finals = [n for n in names if n in chosen]
    for seed in seeds:
        t = time.perf_counter()
        for name, run in final_runs(finals, chosen, norms, spec, seed, rounds,
                                           console).items():
            entry["algorithms"][name]["runs"].append(run)
        console.print(f"test runs, seed {seed}: {len(finals)} algorithms "
                      f"({time.perf_counter() - t:.0f} s)")
    for name in finals:
        record = entry["algorithms"][name]
        record["summary"] = aggregate(record["runs"])
    entry["config"] = {
        "quick": args.quick, "rounds": rounds, "search_rounds": search_rounds,
        "local_epochs": LOCAL_EPOCHS, "batch_size": spec.batch_size,
        "finetune_steps": FINETUNE_STEPS, "seeds": list(seeds), "model": spec.model,
        "hidden": list(spec.hidden), "lrs": list(searched_lrs(spec, args.quick)),
        "validation_share": VALIDATION_SHARE, "validation_rows": spec.carve,
        "search_seed": 0, "metric": primary_metric(val.task),
        "criterion": "node mean of the validation metric of the personalized model (its "
                     "global model if it has none; local: its local model)",
    }
    entry.update(label=spec.label, published=spec.published, machine=machine(),
                 command=command_line(), date=datetime.datetime.now().isoformat(timespec="seconds"),
                 seconds=time.perf_counter() - start)
    return entry


# ----- machine and outputs -----


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "cores": cores, "jax_backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
            "python": platform.python_version(), "git_commit": commit or None}


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def merge(path: Path, key: str, entry: dict, partial: bool) -> dict:
    """The leaderboard in `path` with data set `key` replaced by `entry`; a `partial` entry
    (a subset of the algorithms) under the same protocol replaces only its algorithms."""
    board = json.loads(path.read_text()) if path.exists() else {"datasets": {}}
    old = board["datasets"].get(key)
    if partial and old is not None and old.get("config") == entry["config"]:
        for name in entry["algorithms"]:
            old["left_out"].pop(name, None)
        old["algorithms"].update(entry["algorithms"])
        old["left_out"].update(entry["left_out"])
        old["runs_merged"] = [*old.get("runs_merged", []),
                              {k: entry[k] for k in ("command", "date", "machine", "seconds")}]
        entry = old
    board["datasets"][key] = entry
    board["datasets"] = {k: board["datasets"][k] for k in DATASETS if k in board["datasets"]}
    return board


def fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}" if metric in ("accuracy", "balanced_accuracy") else f"{value:.2f}"


def cell(summary: dict, kind: str, field: str, metric: str) -> str:
    v = summary.get(kind, {}).get(field)
    if v is None:
        return "—"
    if field.startswith("beats"):
        return f"{100 * v['mean']:.0f}%"
    return f"{fmt(v['mean'], metric)} ± {fmt(v['std'], metric)}"


COLUMNS = ("algorithm", "global mean", "global worst10%", "pers. mean", "pers. worst10%",
           "pers. > local", "pers. > global", "chosen", "s/run")


def rows(entry: dict) -> list[tuple[str, ...]]:
    """One row per algorithm: the table's cells."""
    metric = entry["config"]["metric"]
    out = []
    for name, record in entry["algorithms"].items():
        summary = record.get("summary")
        chosen = record["search"]["chosen"]
        if summary is None or chosen is None:
            continue
        personal = "local" if name == "local" else "personalized"
        ran = summary["seeds_done"], summary["seeds_done"] + summary.get("seeds_failed", 0)
        note = "" if ran[0] == ran[1] else f" ({ran[1] - ran[0]} of {ran[1]} seeds failed)"
        out.append((
            name + (" (local model)" if name == "local" else "")
            + (f" [{record['model'].split(', ', 1)[1]}]" if ", " in record["model"] else "")
            + note,
            cell(summary, "global", "node_mean", metric),
            cell(summary, "global", "worst10", metric),
            cell(summary, personal, "node_mean", metric),
            cell(summary, personal, "worst10", metric),
            cell(summary, personal, "beats_local", metric),
            cell(summary, personal, "beats_global", metric),
            ", ".join(f"{k}={v:g}" for k, v in chosen.items()),
            f"{summary['seconds_per_run']:.0f}",
        ))
    return out


def describe(entry: dict) -> list[str]:
    c, m = entry["config"], entry["machine"]
    metric = c["metric"]
    unit = "accuracy %, higher is better" if metric == "accuracy" else \
        "RMSE in cycles, lower is better"
    return [
        f"Test {metric} ({unit}); mean ± std over seeds {c['seeds']}; node mean and mean of "
        f"the worst 10% of nodes. pers. > local / > global: share of nodes where the "
        f"personalized model is strictly better (mean over seeds). s/run: wall seconds of one "
        f"training run with compilation.",
        f"Protocol: {c['rounds']} rounds (search: {c.get('search_rounds', c['rounds'])}), "
        f"E = {c['local_epochs']}, B = {c['batch_size']}, "
        f"{c['finetune_steps']} fine-tuning steps; hyper-parameters chosen on seed 0 by the "
        f"node-mean validation {metric} on {c['validation_share']:.0%} of each node's training "
        f"rows ({c['validation_rows']}); learning rates {c['lrs']}."
        + (" QUICK CHECK: tiny grids and few rounds, not a result." if c["quick"] else ""),
        f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} on {m['jax_backend']}; "
        f"{entry['date']}; {entry['seconds'] / 60:.1f} min; `{entry['command']}`.",
        f"Published: {entry['published']}",
    ]


def print_tables(board: dict, console: Console) -> None:
    for key, entry in board["datasets"].items():
        table = Table(title=f"{key}: {entry['label']}")
        for col in COLUMNS:
            table.add_column(col, justify="left" if col in ("algorithm", "chosen") else "right")
        for row in rows(entry):
            table.add_row(*map(escape, row))  # "[norm=layer]" is not markup
        console.print(table)
        for line in describe(entry):
            console.print(line)
        for name, reason in entry["left_out"].items():
            console.print(f"[yellow]left out[/]: {name}: {reason}")


def markdown(board: dict) -> str:
    md = ["# Personalization leaderboard", "",
          "Written by `benchmarks/personalization/leaderboard.py`; see the README there for the "
          "protocol.", ""]
    for key, entry in board["datasets"].items():
        md += [f"## {key}: {entry['label']}", "", "| " + " | ".join(COLUMNS) + " |",
               "|" + "---|" * len(COLUMNS)]
        md += ["| " + " | ".join(r) + " |" for r in rows(entry)]
        md += [""] + [line + "  " for line in describe(entry)]
        md += [f"Left out: {name}: {reason}  " for name, reason in entry["left_out"].items()]
        md.append("")
    return "\n".join(md) + "\n"


def compile_cache() -> None:
    """Reruns with the same shapes and values reuse compiled programs (a persistent cache)."""
    cache = Path(tempfile.gettempdir()) / "fedmtl-leaderboard-jax-cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def plan(keys: list[str], args) -> str:
    """How many training runs the invocation makes (each compiles once)."""
    names = [n for n in algorithm_names() if args.algorithms is None or n in args.algorithms
             or n == "local"]
    seeds = len(args.seeds or ((0,) if args.quick else SEEDS))
    parts = []
    for key in keys:
        searched = sum(len(grid_points(n, DATASETS[key], args.quick)) for n in names)
        parts.append(f"{key}: {searched} search + {len(names) * seeds} test runs")
    return f"{len(names)} algorithms; " + "; ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--algorithms", nargs="+", default=None,
                        help="a subset of the registry (local always runs: it is the baseline); "
                        "merges into an existing leaderboard of the same protocol")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help=f"test seeds (default {' '.join(map(str, SEEDS))}; --quick: 0)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds for every data set (default: each data set's; "
                        f"--quick: {QUICK_ROUNDS})")
    parser.add_argument("--search-rounds", type=int, default=None,
                        help="rounds of the validation search (default: --rounds); fewer "
                        "make the search cheaper but favour fast-starting settings")
    parser.add_argument("--one-lr", action="store_true",
                        help="search each algorithm's own hyper-parameter at the data set's "
                        "middle learning rate only (a third of the search; recorded in the "
                        "protocol)")
    parser.add_argument("--quick", action="store_true",
                        help="one learning rate, two values of each hyper-parameter, one seed, "
                        f"{QUICK_ROUNDS} rounds: an end-to-end check, not a result")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="output folder (default: next to this script)")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: print the tables of --out's leaderboard.json and "
                        "rewrite its leaderboard.md")
    args = parser.parse_args(argv)
    if args.one_lr:
        for key, spec in DATASETS.items():
            DATASETS[key] = dataclasses.replace(spec, lrs=(spec.lrs[len(spec.lrs) // 2],))
    unknown = set(args.algorithms or ()) - set(algorithm_names())
    if unknown:
        parser.error(f"unknown algorithm(s) {sorted(unknown)}; registered: {algorithm_names()}")
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the tables' nine columns
        console = Console(width=160)
    path = args.out / "leaderboard.json"
    if args.render:
        board = json.loads(path.read_text())
        atomic_write(args.out / "leaderboard.md", markdown(board))
        print_tables(board, console)
        return 0
    compile_cache()
    console.print(f"plan: {plan(args.datasets, args)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for key in args.datasets:
        board = merge(path, key, run_dataset(key, args, console), args.algorithms is not None)
        atomic_write(path, json.dumps(board, indent=2) + "\n")
        atomic_write(args.out / "leaderboard.md", markdown(board))
        console.print(f"wrote {path} and leaderboard.md ({key})")
    print_tables(json.loads(path.read_text()), console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
