"""Does personalization stay ahead of the local and the global model when nodes straggle
and drop out? MOCHA, FedPer and FedAvg (and local training, the baseline) on Synthetic(1,1).

The protocol is `fedmtl compare`'s defaults (fedmtl/cli.py): Synthetic(1,1) over 30 nodes, a
75/25 train/test split per node, an MLP 60-64-10 (its output layer the `head`: FedPer's and
MOCHA's personal part), every node in every round, 50 rounds of E = 1 local epoch, B = 10,
SGD lr 0.05, FedAvg's global model fine-tuned for 5 local steps into its personalized model.
Each setting adds a systems model, `Systems(stragglers=p, straggler_policy="keep",
straggler_unit="step", dropout=d)`, for p in {0, 0.5, 0.9} and d in {0, 0.2, 0.5} (the
full grid): round(30·p) nodes of each round run only 1..U-1 of their U local steps (their
partial work is kept), and each node fails to report with probability d (its work is lost).
Local training runs under the same systems model (a node that drops out or straggles
trains less), so every column sees the same participation.

Reports the node-mean test accuracy (`fedmtl.report.summarize`: the mean over the 30 nodes
of each node's accuracy on its own test rows) of each algorithm's model kinds per setting,
mean ± s.e. over --seeds (each seed: a Synthetic(1,1) draw and the training's seed).
Writes robustness.json and robustness.md into --out.

    python benchmarks/systems/robustness.py           # 2 seeds, 9 settings, ~8 min
    python benchmarks/systems/robustness.py --quick   # seed 0, 3 settings, 20 rounds
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
from _common import compile_cache, machine, machine_line, mean_se, write_outputs
from rich.console import Console
from rich.table import Table

from fedmtl import algorithms, models, synthetic
from fedmtl.engine import Federation
from fedmtl.experiment import compare
from fedmtl.report import summarize
from fedmtl.systems import Systems

LR = 0.05  # cli.DEFAULT_LR for every data set but turbofan
ALGORITHMS = ("local", "fedavg", "fedper", "mocha")
# (algorithm, model kind): column label
COLUMNS = {
    ("local", "local"): "local",
    ("fedavg", "global"): "FedAvg global",
    ("fedavg", "personalized"): "FedAvg fine-tuned",
    ("fedper", "personalized"): "FedPer",
    ("mocha", "personalized"): "MOCHA",
}
PERSONALIZED = [c for c in COLUMNS if c[1] == "personalized"]


def run_setting(stragglers: float, dropout: float, seed: int, rounds: int) -> dict:
    """{"algorithm/kind": node-mean accuracy, ...} and the participation of one setting."""
    data = synthetic(1.0, 1.0, num_nodes=30, seed=seed)  # test_fraction 0.25, as the CLI
    build = lambda: models.build("mlp", data.feature_shape, data.num_classes, seed=seed,
                                 hidden=(64,))
    algos = [algorithms.ALGORITHMS[name](build(), local_optimizer=LR) for name in ALGORITHMS]
    systems = Systems(stragglers=stragglers, straggler_policy="keep", straggler_unit="step",
                      dropout=dropout)
    fed = Federation(rounds=rounds, batch_size=10, local_epochs=1, finetune_steps=5, seed=seed,
                     rounds_per_sync=max(1, min(10, rounds // 10 or 1)), systems=systems)
    comparison = compare(algos, data, fed)
    if comparison.failures:
        failed = "; ".join(f"{f.name}: {f.error}" for f in comparison.failures)
        print(f"  failures: {failed}")
    out = {"failures": [f.name for f in comparison.failures]}
    for row in summarize(comparison):
        if row["metric"] == "accuracy":
            out[f"{row['algorithm']}/{row['kind']}"] = row["node_mean"]
            if row["kind"] == "personalized":
                out[f"{row['algorithm']}/{row['kind']}/beats_local"] = row["beats_local"]
    hist = comparison.result("fedavg").history
    out["participants"] = float(np.mean(hist["participants"]))
    out["mean_stragglers"] = float(np.mean(hist["stragglers"]))
    out["work"] = float(np.mean(hist["work"]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="rounds (default 50, the CLI's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="data and training seeds (default 0 1; each adds ~4 min)")
    parser.add_argument("--stragglers", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.2, 0.5])
    parser.add_argument("--quick", action="store_true",
                        help="seed 0, 20 rounds, settings (0, 0), (0.9, 0), (0, 0.5)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    settings = list(itertools.product(args.stragglers, args.dropout))
    if args.quick:
        args.seeds, args.rounds = [0], 20
        settings = [(0.0, 0.0), (0.9, 0.0), (0.0, 0.5)]
    console = Console()
    compile_cache()
    info = machine()
    console.print(machine_line(info))
    start = time.perf_counter()

    runs = []
    for (p, d), seed in itertools.product(settings, args.seeds):
        t = time.perf_counter()
        r = run_setting(p, d, seed, args.rounds)
        runs.append({"stragglers": p, "dropout": d, "seed": seed, **r})
        cells = ", ".join(f"{label} {100 * r[f'{a}/{k}']:.1f}%"
                          for (a, k), label in COLUMNS.items() if r.get(f"{a}/{k}") is not None)
        console.print(f"stragglers {100 * p:.0f}%, dropout {d}, seed {seed}: {cells}  "
                      f"({time.perf_counter() - t:.0f} s)")

    n = len(args.seeds)
    summary = []
    for p, d in settings:
        rows = [r for r in runs if r["stragglers"] == p and r["dropout"] == d]
        entry = {"stragglers": p, "dropout": d,
                 "participants": float(np.mean([r["participants"] for r in rows])),
                 "work": float(np.mean([r["work"] for r in rows]))}
        for a, k in COLUMNS:
            values = [r.get(f"{a}/{k}") for r in rows]
            entry[f"{a}/{k}"] = (None if None in values else
                                 dict(zip(("mean", "se"), mean_se(values), strict=True)))
        # Personalization's lead: the best personalized model against the better of local
        # and FedAvg's global model, per seed, then averaged.
        leads, best_names = [], []
        for r in rows:
            pers = {c: r[f"{c[0]}/{c[1]}"] for c in PERSONALIZED
                    if r.get(f"{c[0]}/{c[1]}") is not None}
            best = max(pers, key=pers.get)
            best_names.append(COLUMNS[best])
            leads.append(pers[best] - max(r["local/local"], r["fedavg/global"]))
        entry["lead"] = dict(zip(("mean", "se"), mean_se(leads), strict=True))
        entry["best_personalized"] = max(set(best_names), key=best_names.count)
        entry["ahead_in_every_seed"] = bool(min(leads) > 0)
        summary.append(entry)

    title = (f"Synthetic(1,1), 30 nodes, MLP 60-64-10, {args.rounds} rounds, E = 1, B = 10, "
             f"lr {LR}, all nodes per round; node-mean test accuracy %, mean ± s.e. over {n} "
             "seed(s)")
    cols = ("stragglers", "dropout", "reported / round", "work done", *COLUMNS.values(),
            "best personalized − max(local, global)")
    table = Table(title=title)
    for c in cols:
        table.add_column(c, justify="right")
    md = ["# Personalization under stragglers and dropout", "", title + ".", "",
          machine_line(info), "", "| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    pm = lambda v: "—" if v is None else (f"{100 * v['mean']:.1f} ± {100 * v['se']:.1f}"
                                          if n > 1 else f"{100 * v['mean']:.1f}")
    for e in summary:
        lead = e["lead"]
        lead_text = (f"{100 * lead['mean']:+.1f}" + (f" ± {100 * lead['se']:.1f}" if n > 1 else "")
                     + f" ({e['best_personalized']})")
        cells = (f"{100 * e['stragglers']:.0f}%", f"{e['dropout']:g}",
                 f"{e['participants']:.1f} / 30", f"{100 * e['work']:.0f}%",
                 *(pm(e[f"{a}/{k}"]) for a, k in COLUMNS), lead_text)
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)

    ahead = [e for e in summary if e["lead"]["mean"] > 0]
    headline = (f"The best personalized model is ahead of both the local and FedAvg's global "
                f"model in {len(ahead)} of {len(summary)} settings (on average over seeds); "
                f"its lead ranges from {100 * min(e['lead']['mean'] for e in summary):+.1f} to "
                f"{100 * max(e['lead']['mean'] for e in summary):+.1f} points.")
    md += ["", "Columns: reported / round = mean nodes whose update was aggregated per round "
           "(FedAvg's run); work done = the share of the assigned local steps that were run "
           "and aggregated; local = each node's own model (trained under the same systems "
           "model); FedAvg global = FedAvg's single model; FedAvg fine-tuned = that model "
           "after 5 local steps on the node; FedPer / MOCHA = their personalized models "
           "(shared body, own head); the last column = best personalized minus the better of "
           "local and global, in points (the best personalized model in brackets).", "",
           headline]
    console.print(headline)
    payload = {"machine": info,
               "config": {"rounds": args.rounds, "seeds": args.seeds, "settings": settings,
                          "lr": LR, "batch_size": 10, "local_epochs": 1, "finetune_steps": 5,
                          "model": "mlp 60-64-10", "algorithms": list(ALGORITHMS),
                          "systems": "Systems(stragglers=p, straggler_policy='keep', "
                                     "straggler_unit='step', dropout=d)",
                          "metric": "node-mean test accuracy (fedmtl.report.summarize)"},
               "headline": headline, "summary": summary, "runs": runs,
               "seconds": time.perf_counter() - start}
    write_outputs(args.out, "robustness", payload, md, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
