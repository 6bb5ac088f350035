"""What does a stated ε cost in accuracy? FedAvg, FedPer and MOCHA (and local training, which
uploads nothing: ε = 0) under central DP-FedAvg at ε ∈ {1, 2, 4, 8, ∞}, on Synthetic(1,1) and
on the Vehicle Sensor data (MOCHA's, 23 sensor nodes).

Protocol: Synthetic(1,1) over --nodes nodes (the reference lognormal sizes, a 75/25 train/test
split per node), an MLP 60-64-10 with its output layer the personal `head` (FedPer's and
MOCHA's), E = 1 local epoch of B = 10, SGD lr 0.05, --rounds rounds, Poisson sampling of each
node with probability q = --rate per round. Central DP (`fedmtl.privacy.central`): every
upload clipped to L2 norm S = --clip, every node weighing 1, the fixed denominator q·N, and
the noise multiplier z calibrated by dp-accounting's RDP accountant so that ε after the
rounds is the target at δ = 1e-5 (user-level: neighbouring federations differ by one node's
whole data). ε = ∞: the same clipping and fixed denominator without noise (z = 0), so the
column isolates what the noise costs. MOCHA's personal columns, which its server keeps per
node, are noised with the same z (`privacy.NoisedMean.release`).

--dataset vehicle: the 23 nodes of SensIT Vehicle (`fedmtl.datasets.vehicle`, in
$FEDMTL_DATA; a 75/25 split per node, a new split per seed), every node in every round
(--rate 1: no amplification by sampling), the same model and training.

Reports the node-mean test accuracy (`fedmtl.report.summarize`) of each algorithm's
personalized model (FedAvg: its global model and the global model fine-tuned for 5 local
steps), mean ± s.e. over --seeds (each seed: a Synthetic(1,1) draw and the training's seed).
Writes dp_accuracy.json and dp_accuracy.md into --out.

    python benchmarks/privacy/dp_accuracy.py            # 1000 nodes, 3 seeds, ~25 min
    python benchmarks/privacy/dp_accuracy.py --quick    # 300 nodes, seed 0, 20 rounds
    FEDMTL_DATA=../shared/data python benchmarks/privacy/dp_accuracy.py --dataset vehicle \
        --rate 1 --seeds 3
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "systems"))

from _common import compile_cache, machine, machine_line, mean_se, write_outputs  # noqa: E402
from rich.console import Console  # noqa: E402

from fedmtl import algorithms, datasets, models, privacy, synthetic  # noqa: E402
from fedmtl.engine import Federation  # noqa: E402
from fedmtl.experiment import compare  # noqa: E402
from fedmtl.report import summarize  # noqa: E402
from fedmtl.systems import Systems  # noqa: E402

LR = 0.05
EPSILONS = (1.0, 2.0, 4.0, 8.0, math.inf)
ALGORITHMS = ("local", "fedavg", "fedper", "mocha")
COLUMNS = {("local", "local"): "local (ε = 0)", ("fedavg", "global"): "FedAvg global",
           ("fedavg", "personalized"): "FedAvg fine-tuned",
           ("fedper", "personalized"): "FedPer", ("mocha", "personalized"): "MOCHA"}


def run(epsilon: float, seed: int, nodes: int, rounds: int, rate: float, clip: float,
        dataset: str = "synthetic") -> dict:
    data = (synthetic(1.0, 1.0, num_nodes=nodes, seed=seed) if dataset == "synthetic"
            else datasets.vehicle(seed=seed))
    build = lambda: models.build("mlp", data.feature_shape, data.num_classes, seed=seed,
                                 hidden=(64,))
    algos = [algorithms.ALGORITHMS[name](build(), local_optimizer=LR) for name in ALGORITHMS]
    dp = (privacy.central(clip=clip, noise_multiplier=0.0) if math.isinf(epsilon)
          else privacy.central(clip=clip, epsilon=epsilon, delta=1e-5))
    fed = Federation(rounds=rounds, batch_size=10, local_epochs=1, finetune_steps=5, seed=seed,
                     rounds_per_sync=10, systems=Systems(sampling="poisson", sample_rate=rate),
                     privacy=dp)
    comparison = compare(algos, data, fed)
    out = {"failures": [f.name for f in comparison.failures]}
    for row in summarize(comparison):
        if row["metric"] == "accuracy" and (row["algorithm"], row["kind"]) in COLUMNS:
            out[f"{row['algorithm']}/{row['kind']}"] = row["node_mean"]
    report = comparison.result("fedavg").privacy
    out["noise_multiplier"] = report["noise_multiplier"]
    out["epsilon"] = report["epsilon"] if math.isfinite(report["epsilon"]) else "inf"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("synthetic", "vehicle"), default="synthetic")
    p.add_argument("--nodes", type=int, default=1000, help="Synthetic(1,1)'s node count")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args()
    if args.quick:
        args.nodes, args.rounds, args.seeds = 300, 20, 1
    compile_cache()
    console = Console()
    info = machine()
    rows, start = [], time.perf_counter()
    for eps in EPSILONS:
        runs = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            runs.append(run(eps, seed, args.nodes, args.rounds, args.rate, args.clip,
                            args.dataset))
            console.print(f"ε = {eps:g}, seed {seed}: z = {runs[-1]['noise_multiplier']:.3f}, "
                          f"{time.perf_counter() - t:.0f} s")
        row = {"target_epsilon": eps if math.isfinite(eps) else "inf",
               "noise_multiplier": runs[0]["noise_multiplier"],
               "epsilon": runs[0]["epsilon"],
               "runs": runs}
        for key in (f"{a}/{k}" for a, k in COLUMNS):
            row[key] = mean_se([r[key] for r in runs if key in r])
        rows.append(row)
    name = (f"Synthetic(1,1), {args.nodes} nodes" if args.dataset == "synthetic"
            else "Vehicle Sensor, 23 nodes")
    setting = (f"{name}, Poisson q = {args.rate}, {args.rounds} "
               f"rounds, clip S = {args.clip}, δ = 1e-5, RDP; {args.seeds} seed(s)")
    md = ["# Accuracy under central DP-FedAvg at a stated ε", "", setting, "",
          machine_line(info), "",
          "Node-mean test accuracy, mean ± s.e. over seeds. z: the calibrated noise "
          "multiplier. ε = ∞: clipped, no noise.", "",
          "| ε | z | " + " | ".join(COLUMNS.values()) + " |",
          "|---|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{100 * row[f'{a}/{k}'][0]:.1f} ± {100 * row[f'{a}/{k}'][1]:.1f}"
                 for a, k in COLUMNS]
        md.append(f"| {row['target_epsilon']} | {row['noise_multiplier']:.3f} | "
                  + " | ".join(cells) + " |")
    flags = " ".join(sys.argv[1:])
    md += ["", f"Wall time {time.perf_counter() - start:.0f} s. Command: `python "
           f"benchmarks/privacy/dp_accuracy.py {flags}`."]
    payload = {"setting": setting, "machine": info, "rows": rows,
               "seconds": time.perf_counter() - start}
    stem = "dp_accuracy" + ("_vehicle" if args.dataset == "vehicle" else "")
    write_outputs(args.out, stem + ("_quick" if args.quick else ""), payload, md, console)


if __name__ == "__main__":
    main()
