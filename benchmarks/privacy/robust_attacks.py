"""Which robust rule holds against which attack? FedAvg's global model on Synthetic(1,1) with
each aggregation rule under 0, 10, 20 and 30% of the nodes attacking, for each attack.

Protocol: Synthetic(1,1) over 30 nodes (a 75/25 train/test split per node, the CLI's), an
MLP 60-64-10, every node in every round, --rounds rounds of E = 1 local epoch, B = 10, SGD
lr 0.05, one seed. Attackers: round(fraction · 30) nodes drawn from the seed
(`fedmtl.attacks.attackers`). Rules (`fedmtl.robust`): mean (FedAvg's weighted mean),
median, trimmed_mean(0.2), krum(f), multi_krum(f), geometric_median(20 iterations),
norm_bound(M = 1), centered_clip(τ = 1), with f the number of attackers (at least 1).
Attacks (`fedmtl.attacks`): sign_flip (−1 ×), scaled (10 ×), gaussian (std 1),
little_is_enough (Baruch et al.'s z), label_flip (y → C − 1 − y).

Reports the global model's node-mean test accuracy (the mean over the 30 nodes of each
node's accuracy on its own test rows). Writes robust_attacks.json and robust_attacks.md
into --out.

    python benchmarks/privacy/robust_attacks.py              # 50 rounds, ~20 min
    python benchmarks/privacy/robust_attacks.py --rounds 20  # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "systems"))

import numpy as np  # noqa: E402
from _common import compile_cache, machine, machine_line, write_outputs  # noqa: E402
from rich.console import Console  # noqa: E402

from fedmtl import algorithms, attacks, models, robust, synthetic  # noqa: E402
from fedmtl.engine import Engine, Federation  # noqa: E402

FRACTIONS = (0.0, 0.1, 0.2, 0.3)
ATTACKS = ("sign_flip", "scaled", "gaussian", "little_is_enough", "label_flip")
RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median",
         "norm_bound", "centered_clip")


def rule(name: str, attackers: int) -> robust.Aggregator:
    f = max(1, attackers)
    return {"mean": robust.mean, "median": robust.median,
            "trimmed_mean": lambda: robust.trimmed_mean(0.2),
            "krum": lambda: robust.krum(f), "multi_krum": lambda: robust.multi_krum(f),
            "geometric_median": lambda: robust.geometric_median(20),
            "norm_bound": lambda: robust.norm_bound(1.0),
            "centered_clip": lambda: robust.centered_clip(1.0)}[name]()


def accuracy(data, rule_name: str, attack: str | None, fraction: float, rounds: int) -> float:
    count = int(attacks.attackers(fraction, data.num_nodes, 0).sum()) if attack else 0
    model = models.build("mlp", data.feature_shape, data.num_classes, seed=0, hidden=(64,))
    fed = Federation(rounds=rounds, batch_size=10, local_epochs=1, seed=0,
                     rounds_per_sync=10, aggregator=rule(rule_name, count),
                     attack=None if attack is None else attacks.ATTACKS[attack](fraction))
    engine = Engine(algorithms.fedavg(model, local_optimizer=0.05), data, fed)
    state, _ = engine.run(engine.init())
    return float(np.mean(engine.evaluate(state)["global"]["accuracy"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args()
    compile_cache()
    console = Console()
    info = machine()
    data = synthetic(1.0, 1.0, num_nodes=30, seed=0)
    start = time.perf_counter()
    clean = {r: accuracy(data, r, None, 0.0, args.rounds) for r in RULES}
    console.print("no attack: " + ", ".join(f"{r} {100 * a:.1f}%" for r, a in clean.items()))
    table = {}
    for attack in ATTACKS:
        for r in RULES:
            table[f"{attack}/{r}"] = [clean[r]] + [
                accuracy(data, r, attack, f, args.rounds) for f in FRACTIONS[1:]]
        console.print(f"{attack}: done ({time.perf_counter() - start:.0f} s)")
    md = ["# Robust rules against attacks", "",
          f"FedAvg's global model, Synthetic(1,1), 30 nodes, every node every round, "
          f"{args.rounds} rounds, seed 0. Node-mean test accuracy (%) with 0 / 10 / 20 / 30% "
          "of the nodes attacking (3 / 6 / 9 nodes).", "", machine_line(info), ""]
    for attack in ATTACKS:
        md += [f"## {attack}", "", "| rule | 0% | 10% | 20% | 30% |", "|---|---|---|---|---|"]
        for r in RULES:
            md.append(f"| {r} | " + " | ".join(f"{100 * a:.1f}"
                                               for a in table[f"{attack}/{r}"]) + " |")
        md.append("")
    md.append(f"Command: `python benchmarks/privacy/robust_attacks.py --rounds {args.rounds}`.")
    write_outputs(args.out, "robust_attacks", {
        "machine": info, "rounds": args.rounds, "fractions": FRACTIONS, "accuracy": table,
        "seconds": time.perf_counter() - start}, md, console)


if __name__ == "__main__":
    main()
