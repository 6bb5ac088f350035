"""MOCHA end to end at many nodes: seconds per round of `mocha` (64x10 head coupled by a learned
Ω, body by FedAvg) beside `fedavg` on the same data, one run each, on this machine.

    python benchmarks/mtl/bench_mocha_nodes.py --sizes 1000,10000 --rounds 4

Synthetic(1,1) with the reference node sizes, MLP 60-64-10, batch 10, one local epoch, every
node in every round. A round's time is the median over rounds 2..R (round 1 compiles); the
server's relationship step alone is timed by bench_omega.py. Writes results-nodes-<backend>.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import jax
import numpy as np

import fedmtl
from fedmtl import models
from fedmtl.algorithms import ALGORITHMS
from fedmtl.engine import Engine


def one(name: str, data, rounds: int) -> dict:
    module = models.build("mlp", data.feature_shape, 10, seed=0, hidden=[64])
    algo = ALGORITHMS[name](module)
    fed = fedmtl.Federation(rounds=rounds, seed=0, rounds_per_sync=1)
    start = time.perf_counter()
    engine = Engine(algo, data, fed)
    state = engine.init()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        state, history = engine.run(state, 1)
        times.append(time.perf_counter() - t)
    return {"algorithm": name, "first_round_s": times[0], "round_s": float(np.median(times[1:])),
            "total_s": time.perf_counter() - start, "train_loss": float(history["train_loss"][-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        data = fedmtl.synthetic(1.0, 1.0, num_nodes=n, seed=0)
        for name in ("fedavg", "mocha"):
            row = {"nodes": n, "train_rows": int(data.train.counts.sum()), **one(name, data,
                                                                                    args.rounds)}
            row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(json.dumps(row), flush=True)
            rows.append(row)
    machine = f"{platform.processor() or platform.machine()}, jax {jax.__version__}, " \
              f"backend {jax.default_backend()}"
    lines = [f"# MOCHA vs FedAvg per round ({machine})", "",
             "| nodes | train rows | algorithm | s/round | first round s | peak RSS MB |",
             "|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['nodes']:,} | {r['train_rows']:,} | {r['algorithm']} | {r['round_s']:.3g} | "
              f"{r['first_round_s']:.3g} | {r['peak_rss_mb']:.0f} |" for r in rows]
    out = Path(__file__).with_name(f"results-nodes-{jax.default_backend()}.md")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
