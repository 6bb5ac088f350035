"""Speed and memory of MOCHA's server relationship step at scale.

The step: Ω = Σ⁻¹ learned from the stacked personal heads W [N, d] (`fedmtl.relationship.learned`,
thin SVD, O(N·d²) time, O(N·d) memory), then what each node is sent (`coupling`: pull [N, d] and
self_weight [N]); each of the two is one jitted function. d = 650 by default: a 64×10 head
(kernel 640 + bias 10). `dense` is the N×N reference (`learned_dense`: eigh of W Wᵀ + εI,
O(N³)), run up to --dense-max nodes for comparison.

Each (N, path) runs in a fresh subprocess so peak RSS and compile times start from nothing.
Writes results-<device-kind>.json and .md to --out-dir (default: this folder).

    python benchmarks/mtl/bench_omega.py                 # N = 1,000 / 10,000 / 100,000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

HERE = Path(__file__).resolve().parent
TAG = "BENCH_RESULT "


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc), MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def device_peak_mb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats()  # None on CPU
    return stats["peak_bytes_in_use"] / 2**20 if stats else None


def planted_w(n: int, d: int, seed: int):
    """W [N, d] float32: 8 planted groups of heads plus 10% per-node noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, d), dtype=np.float32)[np.arange(n) % 8]
    w += np.float32(0.1) * rng.standard_normal((n, d), dtype=np.float32)
    return w


def worker(n: int, path: str, d: int, eps: float, repeats: int, seed: int) -> dict:
    import jax
    import numpy as np

    from fedmtl import relationship as rel

    learn = {"low_rank": rel.learned, "dense": rel.learned_dense}[path]
    start = time.perf_counter()
    w = jax.device_put(planted_w(n, d, seed))
    w.block_until_ready()
    base = rss_mb()

    t = time.perf_counter()
    learn_c = jax.jit(lambda w: learn(w, eps)).lower(w).compile()
    omega_shape = jax.eval_shape(lambda w: learn(w, eps), w)
    couple_c = jax.jit(rel.coupling).lower(omega_shape, w).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    out = jax.block_until_ready(couple_c(learn_c(w), w))  # warm-up
    first_s = time.perf_counter() - t
    finite = bool(all(np.isfinite(np.asarray(a)).all() for a in out))
    learn_times, couple_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        omega = jax.block_until_ready(learn_c(w))
        learn_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(couple_c(omega, w))
        couple_times.append(time.perf_counter() - t)
    times = [a + b for a, b in zip(learn_times, couple_times, strict=True)]
    pull, self_weight = out
    return {
        "N": n, "path": path, "d": d, "eps": eps, "repeats": repeats,
        "compile_s": compile_s, "first_s": first_s, "step_s": float(np.median(times)),
        "step_times": times,
        "learned_s": float(np.median(learn_times)),
        "coupling_s": float(np.median(couple_times)),
        "baseline_rss_mb": base, "peak_rss_mb": peak_rss_mb(), "device_peak_mb": device_peak_mb(),
        "w_mb": n * d * 4 / 2**20, "finite": finite, "worker_s": time.perf_counter() - start,
        "self_weight_median": float(np.median(np.asarray(self_weight))),
        "pull_rms": float(np.sqrt(np.mean(np.asarray(pull, np.float64) ** 2))),
    }


def machine_info() -> dict:
    import jax

    cpu = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                   if ln.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    dev = jax.devices()[0]
    return {
        "cpu_model": cpu, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "device_kind": dev.device_kind, "load_average_at_start": list(os.getloadavg()),
    }


def table(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# MOCHA relationship step: {m['device_kind']} ({m['backend']})", "",
        f"{m['cpu_model']}, {m['cpu_cores']} cores; jax {m['jax_version']}; {m['platform']}; "
        f"load average at start {m['load_average_at_start'][0]:.2f}; "
        f"OPENBLAS_NUM_THREADS={results['blas_threads'] or 'unset'}.", "",
        f"`learned(W, eps)` then `coupling(omega, W)`, each jitted, W [N, d] float32, "
        f"d = {results['d']}, eps = {results['eps']}; medians of {results['repeats']} runs "
        "after one warm-up; `step s` = median of their sums. `peak RSS`: ru_maxrss of a "
        "fresh process per row (Python, jax, W and compilation included); `base RSS`: resident "
        "memory once W is on the device, before compiling; `step MB` = peak − base.", "",
        "| N | path | step s | learned s | coupling s | compile s | peak RSS MB | base RSS MB |"
        " step MB | W MB | device peak MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        if "error" in r:
            lines.append(f"| {r['N']:,} | {r['path']} | {r['error']} |" + " |" * 8)
            continue
        dev = f"{r['device_peak_mb']:.0f}" if r["device_peak_mb"] is not None else "–"
        lines.append(
            f"| {r['N']:,} | {r['path']} | {r['step_s']:.3g} | {r['learned_s']:.3g} | "
            f"{r['coupling_s']:.3g} | {r['compile_s']:.2g} | {r['peak_rss_mb']:.0f} | "
            f"{r['baseline_rss_mb']:.0f} | {r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} | "
            f"{r['w_mb']:.1f} | {dev} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000",
                   help="comma-separated N (default 1000,10000,100000)")
    p.add_argument("--dim", type=int, default=650, help="d (default 650: a 64x10 head)")
    p.add_argument("--eps", type=float, default=1e-2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dense-max", type=int, default=1000, help="run the dense path up to this N")
    p.add_argument("--timeout", type=float, default=600, help="seconds per (N, path)")
    p.add_argument("--blas-threads", default="1",
                   help="OPENBLAS_NUM_THREADS of the workers (default 1: jaxlib's SVD and eigh "
                        "run in OpenBLAS, whose spinning threads make times swing 10x when "
                        "the cores are shared; '' leaves it unset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=HERE)
    p.add_argument("--worker", nargs=2, metavar=("N", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        res = worker(int(args.worker[0]), args.worker[1], args.dim, args.eps, args.repeats,
                     args.seed)
        print(TAG + json.dumps(res), flush=True)
        return

    import jax

    results = {"machine": machine_info(), "d": args.dim, "eps": args.eps,
               "repeats": args.repeats, "blas_threads": args.blas_threads or None, "runs": []}
    env = dict(os.environ)
    if args.blas_threads:
        env["OPENBLAS_NUM_THREADS"] = args.blas_threads
    kind = results["machine"]["device_kind"].lower().replace(" ", "-")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    del jax
    for n in (int(s) for s in args.sizes.split(",")):
        for path in ["low_rank"] + (["dense"] if n <= args.dense_max else []):
            cmd = [sys.executable, __file__, "--worker", str(n), path, "--dim", str(args.dim),
                   "--eps", str(args.eps), "--repeats", str(args.repeats), "--seed",
                   str(args.seed)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                      env=env)
                found = [ln for ln in proc.stdout.splitlines() if ln.startswith(TAG)]
                run = (json.loads(found[-1][len(TAG):]) if found else
                       {"N": n, "path": path, "error": f"exit {proc.returncode}: "
                        + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]})
            except subprocess.TimeoutExpired:
                run = {"N": n, "path": path, "error": f"over {args.timeout:.0f} s"}
            results["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "step_times"}), flush=True)
            (args.out_dir / f"results-{kind}.json").write_text(json.dumps(results, indent=1))
            (args.out_dir / f"results-{kind}.md").write_text(table(results))


if __name__ == "__main__":
    main()
