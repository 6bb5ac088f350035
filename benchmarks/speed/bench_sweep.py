"""Five seeds of one experiment, end to end: five fresh engines (each compiles, as every new
seed did while the seed was a constant of the program), one engine run five times with
`init(seed)` (the seed is an input: one compilation), and `Engine.sweep` (the five runs as one
vmapped program). Each way runs in a fresh process, in turn, `--repeats` times.

  python benchmarks/speed/bench_sweep.py --nodes 100 --rounds 20 --seeds 5 --repeats 2

With `--rates`, a grid of local learning rates × seeds instead (a `fedmtl.recipe`: the rate
and the initial weights follow each run): fresh engines build FedPer with each rate as a
constant (each compiles, as every new rate did before recipes), one engine takes
`init(seed, {"local_optimizer": rate})`, and `fedmtl.sweep_grid` runs the grid as one program:

  python benchmarks/speed/bench_sweep.py --rates 0.01,0.03,0.1 --seeds 2 --repeats 2

Workload: Synthetic(1, 1) (reference lognormal sizes, capped at --max-size), FedPer on the
MLP 60-64-10, B = 10, one local epoch, 5 fine-tuning steps, every node every round; each run
ends with `evaluate`. Writes results-sweep-<device kind>.json and .md beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAG = "BENCH_SWEEP "
WAYS = ("fresh_engines", "one_engine", "sweep")


def worker(way: str, nodes: int, rounds: int, seeds: int, max_size: int,
           rates: list[float]) -> dict:
    import jax
    from flax import nnx

    from fedmtl import Engine, Federation, fedper, recipe, sweep_grid, synthetic
    from fedmtl.models import MLP

    data = synthetic(1, 1, num_nodes=nodes, max_size=max_size, seed=0)
    fed = Federation(rounds=rounds, batch_size=10, finetune_steps=5, rounds_per_sync=rounds)
    algo = lambda: fedper(MLP(60, (64,), 10, rngs=nnx.Rngs(0)))
    module = lambda key: MLP(60, (64,), 10, rngs=nnx.Rngs(key))
    losses = []
    t = time.perf_counter()
    if rates:  # a grid: every (rate, seed)
        runs = [(rate, seed) for rate in rates for seed in range(seeds)]
        tuned = recipe(fedper, module, local_optimizer=rates[0], tune=["local_optimizer"])
        if way == "fresh_engines":
            for rate, seed in runs:
                engine = Engine(fedper(module(seed), local_optimizer=rate), data,
                                fed._replace(seed=seed))
                state, history = engine.run(engine.init())
                engine.evaluate(state)
                losses.append(float(history["train_loss"][-1]))
        elif way == "one_engine":
            engine = Engine(tuned, data, fed)
            for rate, seed in runs:
                state, history = engine.run(engine.init(seed, {"local_optimizer": rate}))
                engine.evaluate(state)
                losses.append(float(history["train_loss"][-1]))
        else:
            found = sweep_grid(tuned, data, fed, range(seeds), {"local_optimizer": rates})
            losses = [float(r.history["train_loss"][-1]) for g in found.results for r in g]
    elif way == "fresh_engines":
        for seed in range(seeds):
            engine = Engine(algo(), data, fed._replace(seed=seed))
            state, history = engine.run(engine.init())
            engine.evaluate(state)
            losses.append(float(history["train_loss"][-1]))
    elif way == "one_engine":
        engine = Engine(algo(), data, fed)
        for seed in range(seeds):
            state, history = engine.run(engine.init(seed))
            engine.evaluate(state)
            losses.append(float(history["train_loss"][-1]))
    else:
        engine = Engine(algo(), data, fed)
        states, history = engine.sweep(range(seeds))
        engine.evaluate_sweep(states)
        losses = [float(v) for v in history["train_loss"][:, -1]]
    jax.block_until_ready(jax.numpy.zeros(()))
    return {"seconds": time.perf_counter() - t, "final_train_loss": losses,
            "devices": len(jax.devices())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max-size", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rates", default="", help="comma-separated local learning rates: a grid")
    p.add_argument("--worker", choices=WAYS)
    p.add_argument("--out-dir", default=str(HERE))
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    if args.worker:
        print(TAG + json.dumps(worker(args.worker, args.nodes, args.rounds, args.seeds,
                                      args.max_size, rates)))
        return
    sys.path.insert(0, str(HERE))
    from bench_fedavg import machine_info

    info = machine_info()
    runs = {way: [] for way in WAYS}
    for r in range(args.repeats):
        for way in WAYS:
            cmd = [sys.executable, __file__, "--worker", way, "--nodes", str(args.nodes),
                   "--rounds", str(args.rounds), "--seeds", str(args.seeds),
                   "--max-size", str(args.max_size), "--rates", args.rates]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            found = [json.loads(line[len(TAG):]) for line in out.stdout.splitlines()
                     if line.startswith(TAG)]
            runs[way].append(found[0] if found else {"error": out.stderr[-2000:]})
            print(f"[{time.strftime('%H:%M:%S')}] repeat {r + 1} {way}: "
                  f"{runs[way][-1].get('seconds', runs[way][-1].get('error'))}", flush=True)
    kind = info["device_kind"].lower().replace(" ", "-")
    out_dir = Path(args.out_dir)
    result = {"machine": info, "args": vars(args), "runs": runs}
    name = "grid" if rates else "sweep"
    (out_dir / f"results-{name}-{kind}.json").write_text(json.dumps(result, indent=1))
    base = statistics.median(r["seconds"] for r in runs["fresh_engines"] if "seconds" in r)
    devices = next((r["devices"] for rs in runs.values() for r in rs if "devices" in r), "?")
    what = (f"{len(rates)} learning rates ({args.rates}) × {args.seeds} seeds" if rates
            else f"{args.seeds} seeds")
    lines = [f"# {what} end to end ({info['cpu_model']}, {info['cpu_cores']} cores, "
             f"{devices} JAX devices in the runs, jax {info['jax_version']}, commit "
             f"{info['git_commit']})", "",
             f"Synthetic(1,1), {args.nodes} nodes (max {args.max_size} examples), FedPer, "
             f"{args.rounds} rounds, evaluation included.", "",
             "| way | seconds (median) | each repeat | vs fresh engines |", "|---|---:|---|---:|"]
    for way, rs in runs.items():
        ok = [r["seconds"] for r in rs if "seconds" in r]
        if not ok:
            lines.append(f"| {way} | error | | |")
            continue
        med = statistics.median(ok)
        lines.append(f"| {way} | {med:.1f} | {', '.join(f'{s:.1f}' for s in ok)} | "
                     f"{base / med:.2f}x |")
    (out_dir / f"results-{name}-{kind}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
