"""FedAvg round time on 1 device against every device, side by side in one run.

The workload of bench_fedavg.py (Synthetic(1, 1) with the reference lognormal node sizes, MLP
60-64-10, B = 10, one local epoch, every node every round). Each configuration runs in a
fresh process; the configurations alternate (A B C A B C ...) `--repeats` times so that a
drift of the machine's speed hits all of them alike:

  one_device     JAX_NUM_CPU_DEVICES=1: what fedmtl ran before it spread nodes over devices
  devices=1      a process with one device per core, `Federation(devices=1)`
  every_device   a process with one device per core, the default (every device)

  python benchmarks/speed/bench_devices.py --sizes 1000 --rounds 12 --repeats 3

Writes results-devices-<device kind>.json and .md beside this file.
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

import numpy as np

HERE = Path(__file__).resolve().parent
TAG = "BENCH_DEVICES "
CONFIGS = {  # name: (CPU devices of the process, Federation.devices)
    "one_device": (1, None),
    "devices=1": (None, 1),
    "every_device": (None, None),
}


def worker(n: int, rounds: int, devices: int | None, seed: int) -> dict:
    import jax

    sys.path.insert(0, str(HERE))
    from bench_fedavg import BATCH, EPOCHS, make_algo, peak_rss_mb, synthetic_fast

    from fedmtl import Engine, Federation

    data = synthetic_fast(1.0, 1.0, n, seed)
    fed = Federation(rounds=rounds, batch_size=BATCH, local_epochs=EPOCHS, rounds_per_sync=1,
                     seed=seed, devices=devices)
    t = time.perf_counter()
    eng = Engine(make_algo(), data, fed)
    state = eng.init()
    jax.block_until_ready(state)
    built = time.perf_counter() - t
    times, losses = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        state, hist = eng.run(state, 1)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
        losses.append(float(hist["train_loss"][-1]))
    return {"devices": eng.devices, "lanes_per_device": eng.lanes, "makespan": eng.makespan,
            "built_s": built, "first_round_s": times[0], "round_s": statistics.median(times[1:]),
            "rounds_s": times, "train_loss": losses, "peak_rss_mb": peak_rss_mb(),
            "backend_devices": len(jax.devices())}


def spawn(name: str, n: int, rounds: int, seed: int) -> dict:
    cpu, devices = CONFIGS[name]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    if cpu is not None:
        env["JAX_NUM_CPU_DEVICES"] = str(cpu)
    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--rounds", str(rounds),
           "--seed", str(seed)] + ([] if devices is None else ["--devices", str(devices)])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    return {"error": out.stderr[-2000:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1000")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--n", type=int)
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--out-dir", default=str(HERE))
    args = p.parse_args()
    if args.worker:
        print(TAG + json.dumps(worker(args.n, args.rounds, args.devices, args.seed)))
        return
    sys.path.insert(0, str(HERE))
    from bench_fedavg import machine_info

    info = machine_info()
    results = {"machine": info, "rounds": args.rounds, "repeats": args.repeats, "runs": {}}
    kind = info["device_kind"].lower().replace(" ", "-")
    out = Path(args.out_dir)
    for n in (int(s) for s in args.sizes.split(",")):
        runs = {name: [] for name in CONFIGS}
        for r in range(args.repeats):
            for name in CONFIGS:
                res = spawn(name, n, args.rounds, args.seed)
                runs[name].append(res)
                print(f"[{time.strftime('%H:%M:%S')}] N={n} repeat {r + 1} {name}: "
                      f"{res.get('round_s', res.get('error'))}", flush=True)
        results["runs"][str(n)] = runs
        (out / f"results-devices-{kind}.json").write_text(json.dumps(results, indent=1))
    lines = [f"# FedAvg s/round on 1 device vs every device ({info['cpu_model']}, "
             f"{info['cpu_cores']} cores, jax {info['jax_version']}, commit "
             f"{info['git_commit']})", "",
             "| nodes | configuration | devices | lanes/device | s/round (median of repeats) "
             "| each repeat | speedup vs one_device | peak RSS MB |",
             "|---:|---|---:|---:|---:|---|---:|---:|"]
    for n, runs in results["runs"].items():
        base = statistics.median(r["round_s"] for r in runs["one_device"] if "round_s" in r)
        for name, rs in runs.items():
            ok = [r for r in rs if "round_s" in r]
            if not ok:
                lines.append(f"| {int(n):,} | {name} | error | | | | | |")
                continue
            med = statistics.median(r["round_s"] for r in ok)
            each = ", ".join(f"{r['round_s']:.3f}" for r in ok)
            lines.append(f"| {int(n):,} | {name} | {ok[0]['devices']} | "
                         f"{ok[0]['lanes_per_device']} | {med:.3f} | {each} | "
                         f"{base / med:.2f}x | {max(r['peak_rss_mb'] for r in ok):.0f} |")
    def ratio(runs):
        pairs = zip(runs["one_device"], runs["every_device"], strict=True)
        return np.mean([a["round_s"] / b["round_s"] for a, b in pairs
                        if "round_s" in a and "round_s" in b])

    pairs = [ratio(runs) for runs in results["runs"].values()]
    lines += ["", "Speedup of every_device over one_device, mean of the per-repeat ratios: "
              + ", ".join(f"{p:.2f}x" for p in pairs)]
    (out / f"results-devices-{kind}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
