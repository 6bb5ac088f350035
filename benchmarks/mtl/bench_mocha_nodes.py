"""MOCHA end to end at many nodes: seconds per round of `mocha` (64x10 head coupled by a learned
Ω, body by FedAvg) beside `fedavg` on the same data, one run each, on this machine.

    python benchmarks/mtl/bench_mocha_nodes.py --sizes 1000,10000 --rounds 4
    python benchmarks/mtl/bench_mocha_nodes.py --sizes 100000 --max-size 200 \
        --algorithms mocha --rounds 3          # 100,000 nodes: sizes capped to fit 24 GB

Synthetic(1,1) with the reference node sizes, MLP 60-64-10, batch 10, one local epoch, every
node in every round. A round's time is the median over rounds 2..R (round 1 compiles); the
server's relationship step alone is timed by bench_omega.py; `evaluate s` is the per-node test
of every model kind after the last round (compilation included). Writes
results-nodes-<backend>.md and .json, keeping the rows of other (nodes, algorithm, cap).
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
    t = time.perf_counter()
    per_node = engine.evaluate(state)
    evaluate_s = time.perf_counter() - t
    kind = "personalized" if "personalized" in per_node else "global"
    return {"algorithm": name, "first_round_s": times[0], "round_s": float(np.median(times[1:])),
            "total_s": time.perf_counter() - start, "train_loss": float(history["train_loss"][-1]),
            "evaluate_s": evaluate_s, "devices": engine.devices,
            f"{kind}_accuracy_node_mean": float(np.nanmean(per_node[kind]["accuracy"]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max-size", type=int, default=None,
                   help="cap on a node's examples (default: none, the reference sizes)")
    p.add_argument("--algorithms", default="fedavg,mocha")
    args = p.parse_args()
    out = Path(__file__).with_name(f"results-nodes-{jax.default_backend()}.md")
    keep = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(
        ".json").exists() else []
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        data = fedmtl.synthetic(1.0, 1.0, num_nodes=n, seed=0, max_size=args.max_size)
        for name in args.algorithms.split(","):
            row = {"nodes": n, "max_size": args.max_size,
                   "train_rows": int(data.train.counts.sum()), **one(name, data, args.rounds)}
            row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(json.dumps(row), flush=True)
            rows.append(row)
    machine = f"{platform.processor() or platform.machine()}, jax {jax.__version__}, " \
              f"backend {jax.default_backend()}"
    key = lambda r: (r["nodes"], r["algorithm"], r.get("max_size"))
    done = {key(r) for r in rows}
    rows = sorted([r for r in keep if key(r) not in done] + rows,
                  key=lambda r: (r["nodes"], r["algorithm"]))
    lines = [f"# MOCHA vs FedAvg per round ({machine})", "",
             "| nodes | max size | train rows | algorithm | devices | s/round | first round s "
             "| evaluate s | peak RSS MB |", "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    lines += [_row(r) for r in rows]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))


def _row(r: dict) -> str:
    evaluate = f"{r['evaluate_s']:.3g}" if "evaluate_s" in r else "–"
    return (f"| {r['nodes']:,} | {r.get('max_size') or '–'} | {r['train_rows']:,} | "
            f"{r['algorithm']} | {r.get('devices', 1)} | {r['round_s']:.3g} | "
            f"{r['first_round_s']:.3g} | {evaluate} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
