"""Synthetic(1,1) of FedProx: local vs FedAvg vs FedPer test accuracy, per node side by side.

30 nodes with lognormal sizes (Li et al., MLSys 2020). Every algorithm trains the same
one-hidden-layer MLP (FedPer needs a body and a head) on the same data and seed; FedAvg is also
shown fine-tuned on each node. FedProx publishes curves, not per-node numbers, so the published
column holds what the paper's setting implies (see docs/reproductions.md). Writes
results.json, per_node.csv (fedmtl.report) and synthetic.md into --out/synthetic_per_node.

    python benchmarks/reproductions/synthetic.py           # 100 rounds, ~1 min on 2 cores
    python benchmarks/reproductions/synthetic.py --quick   # 20 rounds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console

from fedmtl import algorithms, models, synthetic
from fedmtl.engine import Federation
from fedmtl.experiment import compare
from fedmtl.output import atomic_write, write_results
from fedmtl.report import columns, print_report, summarize

PUBLISHED = "no per-node numbers (FedProx, Li et al. 2020, reports curves of global models only)"


def per_node_markdown(comparison) -> str:
    """Per-node test accuracy of every (algorithm, model kind), best per node in bold."""
    data, cols = comparison.data, columns(comparison)
    acc = np.stack([comparison.result(n).per_node[k]["accuracy"] for n, k in cols], axis=1)
    lines = ["| node | train | test | " + " | ".join(f"{n} {k}" for n, k in cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    for i, name in enumerate(data.names):
        best = acc[i].max()
        cells = [f"**{100 * a:.1f}**" if a == best else f"{100 * a:.1f}" for a in acc[i]]
        lines.append(f"| {name} | {data.train.counts[i]} | {data.test.counts[i]} | "
                     + " | ".join(cells) + " |")
    rows = {(r["algorithm"], r["kind"]): r for r in summarize(comparison)
            if r["metric"] == "accuracy"}
    lines.append("| **weighted mean** | | | " + " | ".join(
        f"{100 * rows[c]['weighted_mean']:.1f}" for c in cols) + " |")
    lines.append("| **best on nodes** | | | " + " | ".join(
        f"{int(np.sum(acc[:, j] == acc.max(axis=1)))}" for j in range(len(cols))) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="rounds (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--quick", action="store_true", help="20 rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    rounds = 20 if args.quick else args.rounds
    console = Console()
    data = synthetic(1.0, 1.0, num_nodes=30, seed=args.seed)
    console.print(f"Synthetic(1,1): {data.summary()}")
    build = lambda: models.build("mlp", data.feature_shape, data.num_classes, seed=args.seed,
                                 hidden=(64,))
    algos = [algorithms.local(build(), local_optimizer=0.05),
             algorithms.fedavg(build(), local_optimizer=0.05),
             algorithms.fedper(build(), local_optimizer=0.05)]
    fed = Federation(rounds=rounds, batch_size=10, finetune_steps=5, seed=args.seed,
                     rounds_per_sync=rounds)
    comparison = compare(algos, data, fed)
    print_report(comparison, console, max_rows=-1)
    console.print(f"published: {PUBLISHED}")
    out = args.out / "synthetic_per_node"
    paths = write_results(comparison, out, {"published": PUBLISHED, "rounds": rounds})
    atomic_write(out / "synthetic.md", per_node_markdown(comparison))
    console.print("wrote " + ", ".join(str(p) for p in [*paths, out / "synthetic.md"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
