"""What do differential privacy and secure aggregation cost per round? FedAvg over 1,000 nodes
of Synthetic(1,1), every node in every round, plain and under each protection, side by side
in one run.

Protocol: Synthetic(1,1) with the reference lognormal sizes over --nodes nodes, an MLP
60-64-10 (d = 4,554 parameters uploaded per node), E = 1 local epoch of B = 10, SGD lr 0.05.
Each setting builds its engine, runs --rounds rounds once to compile, then times --rounds
more (`Engine.run`, device results fetched). Settings:

    plain             the weighted mean
    central DP        clip S = 1, z = 1, every node weighing 1 (DP-FedAvg)
    central adaptive  the same with adaptive clipping to the median (Andrew et al. 2021)
    local DP          every node clips to S = 1 and adds N(0, (zS)²), z = 1
    SecAgg+ k = K     pairwise masks over a K-regular graph of the 1,000 slots, 32-bit sums
    SecAgg+ + local   both

Writes overhead.json and overhead.md into --out.

    python benchmarks/privacy/overhead.py                  # 1,000 nodes, k = 20, ~5 min
    python benchmarks/privacy/overhead.py --nodes 200      # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "systems"))

import jax  # noqa: E402
from _common import machine, machine_line, write_outputs  # noqa: E402
from rich.console import Console  # noqa: E402

from fedmtl import algorithms, models, privacy, synthetic  # noqa: E402
from fedmtl.engine import Engine, Federation  # noqa: E402
from fedmtl.secagg import SecureAggregation  # noqa: E402


def settings(k: int) -> dict:
    central = privacy.central(clip=1.0, noise_multiplier=1.0)
    local = privacy.local(clip=1.0, noise_multiplier=1.0)
    secure = SecureAggregation(neighbours=k, clip=10.0)
    return {
        "plain": {},
        "central DP": {"privacy": central},
        "central adaptive": {"privacy": central._replace(target_quantile=0.5)},
        "local DP": {"privacy": local},
        f"SecAgg+ k = {k}": {"secure_aggregation": secure},
        f"SecAgg+ k = {k} + local DP": {"secure_aggregation": secure, "privacy": local},
    }


def time_setting(data, extra: dict, rounds: int) -> dict:
    model = models.build("mlp", data.feature_shape, data.num_classes, seed=0, hidden=(64,))
    fed = Federation(rounds=rounds, batch_size=10, local_epochs=1, seed=0,
                     rounds_per_sync=rounds, **extra)
    t = time.perf_counter()
    engine = Engine(algorithms.fedavg(model, local_optimizer=0.05), data, fed)
    construct = time.perf_counter() - t
    state, _ = engine.run(engine.init())  # compiles
    jax.block_until_ready(state)
    t = time.perf_counter()
    state, history = engine.run(state)
    jax.block_until_ready(state)
    per_round = (time.perf_counter() - t) / rounds
    return {"construct_s": construct, "round_s": per_round,
            "train_loss": float(history["train_loss"][-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--neighbours", type=int, default=20)
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args()
    console = Console()
    info = machine()
    data = synthetic(1.0, 1.0, num_nodes=args.nodes, seed=0)
    rows, start = {}, time.perf_counter()
    for name, extra in settings(args.neighbours).items():
        rows[name] = time_setting(data, extra, args.rounds)
        console.print(f"{name}: {rows[name]['round_s']:.3f} s per round "
                      f"(construction {rows[name]['construct_s']:.2f} s)")
    plain = rows["plain"]["round_s"]
    md = ["# Time per round of DP and secure aggregation", "",
          f"FedAvg, Synthetic(1,1), {args.nodes} nodes, every node every round, MLP 60-64-10 "
          f"(4,554 parameters), mean of {args.rounds} rounds after compiling.", "",
          machine_line(info), "",
          "| setting | s per round | × plain | construction s |", "|---|---|---|---|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['round_s']:.3f} | {r['round_s'] / plain:.2f} | "
                  f"{r['construct_s']:.2f} |")
    md += ["", f"Command: `python benchmarks/privacy/overhead.py --nodes {args.nodes} "
           f"--neighbours {args.neighbours}`."]
    write_outputs(args.out, "overhead", {"machine": info, "nodes": args.nodes,
                                         "rounds": args.rounds, "rows": rows,
                                         "seconds": time.perf_counter() - start}, md, console)


if __name__ == "__main__":
    main()
