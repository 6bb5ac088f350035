"""Turbofan, standard protocol (FD001 windows): federated vs centralized test RMSE.

Windows of 30 cycles x 14 sensors, RUL capped at 125, test = the last window of each of the 100
official test engines (`fedmtl.datasets.turbofan_windows`). Centralized: all 100 train engines
in one node; federated: FedAvg over 10 nodes of 10 engines; local: each node alone. The model
is an MLP on the flattened window. Prints our numbers beside the published centralized deep
models and writes turbofan_standard.json and turbofan_standard.md into --out.

    python benchmarks/reproductions/turbofan_standard.py          # 3 seeds, ~2 min on 2 cores
    python benchmarks/reproductions/turbofan_standard.py --quick  # 1 seed, 20 rounds
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from _common import mean_se, write_outputs  # this folder: scripts run as files
from rich.console import Console
from rich.table import Table

from fedmtl.datasets import phm08_score, turbofan_windows
from fedmtl.tycoon import Training, fit

# Published centralized deep models on FD001 (RMSE on the 100 test engines, RUL capped at 125),
# e.g. the CNN of Li, Ding & Sun (2018) at 12.6; see docs/reproductions.md.
PUBLISHED = "12-16 (deep nets)"
ROWS = {
    "centralized": "centralized (1 node, 100 engines)",
    "fedavg": "FedAvg (10 nodes x 10 engines)",
    "local": "local (each node alone)",
}


def run_seed(seed: int, training: Training, nodes: int, log) -> dict:
    out = {}
    for name, num_nodes, kind in (("centralized", 1, "local"), ("fedavg", nodes, "fedavg"),
                                  ("local", nodes, "local")):
        data = turbofan_windows("FD001", num_nodes=num_nodes, seed=seed)
        predictor = fit(data, training, (kind,), log=log)[kind]
        pred = np.concatenate([predictor.predict(k, data.test.node(k)[0])
                               for k in range(data.num_nodes)])
        true = data.test.y  # nodes' test rows in node order, as predicted above
        out[name] = {"rmse": float(np.sqrt(np.mean((pred - true) ** 2))),
                     "phm08": phm08_score(pred, true)}
    return out



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="engine grouping and training seeds (default 0 1 2)")
    parser.add_argument("--rounds", type=int, default=60,
                        help="rounds = centralized epochs, 1 local epoch each (default 60)")
    parser.add_argument("--nodes", type=int, default=10, help="federated nodes (default 10)")
    parser.add_argument("--quick", action="store_true", help="seed 0 only, 20 rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    seeds, rounds = ([0], 20) if args.quick else (args.seeds, args.rounds)
    console = Console()
    start = time.perf_counter()
    runs = []
    for seed in seeds:
        console.print(f"[bold]seed {seed}[/]")
        training = Training(rounds=rounds, hidden=(64,), seed=seed)
        runs.append(run_seed(seed, training, args.nodes, console.print))

    table = Table(title=f"Turbofan FD001, standard protocol: test RMSE (mean ± s.e. over "
                  f"{len(seeds)} seed(s))")
    for col in ("model", "ours: RMSE", "ours: PHM08 score", "published RMSE"):
        table.add_column(col, justify="left" if col == "model" else "right")
    summary, md = {}, ["| model | ours: test RMSE | ours: PHM08 score | published RMSE |",
                       "|---|---|---|---|"]
    for name, label in ROWS.items():
        rmse, rmse_se = mean_se([r[name]["rmse"] for r in runs])
        score, score_se = mean_se([r[name]["phm08"] for r in runs])
        published = PUBLISHED if name == "centralized" else "—"
        summary[name] = {"rmse_mean": rmse, "rmse_se": rmse_se, "phm08_mean": score,
                         "phm08_se": score_se}
        cells = (f"{rmse:.2f} ± {rmse_se:.2f}", f"{score:.0f} ± {score_se:.0f}", published)
        table.add_row(label, *cells)
        md.append(f"| {label} | " + " | ".join(cells) + " |")
    console.print(table)
    payload = {
        "config": {"seeds": seeds, "nodes": args.nodes, "model": "mlp on flattened windows",
                   "training": dataclasses.asdict(Training(rounds=rounds, hidden=(64,)))},
        "published": PUBLISHED, "summary": summary, "runs": runs,
        "seconds": time.perf_counter() - start,
    }
    write_outputs(args.out, "turbofan_standard", payload, md, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
