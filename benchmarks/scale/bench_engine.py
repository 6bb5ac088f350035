"""The reference workload end to end at scale: generation, `Engine` construction, compilation,
rounds and evaluation of FedAvg on `fedmtl.synthetic(1, 1, num_nodes=N)`, with wall times and
host memory (current RSS and the peak of each phase).

Each N runs in a fresh subprocess with the default devices (one JAX CPU device per core), so
its memory is its own. The peak of each phase is the kernel's high-water mark (VmHWM) reset at
the phase's start (`/proc/self/clear_refs`). See README.md for the columns. Writes
results-engine-cpu.json and results-engine-cpu.md.

    python benchmarks/scale/bench_engine.py                                   # N = 1,000, 10,000
    python benchmarks/scale/bench_engine.py --sizes 100000 --rounds 2 --merge  # needs ~20 GiB
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
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "speed"))
TAG, PROGRESS = "RESULT ", "PROGRESS "
MIB = 1 << 20
NAME = "results-engine-cpu"
PHASES = ("gen", "engine", "compile", "rounds", "eval")


# ----- memory probes (Linux) -----

def rss_mib() -> float:
    """Current resident set size (/proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def hwm_mib() -> float:
    """Peak resident set size since the last `reset_hwm` (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / (1 << 20)
    return float("nan")


# ----- one N, in its own process -----

def child(num_nodes: int, rounds: int, eval_again: bool) -> None:
    """Runs every phase once, printing a PROGRESS line (the record so far) as each phase starts
    and ends, so that a killed run still says where it was; then one RESULT line."""
    import jax
    import numpy as np
    from bench_fedavg import BATCH, EPOCHS, device_peak_mb, make_algo

    import fedmtl
    from fedmtl.data_ragged import is_aligned

    jax.devices()  # start the backend: part of the baseline
    rec = {"nodes": num_nodes, "rounds": rounds, "devices": jax.device_count(),
           "load_average_at_start": list(os.getloadavg()),
           "mem_available_gib_at_start": mem_available_gib(),
           "baseline_rss_mib": rss_mib(), "hwm_reset_works": reset_hwm(), "phases": {}}
    peak = [rec["baseline_rss_mib"]]  # the largest VmHWM seen before any reset

    def phase(name, fn):
        rec["running"], rec["rss_before_mib"] = name, rss_mib()
        print(PROGRESS + json.dumps(rec), flush=True)
        peak[0] = max(peak[0], hwm_mib())
        reset_hwm()
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
        peak[0] = max(peak[0], hwm_mib())
        rec["phases"][name] = {"s": seconds, "rss_mib": rss_mib(), "peak_mib": hwm_mib()}
        del rec["running"]
        print(PROGRESS + json.dumps(rec), flush=True)
        return out

    data = phase("gen", lambda: fedmtl.synthetic(1, 1, num_nodes=num_nodes, seed=0))
    tr, te = data.train, data.test
    rec.update(train_rows=int(tr.counts.sum()), test_rows=int(te.counts.sum()),
               raw_x_mib=(tr.x.nbytes + te.x.nbytes) / MIB,
               raw_y_mib=(tr.y.nbytes + te.y.nbytes) / MIB,
               aligned=bool(all(map(is_aligned, (tr.x, tr.y, te.x, te.y)))))
    rec["raw_mib"] = rec["raw_x_mib"] + rec["raw_y_mib"]
    fed = fedmtl.Federation(rounds=rounds, batch_size=BATCH, local_epochs=EPOCHS,
                            rounds_per_sync=1, seed=0)

    def construct():
        engine = fedmtl.Engine(make_algo(), data, fed)
        return engine, jax.block_until_ready(engine.init())

    engine, state = phase("engine", construct)
    leaves = jax.tree.leaves(state)
    one_copy = sum(leaf.nbytes for leaf in leaves)
    copies = sum(s.data.nbytes for leaf in leaves for s in leaf.addressable_shards)
    upload = engine.upload_bytes * engine.cohort
    rec.update(lanes=engine.lanes, makespan=int(engine.makespan), real_share=engine.real_share,
               cohort=engine.cohort, state_leaves_mib=one_copy / MIB,
               state_leaves_all_devices_mib=copies / MIB, upload_buffer_mib=upload / MIB,
               state_mib=(one_copy + upload) / MIB)

    def compile_():
        t = time.perf_counter()
        lowered = engine.lower(state)
        rec["lower_s"] = time.perf_counter() - t
        return lowered.compile()

    compiled = phase("compile", compile_)
    memory = compiled.memory_analysis()  # of the program each device runs
    rec["round_program_mib"] = {k.removesuffix("_size_in_bytes"): getattr(memory, k) / MIB
                                for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                          "temp_size_in_bytes", "generated_code_size_in_bytes")
                                if memory is not None and hasattr(memory, k)}
    del compiled

    def run_rounds():
        nonlocal state
        times, losses, rss = [], [], []
        for _ in range(rounds):
            t = time.perf_counter()
            state, history = engine.run(state, 1)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t)
            losses.append(float(history["train_loss"][-1]))
            rss.append(rss_mib())
            print(f"round {len(times)}: {times[-1]:.2f} s, RSS {rss[-1]:,.0f} MiB", flush=True)
        steady = float(np.median(times[1:])) if rounds > 1 else None
        rec.update(round_s_all=times, train_loss_all=losses, rss_after_each_round_mib=rss,
                   first_round_s=times[0], round_s=times[0] if steady is None else steady,
                   first_minus_steady_s=None if steady is None else times[0] - steady)

    phase("rounds", run_rounds)

    def evaluate():
        metrics = engine.evaluate(state)
        rec["mean_test_accuracy"] = float(np.nanmean(metrics["global"]["accuracy"]))

    phase("eval", evaluate)
    if eval_again:  # the evaluation itself, its compilation done
        t = time.perf_counter()
        engine.evaluate(state)
        rec["eval_again_s"] = time.perf_counter() - t
    rec.update(peak_rss_mib=peak[0], ru_maxrss_mib=maxrss_mib(), device_peak_mib=device_peak_mb(),
               load_average_at_end=list(os.getloadavg()))
    rec.pop("rss_before_mib", None)
    print(TAG + json.dumps(rec), flush=True)


# ----- orchestration -----

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True, check=False)
    commit = git("rev-parse", "--short", "HEAD").stdout.strip()
    dirty = git("diff-index", "--quiet", "HEAD", "--").returncode != 0
    return {"platform": platform.platform(), "python": platform.python_version(),
            "jax": metadata.version("jax"), "jaxlib": metadata.version("jaxlib"),
            "numpy": metadata.version("numpy"), "cpu_model": cpu, "cpu_cores": os.cpu_count(),
            "mem_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "git_commit": commit + ("+dirty" if dirty else ""),
            "load_average_at_start": list(os.getloadavg()),
            "mem_available_gib_at_start": mem_available_gib()}


def spawn(num_nodes: int, rounds: int, eval_again: bool) -> dict:
    """Runs one N in a fresh process, echoing its output. A failed run returns its last
    progress record with `failed_in` (the phase running when it died) and its exit status."""
    cmd = [sys.executable, __file__, "--child", str(num_nodes), str(rounds), str(int(eval_again))]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env)
    last, result, tail = None, None, []
    for line in proc.stdout:
        if line.startswith(TAG):
            result = json.loads(line[len(TAG):])
        elif line.startswith(PROGRESS):
            last = json.loads(line[len(PROGRESS):])
            if "running" in last:
                print(f"  N={num_nodes}: {last['running']} (RSS {last['rss_before_mib']:,.0f} "
                      f"MiB)", flush=True)
        else:
            tail = (tail + [line.rstrip()])[-20:]
            print("    " + line.rstrip(), flush=True)
    proc.wait()
    if proc.returncode == 0 and result is not None:
        return result
    failed = dict(last or {"nodes": num_nodes, "rounds": rounds})
    failed.update(failed=True, returncode=proc.returncode, failed_in=failed.pop("running", None),
                  output_tail=tail, mem_available_gib_after=mem_available_gib(),
                  load_average_at_end=list(os.getloadavg()))
    return failed


def _f(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def table(results: list[dict], info: dict) -> str:
    head = ("| N | train rows | raw MiB | state MiB | gen s | construct s | compile s | "
            "1st round s | s/round | eval s | peak RSS MiB: gen | construct | compile | rounds | "
            "eval | (peak − base) / raw |")
    lines = [head, "|" + "---:|" * 16]
    held = ["| N | after import | after gen | after construct | after compile | after round 1 | "
            "after rounds | after eval | state (all device copies) |", "|" + "---:|" * 9]
    failures = []
    for r in results:
        ph = r.get("phases", {})
        get = lambda name, key, ph=ph: ph.get(name, {}).get(key)  # noqa: E731
        raw = r.get("raw_mib")
        ratio = ((r["peak_rss_mib"] - r["baseline_rss_mib"]) / raw
                 if raw and "peak_rss_mib" in r else None)
        compile_s = None if "compile" not in ph else ph["compile"]["s"]
        lines.append(
            f"| {r['nodes']:,} | {_f(r.get('train_rows'), ',')} | {_f(raw, ',.0f')} | "
            f"{_f(r.get('state_mib'), ',.1f')} | {_f(get('gen', 's'), '.1f')} | "
            f"{_f(get('engine', 's'), '.1f')} | {_f(compile_s, '.1f')} | "
            f"{_f(r.get('first_round_s'), '.2f')} | {_f(r.get('round_s'), '.2f')} | "
            f"{_f(get('eval', 's'), '.1f')} | "
            + " | ".join(_f(get(p, "peak_mib"), ",.0f") for p in PHASES)
            + f" | {_f(ratio, '.2f')} |")
        each = r.get("rss_after_each_round_mib") or [None]
        held.append(
            f"| {r['nodes']:,} | {_f(r.get('baseline_rss_mib'), ',.0f')} | "
            + " | ".join(_f(v, ",.0f") for v in (
                get("gen", "rss_mib"), get("engine", "rss_mib"), get("compile", "rss_mib"),
                each[0], get("rounds", "rss_mib"), get("eval", "rss_mib")))
            + f" | {_f(r.get('state_leaves_all_devices_mib'), ',.2f')} |")
        if r.get("failed"):
            failures.append(
                f"- N={r['nodes']:,}: FAILED in phase `{r['failed_in']}` (exit status "
                f"{r['returncode']}{', SIGKILL: the OOM killer' if r['returncode'] == -9 else ''})"
                f", RSS {_f(r.get('rss_before_mib'), ',.0f')} MiB when the phase started; "
                f"MemAvailable {_f(r.get('mem_available_gib_at_start'), '.1f')} GiB at the "
                "process start.")
    loads = "; ".join(
        f"N={r['nodes']:,}: {r['load_average_at_start'][0]:.1f} → "
        f"{r['load_average_at_end'][0]:.1f}" for r in results if "load_average_at_start" in r)
    commits = "; ".join(f"N={r['nodes']:,}: {r.get('git_commit', '?')}" for r in results)
    details = "\n".join(
        f"- N={r['nodes']:,}: {r['devices']} devices × {r['lanes']} lanes, "
        f"{r['makespan']} steps/round, lower {r['lower_s']:.1f} s of the compile, "
        f"first round − steady {_f(r.get('first_minus_steady_s'), '.2f')} s, round program "
        f"temp {_f(r.get('round_program_mib', {}).get('temp'), ',.0f')} MiB per device, "
        f"eval again {_f(r.get('eval_again_s'), '.2f')} s, test accuracy "
        f"{_f(r.get('mean_test_accuracy'), '.3f')} (mean over nodes, global model, a sanity "
        f"check), MemAvailable {_f(r.get('mem_available_gib_at_start'), '.1f')} GiB at the start"
        for r in results if "lower_s" in r and "lanes" in r)
    return (
        "# FedAvg end to end at scale (CPU)\n\n"
        "FedAvg on `fedmtl.synthetic(1, 1, num_nodes=N, seed=0)`, MLP 60-64-10, B=10, 1 local "
        "epoch, every node every round, default devices (one per core). "
        f"{info['cpu_model']}, {info['cpu_cores']} cores, {info['mem_total_gib']:.0f} GiB; "
        f"jax {info['jax']}; git {commits}. Shared machine: 1-minute load average at each "
        f"process's start → end: {loads}. Columns: see README.md.\n\n"
        + "\n".join(lines) + "\n\nResident memory (MiB) held after each phase:\n\n"
        + "\n".join(held) + "\n\n" + (details + "\n" if details else "")
        + ("\n" + "\n".join(failures) + "\n" if failures else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each timed (>= 1)")
    parser.add_argument("--eval-again-below", type=int, default=100_000,
                        help="time a second evaluate (without its compile) below this N")
    parser.add_argument("--min-free-gib", type=float, default=20.0,
                        help="skip N >= 100,000 with less memory available than this")
    parser.add_argument("--merge", action="store_true", help="keep other sizes' rows")
    parser.add_argument("--out-dir", default=str(HERE))
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the .md from the .json in --out-dir")
    parser.add_argument("--child", nargs=3, metavar=("N", "ROUNDS", "EVAL_AGAIN"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, rounds, again = map(int, args.child)
        return child(n, rounds, bool(again))
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    out = Path(args.out_dir)
    if args.render:
        saved = json.loads((out / f"{NAME}.json").read_text())
        (out / f"{NAME}.md").write_text(table(saved["results"], saved["machine"]))
        return print(table(saved["results"], saved["machine"]))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if args.merge and (out / f"{NAME}.json").exists():
        results = json.loads((out / f"{NAME}.json").read_text())["results"]
    sizes = [int(s) for s in args.sizes.split(",")]
    results = [r for r in results if r["nodes"] not in sizes]
    info = machine()
    for n in sizes:
        if n >= 100_000 and mem_available_gib() < args.min_free_gib:
            print(f"N={n}: only {mem_available_gib():.1f} GiB available "
                  f"(--min-free-gib {args.min_free_gib}), skipped", flush=True)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] N={n}, {args.rounds} rounds", flush=True)
        results.append(spawn(n, args.rounds, n < args.eval_again_below)
                       | {"git_commit": info["git_commit"]})
        results.sort(key=lambda r: r["nodes"])
        info["load_average_at_end"] = list(os.getloadavg())
        (out / f"{NAME}.json").write_text(
            json.dumps({"machine": info, "results": results}, indent=1) + "\n")
        (out / f"{NAME}.md").write_text(table(results, info))
    print(table(results, info))


if __name__ == "__main__":
    main()
