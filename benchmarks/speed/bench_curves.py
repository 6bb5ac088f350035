"""What learning curves cost: the same run with `Federation(eval_every=k)` for k = 0 (no
curves), 10 and 5, each in a fresh process, in turn, `--repeats` times.

  python benchmarks/speed/bench_curves.py --nodes 200 --rounds 50 --repeats 2

Workload: Synthetic(1, 1) (reference lognormal sizes, capped at --max-size), FedAvg on the MLP
60-64-10, B = 10, one local epoch, 5 fine-tuning steps before testing (so every curve point
fine-tunes every node, as the final evaluation does), every node every round, 10 rounds per
host sync. Reported: compile seconds (lowering + compiling the chunk of rounds) and the
steady seconds of all rounds (the run after compilation). Writes results-curves-<device
kind>.json and .md beside this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAG = "BENCH_CURVES "
EVERY = (0, 10, 5)


def worker(every: int, nodes: int, rounds: int, max_size: int) -> dict:
    import jax
    from flax import nnx

    from fedmtl import Engine, Federation, fedavg, synthetic
    from fedmtl.models import MLP

    data = synthetic(1, 1, num_nodes=nodes, max_size=max_size, seed=0)
    fed = Federation(rounds=rounds, batch_size=10, finetune_steps=5, rounds_per_sync=10,
                     eval_every=every)
    engine = Engine(fedavg(MLP(60, (64,), 10, rngs=nnx.Rngs(0))), data, fed)
    t = time.perf_counter()
    engine.lower(engine.init(), 10).compile()
    compile_s = time.perf_counter() - t
    engine.run(engine.init(), 10)  # warm: the chunk's program is in the cache now
    t = time.perf_counter()
    state, history = engine.run(engine.init())
    jax.block_until_ready(state)
    steady = time.perf_counter() - t
    return {"eval_every": every, "compile_s": compile_s, "rounds_s": steady,
            "curve_points": int(len(history.get("eval_round", []))),
            "device": jax.devices()[0].device_kind, "devices": len(jax.devices())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--max-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(TAG + json.dumps(worker(args.worker, args.nodes, args.rounds, args.max_size)))
        return
    runs = []
    for _ in range(args.repeats):
        for every in EVERY:  # in turn: a drift of the machine's speed hits all alike
            out = subprocess.run(
                [sys.executable, __file__, "--worker", str(every), "--nodes", str(args.nodes),
                 "--rounds", str(args.rounds), "--max-size", str(args.max_size)],
                capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.split(TAG, 1)[1].splitlines()[0]))
            print(runs[-1], flush=True)
    kind = runs[0]["device"].lower().replace(" ", "-")
    median = lambda every, key: statistics.median(r[key] for r in runs
                                                  if r["eval_every"] == every)
    base = median(0, "rounds_s")
    lines = [f"# Learning curves' cost ({runs[0]['device']}, {runs[0]['devices']} devices)", "",
             f"`python benchmarks/speed/bench_curves.py --nodes {args.nodes} --rounds "
             f"{args.rounds} --max-size {args.max_size} --repeats {args.repeats}`; medians of "
             f"{args.repeats} fresh processes each, in turn.", "",
             "| eval_every | curve points | compile s | rounds s | rounds vs none |",
             "|---:|---:|---:|---:|---:|"]
    for every in EVERY:
        points = next(r["curve_points"] for r in runs if r["eval_every"] == every)
        lines.append(f"| {every or 'none'} | {points} | {median(every, 'compile_s'):.1f} | "
                     f"{median(every, 'rounds_s'):.2f} | "
                     f"{median(every, 'rounds_s') / base:.2f}x |")
    (HERE / f"results-curves-{kind}.md").write_text("\n".join(lines) + "\n")
    (HERE / f"results-curves-{kind}.json").write_text(json.dumps(
        {"args": vars(args), "runs": runs, "time": time.strftime("%Y-%m-%d %H:%M:%S")},
        indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
