"""Data generation and construction at scale: `fedmtl.synthetic(1, 1, num_nodes=N)` (the
reference workload, lognormal node sizes) and `FederatedData.from_nodes`, before and after the
chunked, vectorized construction.

Each (N, code) runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own. "before"
is `fedmtl/data.py` and `fedmtl/synthetic.py` of commit `--before` (default: the commit before
the change), loaded from `git show` as a temporary package; "after" is the working tree.
See README.md for the columns. Writes results-cpu.json and results-cpu.md.

    python benchmarks/scale/bench_construction.py                    # N = 1,000 and 10,000
    python benchmarks/scale/bench_construction.py --sizes 100000     # + --merge to keep rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BEFORE = "1baa111980b8cba068455585b13f192ad62f6bf3"
TAG = "RESULT "
MIB = 1 << 20
# The old generator peaks at about 4x the raw float32 data: beyond this many nodes it does not
# fit in 24 GB, so "before" only times from_nodes there (on arrays of the new generator).
BEFORE_GEN_MAX_NODES = 25_000


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(num_nodes: int, code: str, package: str, from_nodes_rows: int) -> None:
    """Generates, then times from_nodes on each node's training rows (views, the first
    `from_nodes_rows` of each node when > 0); prints one JSON line."""
    import importlib

    import numpy as np

    import fedmtl  # noqa: F401  (the same Python + JAX baseline for both codes)

    sys.path.insert(0, str(Path(package).parent))
    gen_code = code if code == "after" or num_nodes <= BEFORE_GEN_MAX_NODES else "after"
    load = lambda which, name: importlib.import_module(  # noqa: E731
        f"{Path(package).name if which == 'before' else 'fedmtl'}.{name}")
    synthetic = load(gen_code, "synthetic").synthetic
    federated_data = load(code, "data").FederatedData
    base = _maxrss_mib()
    t, sys0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    data = synthetic(1, 1, num_nodes=num_nodes)
    gen_s = time.perf_counter() - t
    gen_sys = resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0
    gen_peak = _maxrss_mib()
    x_bytes = data.train.x.nbytes + data.test.x.nbytes
    train = data.train
    offsets = train.offsets
    ends = offsets[1:] if from_nodes_rows <= 0 else np.minimum(offsets[1:],
                                                                offsets[:-1] + from_nodes_rows)
    xs = [train.x[a:b] for a, b in zip(offsets[:-1].tolist(), ends.tolist(), strict=True)]
    ys = [train.y[a:b] for a, b in zip(offsets[:-1].tolist(), ends.tolist(), strict=True)]
    times = []
    for _ in range(2):  # first: fresh memory for the output; second: memory the first freed
        built = None
        t, sys0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
        built = federated_data.from_nodes(xs, ys, test_fraction=0.25, seed=0,
                                          task="classification", num_classes=10,
                                          names=data.names)
        times.append((time.perf_counter() - t,
                      resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0))
    result = {
        "nodes": num_nodes, "code": code, "generated_by": gen_code,
        "rows": int(data.train.counts.sum() + data.test.counts.sum()),
        "x_mib": x_bytes / MIB, "baseline_rss_mib": base, "gen_s": gen_s,
        "gen_peak_rss_mib": gen_peak, "gen_sys_s": gen_sys, "from_nodes_s": times[0][0],
        "from_nodes_sys_s": times[0][1], "from_nodes_again_s": times[1][0],
        "from_nodes_again_sys_s": times[1][1],
        "from_nodes_rows": int(built.train.counts.sum() + built.test.counts.sum()),
        "peak_rss_mib": _maxrss_mib(), "load_average_at_end": list(os.getloadavg()),
    }
    print(TAG + json.dumps(result), flush=True)


def before_package(rev: str, where: Path) -> Path:
    """data.py and synthetic.py of commit `rev` as the package where/fedmtl_before."""
    package = where / "fedmtl_before"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("data", "synthetic"):
        text = subprocess.run(["git", "show", f"{rev}:fedmtl/{name}.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        text = text.replace("from fedmtl.data import", "from fedmtl_before.data import")
        (package / f"{name}.py").write_text(text)
    return package


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / (1 << 20)
    return float("nan")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    import numpy as np

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "cpu_model": cpu, "cpu_cores": os.cpu_count(),
            "mem_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "git_commit": commit, "load_average_at_start": list(os.getloadavg())}


def table(results: list[dict], info: dict) -> str:
    rows = {}
    for r in results:
        rows.setdefault(r["nodes"], {})[r["code"]] = r
    lines = [
        "| N | rows | raw x MiB | gen s before | gen s after | peak RSS MiB before | "
        "peak RSS MiB after | (peak − base) / raw before | after | from_nodes rows | "
        "from_nodes s before | from_nodes s after | again s before | again s after |",
        "|" + "---|" * 14,
    ]
    for n in sorted(rows):
        b, a = rows[n].get("before"), rows[n].get("after")
        ref = a or b
        gen = lambda r: r if r and r["generated_by"] == r["code"] else None  # noqa: E731
        f = lambda r, key, fmt: fmt.format(r[key]) if r else "–"  # noqa: E731
        ratio = lambda r: (f"{(r['gen_peak_rss_mib'] - r['baseline_rss_mib']) / r['x_mib']:.2f}"  # noqa: E731
                           if r else "–")
        lines.append(
            f"| {n:,} | {ref['rows']:,} | {ref['x_mib']:,.0f} | {f(gen(b), 'gen_s', '{:.1f}')} | "
            f"{f(a, 'gen_s', '{:.1f}')} | {f(gen(b), 'gen_peak_rss_mib', '{:,.0f}')} | "
            f"{f(a, 'gen_peak_rss_mib', '{:,.0f}')} | {ratio(gen(b))} | {ratio(a)} | "
            f"{ref['from_nodes_rows']:,} | {f(b, 'from_nodes_s', '{:.2f}')} | "
            f"{f(a, 'from_nodes_s', '{:.2f}')} | {f(b, 'from_nodes_again_s', '{:.2f}')} | "
            f"{f(a, 'from_nodes_again_s', '{:.2f}')} |")
    return (
        "# Construction at scale (CPU)\n\n"
        f"`fedmtl.synthetic(1, 1, num_nodes=N)` and `FederatedData.from_nodes`; before = commit "
        f"{info['before'][:7]}, after = {info['git_commit']} + working tree. "
        f"{info['cpu_model']}, {info['cpu_cores']} cores, {info['mem_total_gib']:.0f} GiB; "
        f"numpy {info['numpy']}; load average at the start of the last run "
        f"{info['load_average_at_start'][0]:.2f} (each row's, at its end, in the JSON). "
        "– : not run (the old generator needs about 4x the raw data in memory). "
        "Columns: see README.md.\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--codes", default="before,after")
    parser.add_argument("--before", default=BEFORE, help="commit of the 'before' code")
    parser.add_argument("--from-nodes-rows", type=int, default=None,
                        help="rows per node given to from_nodes (default: all below 100,000 "
                             "nodes, else 50: two copies of the data do not fit)")
    parser.add_argument("--min-free-gib", type=float, default=14.0,
                        help="skip N >= 100,000 with less memory available than this")
    parser.add_argument("--merge", action="store_true", help="keep other sizes' rows")
    parser.add_argument("--out-dir", default=str(HERE))
    parser.add_argument("--child", nargs=4, metavar=("N", "CODE", "PACKAGE", "ROWS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, code, package, rows = args.child
        return child(int(n), code, package, int(rows))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if args.merge and (out / "results-cpu.json").exists():
        results = json.loads((out / "results-cpu.json").read_text())["results"]
    sizes = [int(s) for s in args.sizes.split(",")]
    results = [r for r in results if r["nodes"] not in sizes]
    info = machine() | {"before": args.before}
    with tempfile.TemporaryDirectory() as tmp:
        package = before_package(args.before, Path(tmp))
        for n in sizes:
            rows = args.from_nodes_rows if args.from_nodes_rows is not None else (
                0 if n < 100_000 else 50)
            for code in args.codes.split(","):
                if n >= 100_000 and mem_available_gib() < args.min_free_gib:
                    print(f"N={n}: only {mem_available_gib():.1f} GiB available, skipped")
                    continue
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", str(n), code, str(package), str(rows)],
                    capture_output=True, text=True, cwd=ROOT,
                    env=os.environ | {"PYTHONPATH": str(ROOT)})
                line = [x for x in proc.stdout.splitlines() if x.startswith(TAG)]
                if proc.returncode or not line:
                    print(proc.stdout[-2000:], proc.stderr[-4000:])
                    raise SystemExit(f"N={n} {code}: child failed ({proc.returncode})")
                results.append(json.loads(line[0][len(TAG):]))
                print(json.dumps(results[-1]), flush=True)
                results.sort(key=lambda r: (r["nodes"], r["code"]))
                (out / "results-cpu.json").write_text(
                    json.dumps({"machine": info, "results": results}, indent=1) + "\n")
                (out / "results-cpu.md").write_text(table(results, info))
    print(table(results, info))


if __name__ == "__main__":
    main()
