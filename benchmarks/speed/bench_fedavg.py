"""Speed of one FedAvg round: the vmapped engine against per-node loops.

FedAvg on Synthetic(1, 1) (reference node sizes: int(lognormal(4, 2)) + 50, no cap), MLP
60-64-10, batch 10, 1 local epoch, SGD lr 0.05, every node participating, at several N.
Three ways to run a round:

  engine      fedmtl.Engine: nodes dealt to L parallel lanes, each lane taking a vmapped
              minibatch step of its current node, all in one jitted round (`Engine._run`).
  jax_loop    a Python loop over nodes, each calling a `jax.jit`-ed node round (the library's
              `fedmtl.training.node_round`: start, scan of steps, finish) on its own data padded
              to ceil(n/B)*B rows; it compiles once per distinct padded length. Models averaged
              weighted by counts in NumPy.
  numpy_loop  a Python loop over nodes with a hand-written NumPy forward/backward of the MLP
              and minibatch SGD (the same math).

Each (N, method) runs in its own subprocess so host-memory peaks and compile times start from
a fresh process. Loops on more than --loop-nodes nodes are measured on a random subset and
extrapolated (see README.md). Writes results-<device-kind>.json and .md to --out-dir.

    python benchmarks/speed/bench_fedavg.py --sizes 100,1000,10000 --rounds 20 --loop-nodes 300
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DIM, HIDDEN, CLASSES = 60, 64, 10
BATCH, EPOCHS, LR = 10, 1, 0.05
# Parameters of MLP 60-64-10: 60*64 + 64 + 64*10 + 10.
NUM_PARAMS = DIM * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES
FLOPS_PER_SAMPLE = 6 * NUM_PARAMS  # forward 2*P, backward 4*P multiply-adds counted as 2 flops
RESULT_TAG = "BENCH_RESULT "


# ----------------------------------------------------------------------------------------------
# Data: fedmtl.synthetic(1, 1, num_nodes=N, seed) reproduced draw for draw, but vectorised.
# ----------------------------------------------------------------------------------------------


def synthetic_fast(alpha: float, beta: float, num_nodes: int, seed: int, test_fraction=0.25):
    """The same FederatedData as `fedmtl.synthetic(alpha, beta, num_nodes=..., seed=...)`.

    `fedmtl.synthetic` keeps per-node arrays in lists, then copies them into the train/test
    splits and concatenates: its peak host memory is about 3x the data set (about 35 GB at
    100,000 nodes). This version writes into preallocated split arrays (peak 1.4x the data at
    5,000 nodes against 4x, and 1.3x faster). Generator.normal is loc + scale *
    standard_normal on the same stream, so drawing a chunk of nodes' standard normals at once
    and slicing gives the same numbers, bit for bit (checked by the `check` worker).
    """
    from fedmtl.data import FederatedData, Split
    from fedmtl.synthetic import node_sizes

    rng = np.random.default_rng(seed)
    sizes = node_sizes(num_nodes, rng)
    scale = np.sqrt(np.arange(1, DIM + 1) ** -1.2)
    u = rng.normal(0, alpha, num_nodes)
    big_b = rng.normal(0, beta, num_nodes)
    n_test = np.array([max(1, round(test_fraction * int(n))) for n in sizes], np.int64)
    n_train = sizes - n_test
    tr_off = np.concatenate([[0], np.cumsum(n_train)])
    te_off = np.concatenate([[0], np.cumsum(n_test)])
    x_tr = np.empty((tr_off[-1], DIM), np.float32)
    y_tr = np.empty(tr_off[-1], np.int32)
    x_te = np.empty((te_off[-1], DIM), np.float32)
    y_te = np.empty(te_off[-1], np.int32)
    split_rng = np.random.default_rng(seed)  # FederatedData.from_nodes' split
    per_node = DIM + DIM * CLASSES + CLASSES
    start = 0
    while start < num_nodes:  # chunks of about 8M draws
        stop, draws = start, 0
        while stop < num_nodes and (stop == start or draws < 8_000_000):
            draws += per_node + int(sizes[stop]) * DIM
            stop += 1
        z = rng.standard_normal(draws)
        pos = 0
        for k in range(start, stop):
            n = int(sizes[k])
            mean_x = big_b[k] + z[pos: pos + DIM]
            pos += DIM
            w = u[k] + z[pos: pos + DIM * CLASSES].reshape(DIM, CLASSES)
            pos += DIM * CLASSES
            b = u[k] + z[pos: pos + CLASSES]
            pos += CLASSES
            x = mean_x + scale * z[pos: pos + n * DIM].reshape(n, DIM)
            pos += n * DIM
            y = np.argmax(x @ w + b, axis=1)
            perm = split_rng.permutation(n)
            te, tr = perm[: n_test[k]], perm[n_test[k]:]
            x_te[te_off[k]: te_off[k + 1]] = x[te]
            y_te[te_off[k]: te_off[k + 1]] = y[te]
            x_tr[tr_off[k]: tr_off[k + 1]] = x[tr]
            y_tr[tr_off[k]: tr_off[k + 1]] = y[tr]
        start = stop
    return FederatedData(
        Split(x_tr, y_tr, n_train.astype(np.int64)), Split(x_te, y_te, n_test),
        "classification", CLASSES, tuple(f"node{k}" for k in range(num_nodes)),
    )


def train_counts_only(num_nodes: int, seed: int, test_fraction=0.25) -> np.ndarray:
    """Train examples per node of the same data set, without generating it."""
    from fedmtl.synthetic import node_sizes

    sizes = node_sizes(num_nodes, np.random.default_rng(seed))
    return np.array([int(n) - max(1, round(test_fraction * int(n))) for n in sizes], np.int64)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def device_peak_mb() -> float | None:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may raise or return None
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def make_algo():
    from flax import nnx

    from fedmtl import fedavg
    from fedmtl.models import MLP

    return fedavg(MLP(DIM, [HIDDEN], CLASSES, rngs=nnx.Rngs(0)), local_optimizer=LR)


def flat_params(tree) -> dict[str, np.ndarray]:
    """{"body.0.kernel": array, ...} from an nnx.State of the MLP."""
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
        names = [n for n in names if n != "value"]
        out[".".join(names)] = np.asarray(leaf)
    return out


def node_subset(num_nodes: int, limit: int, seed: int) -> np.ndarray:
    if num_nodes <= limit:
        return np.arange(num_nodes)
    return np.sort(np.random.default_rng(seed + 12345).choice(num_nodes, limit, replace=False))


def steps_of(counts: np.ndarray) -> np.ndarray:
    return np.maximum((counts + BATCH - 1) // BATCH, 1) * EPOCHS


def emit(result: dict) -> None:
    result["load_average_at_end"] = list(os.getloadavg())
    print(RESULT_TAG + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
# Loops
# ----------------------------------------------------------------------------------------------


class JaxLoop:
    """Per-node Python loop over one jitted node update (one compile per padded length)."""

    def __init__(self, data, nodes: np.ndarray, seed: int):
        import jax
        import jax.numpy as jnp

        from fedmtl.training import Schedule, node_round

        self.algo = make_algo()
        self.seed = seed
        schedule = Schedule("classification", BATCH, EPOCHS)
        algo = self.algo

        def node_fn(shared, x, y, n, k_nodes, node_id):
            key = jax.random.fold_in(k_nodes, node_id)  # as Engine._round
            delta, _, (loss, seen) = node_round(algo, shared, (), x, y, key, schedule, n=n)
            return delta, loss

        self.node_jit = jax.jit(node_fn)
        counts = data.train.counts
        offsets = data.train.offsets
        self.nodes = [int(k) for k in nodes]
        self.items = []
        for k in self.nodes:  # each node's data on the device once, padded to ceil(n/B)*B rows
            n = int(counts[k])
            length = int(steps_of(np.array([n]))[0] // EPOCHS) * BATCH
            x = np.zeros((length, DIM), np.float32)
            y = np.zeros(length, np.int32)
            x[:n] = data.train.x[offsets[k]: offsets[k] + n]
            y[:n] = data.train.y[offsets[k]: offsets[k] + n]
            self.items.append((k, n, length, jnp.asarray(x), jnp.asarray(y), jnp.int32(n)))
        self.params = jax.tree.map(np.asarray, algo.model.shared)
        self.shapes_seen: set[int] = set()

    def round(self, r: int):
        """One round; returns (per-node seconds, per-node first-compile flags)."""
        import jax

        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), 1), r)
        _, k_nodes = jax.random.split(key)
        shared = jax.device_put(self.params)
        leaves, treedef = jax.tree.flatten(self.params)
        acc = [np.zeros(leaf.shape, np.float64) for leaf in leaves]
        total = 0.0
        times, compiled = [], []
        for k, n, length, x, y, n_arr in self.items:
            t = now()
            delta, _ = self.node_jit(shared, x, y, n_arr, k_nodes, k)
            for a, d in zip(acc, jax.tree.leaves(delta), strict=True):
                a += n * np.asarray(d, np.float64)
            total += n
            times.append(now() - t)
            compiled.append(length not in self.shapes_seen)
            self.shapes_seen.add(length)
        self.params = jax.tree.unflatten(
            treedef, [(p + a / total).astype(np.float32) for p, a in zip(leaves, acc, strict=True)]
        )
        return np.array(times), np.array(compiled)


class NumpyLoop:
    """Per-node Python loop with a hand-written NumPy MLP forward/backward and SGD."""

    def __init__(self, data, nodes: np.ndarray, seed: int, orders=None):
        p = flat_params(make_algo().model.shared)
        self.params = {k: v.astype(np.float32) for k, v in p.items()}
        counts, offsets = data.train.counts, data.train.offsets
        self.nodes = [int(k) for k in nodes]
        self.items = [
            (k, data.train.x[offsets[k]: offsets[k + 1]], data.train.y[offsets[k]: offsets[k + 1]])
            for k in self.nodes
        ]
        del counts
        self.rng = np.random.default_rng(seed)
        self.orders = orders  # optional {(round, node): [epochs, n] orders}, for the check

    @staticmethod
    def node_update(params, x, y, orders):
        w1, b1 = params["body.0.kernel"].copy(), params["body.0.bias"].copy()
        w2, b2 = params["head.kernel"].copy(), params["head.bias"].copy()
        n = len(x)
        for order in orders:
            for s in range(0, n, BATCH):
                idx = order[s: s + BATCH]
                xb, yb = x[idx], y[idx]
                m = len(idx)
                pre = xb @ w1 + b1
                h = np.maximum(pre, 0)
                logits = h @ w2 + b2
                logits = logits - logits.max(axis=1, keepdims=True)
                e = np.exp(logits)
                g = e / e.sum(axis=1, keepdims=True)  # softmax
                g[np.arange(m), yb] -= 1.0
                g /= np.float32(m)  # d(mean cross-entropy)/d logits
                gw2, gb2 = h.T @ g, g.sum(axis=0)
                gh = (g @ w2.T) * (pre > 0)
                gw1, gb1 = xb.T @ gh, gh.sum(axis=0)
                w1 -= LR * gw1
                b1 -= LR * gb1
                w2 -= LR * gw2
                b2 -= LR * gb2
        return {"body.0.kernel": w1, "body.0.bias": b1, "head.kernel": w2, "head.bias": b2}

    def round(self, r: int):
        acc = {k: np.zeros(v.shape, np.float64) for k, v in self.params.items()}
        total = 0.0
        times = []
        for k, x, y in self.items:
            t = now()
            n = len(x)
            if self.orders is not None:
                orders = self.orders[(r, k)]
            else:
                orders = [self.rng.permutation(n) for _ in range(EPOCHS)]
            new = self.node_update(self.params, x, y, orders)
            for name in acc:
                acc[name] += n * new[name]
            total += n
            times.append(now() - t)
        self.params = {k: (acc[k] / total).astype(np.float32) for k in acc}
        return np.array(times), np.zeros(len(times), bool)


def engine_orders(data, rounds: int, seed: int) -> dict:
    """The minibatch orders the engine uses: {(round, node): [E, n] row orders}."""
    import jax
    import jax.numpy as jnp

    from fedmtl.training import epoch_orders

    counts, offsets = data.train.counts, data.train.offsets
    segment = jnp.asarray(np.repeat(np.arange(len(counts)), counts), jnp.int32)
    local = jnp.asarray(np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts), jnp.int32)
    out = {}
    for r in range(rounds):  # as Engine._round and Engine._node_keys
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), r)
        _, k_nodes = jax.random.split(key)
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_nodes, jnp.arange(len(counts)))
        k_order = jax.vmap(jax.random.split)(keys)[:, 0]
        orders = np.asarray(epoch_orders(k_order, segment, local, EPOCHS))
        for k in range(len(counts)):
            out[(r, k)] = [o[offsets[k]: offsets[k + 1]] - offsets[k] for o in orders]
    return out


def fit_node_cost(steps: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """Least squares seconds ≈ a + b * steps over the measured nodes; returns (a, b)."""
    design = np.stack([np.ones_like(steps, dtype=float), steps.astype(float)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, seconds, rcond=None)
    if a < 0:  # noise: fall back to a pure per-step cost
        a, b = 0.0, float(seconds.sum() / steps.sum())
    return float(a), float(b)


# ----------------------------------------------------------------------------------------------
# Workers (each in its own process)
# ----------------------------------------------------------------------------------------------


def worker_check(args) -> dict:
    """Engine vs JAX loop vs NumPy loop after 1 round from the same init, on a small N."""
    import jax

    from fedmtl import Engine, Federation, synthetic

    n = args.check_nodes
    data = synthetic(1.0, 1.0, num_nodes=n, seed=args.seed)
    fast = synthetic_fast(1.0, 1.0, n, args.seed)
    same_data = all(
        np.array_equal(getattr(getattr(data, s), f), getattr(getattr(fast, s), f))
        for s in ("train", "test") for f in ("x", "y", "counts")
    )
    fed = Federation(rounds=1, batch_size=BATCH, local_epochs=EPOCHS, rounds_per_sync=1,
                     seed=args.seed)
    eng = Engine(make_algo(), data, fed)
    state, _ = eng.run(eng.init(), 1)
    ref = flat_params(state.server.params)
    # GPUs multiply float32 in TF32 by default: the NumPy loop (exact float32) is compared with
    # an engine run at "highest" matmul precision (the same as the default on a CPU).
    with jax.default_matmul_precision("highest"):
        eng_hi = Engine(make_algo(), data, fed)
        state_hi, _ = eng_hi.run(eng_hi.init(), 1)
    ref_hi = flat_params(state_hi.server.params)

    jl = JaxLoop(data, np.arange(n), args.seed)
    jl.round(0)
    got_jax = flat_params(jl.params)
    nl = NumpyLoop(data, np.arange(n), args.seed, orders=engine_orders(data, 1, args.seed))
    nl.round(0)
    got_np = nl.params
    init = flat_params(make_algo().model.shared)

    def diff(a, b):
        return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)

    out = {
        "nodes": n,
        "lanes": eng.lanes,
        "fast_data_identical": bool(same_data),
        "max_abs_change_from_init": diff(ref, init),
        "max_abs_diff_engine_vs_jax_loop": diff(ref, got_jax),
        "max_abs_diff_engine_highest_vs_numpy_loop": diff(ref_hi, got_np),
        "max_abs_diff_engine_default_vs_highest_precision": diff(ref, ref_hi),
    }
    out["pass"] = bool(
        same_data and out["max_abs_diff_engine_vs_jax_loop"] < 1e-5
        and out["max_abs_diff_engine_highest_vs_numpy_loop"] < 1e-5
    )
    return out


def worker_engine(args) -> dict:
    import jax

    from fedmtl import Engine, Federation

    t = now()
    data = synthetic_fast(1.0, 1.0, args.n, args.seed)
    data_s = now() - t
    rss_data = peak_rss_mb()
    print(f"  engine N={args.n}: data generated in {data_s:.1f} s", flush=True)
    fed = Federation(rounds=args.rounds, batch_size=BATCH, local_epochs=EPOCHS,
                     rounds_per_sync=1, seed=args.seed)
    algo = make_algo()

    # End to end from a fresh process: Engine construction to the end of `rounds` rounds.
    t0 = now()
    eng = Engine(algo, data, fed)
    state = eng.init()
    jax.block_until_ready(state)
    construct_s = now() - t0
    print(f"  engine N={args.n}: Engine() + init {construct_s:.1f} s", flush=True)
    times, losses = [], []
    for _ in range(args.rounds):
        t = now()
        state, hist = eng.run(state, 1)  # device_get of the metrics: one host sync per round
        jax.block_until_ready(state)
        times.append(now() - t)
        losses.append(float(hist["train_loss"][-1]))
        print(f"  engine N={args.n} round {len(times)}: {times[-1]:.4f} s", flush=True)
    e2e_s = now() - t0
    dev_peak = device_peak_mb()
    lanes, makespan, real_share = eng.lanes, eng.makespan, float(eng.real_share)
    counts = data.train.counts
    del state, eng
    gc.collect()

    # Compile time on its own: a second Engine (a new jit), lowered and compiled explicitly.
    eng2 = Engine(algo, data, fed)
    state2 = eng2.init()
    jax.block_until_ready(state2)
    t = now()
    lowered = eng2.lower(state2, 1)
    lower_s = now() - t
    t = now()
    lowered.compile()
    compile_s = now() - t
    return {
        "data_gen_s": data_s,
        "construct_init_s": construct_s,
        "round_s_all": times,
        "first_round_s": times[0],
        "round_s": float(np.median(times[1:])) if len(times) > 1 else times[0],
        "e2e_s": e2e_s,
        "lower_s": lower_s,
        "xla_compile_s": compile_s,
        "compile_s": lower_s + compile_s,
        "train_loss_first_last": [losses[0], losses[-1]],
        "real_samples_per_round": int(counts.sum()) * EPOCHS,
        "computed_sample_steps_per_round": int(lanes * makespan * BATCH),
        "padding_share": 1.0 - real_share,
        "lanes": lanes,
        "sequential_steps_per_round": int(makespan),
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_data_mb": rss_data,
        "device_peak_mb": dev_peak,
    }


def worker_loop(args, kind: str) -> dict:
    t = now()
    data = synthetic_fast(1.0, 1.0, args.n, args.seed)
    data_s = now() - t
    nodes = node_subset(args.n, args.loop_nodes, args.seed)
    full = len(nodes) == args.n
    rounds = args.rounds if full and not args.loop_rounds else min(
        args.rounds, args.loop_rounds or 3
    )
    t0 = now()
    loop = (JaxLoop if kind == "jax_loop" else NumpyLoop)(data, nodes, args.seed)
    setup_s = now() - t0
    per_node, first_flags, round_s = [], None, []
    for r in range(rounds):
        t = now()
        times, compiled = loop.round(r)
        round_s.append(now() - t)
        per_node.append(times)
        if r == 0:
            first_flags = compiled
        print(f"  {kind} N={args.n} round {r + 1}/{rounds}: {round_s[-1]:.3f} s", flush=True)
    e2e_measured = setup_s + sum(round_s)
    counts = data.train.counts
    steps = steps_of(counts[nodes])
    steady = np.median(np.stack(per_node[1:]), axis=0) if rounds > 1 else per_node[0]
    a, b = fit_node_cost(steps, steady)
    # First-call compile time of each distinct padded length: first-round time minus steady.
    compile_each = (per_node[0] - steady)[first_flags]
    shapes_subset = int(first_flags.sum())
    return {
        "data_gen_s": data_s,
        "nodes_measured": len(nodes),
        "full": full,
        "rounds_measured": rounds,
        "setup_s": setup_s,
        "round_s_measured": round_s,
        "subset_real_samples": int(counts[nodes].sum()) * EPOCHS,
        "subset_steps": int(steps.sum()),
        "fit_a_s_per_node": a,
        "fit_b_s_per_step": b,
        "distinct_shapes_subset": shapes_subset,
        "compile_s_subset": float(np.sum(np.maximum(compile_each, 0))) if kind == "jax_loop"
        else None,
        "e2e_measured_s": e2e_measured,
        "peak_rss_mb": peak_rss_mb(),
        "device_peak_mb": device_peak_mb() if kind == "jax_loop" else None,
    }


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------


def spawn(args, worker: str, n: int | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--seed",
           str(args.seed), "--rounds", str(args.rounds), "--loop-nodes", str(args.loop_nodes),
           "--loop-rounds", str(args.loop_rounds), "--check-nodes", str(args.check_nodes)]
    if n is not None:
        cmd += ["--n", str(n)]
    print(f"[{time.strftime('%H:%M:%S')}] {worker} N={n}", flush=True)
    t = now()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = None
    for line in proc.stdout:
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
        else:
            print("    " + line.rstrip(), flush=True)
    proc.wait()
    if proc.returncode != 0 or result is None:
        return {"error": f"worker exited with {proc.returncode}"}
    result["process_s"] = now() - t
    return result


def loop_estimates(res: dict, n: int, counts: np.ndarray, rounds: int) -> dict:
    """Full-N numbers of a loop from its measured subset (identity when it ran on all nodes)."""
    steps = steps_of(counts)
    shapes_full = len(np.unique(steps // EPOCHS))  # distinct padded lengths ceil(n/B)*B
    compiles = res["compile_s_subset"] is not None
    if res["full"]:
        measured = res["round_s_measured"]
        round_s = float(np.median(measured[1:])) if len(measured) > 1 else measured[0]
        extra = rounds - len(measured)
        e2e = res["e2e_measured_s"] + max(extra, 0) * round_s
        note = "measured on all nodes" + (
            f"; {extra} of {rounds} rounds extrapolated" if extra > 0 else ""
        )
        compile_s = res["compile_s_subset"]
        if compiles:
            note += (
                f"; {shapes_full} compiles (one per distinct padded length), "
                f"{compile_s / max(shapes_full, 1):.2f} s each"
            )
    else:
        round_s = res["fit_a_s_per_node"] * n + res["fit_b_s_per_step"] * float(steps.sum())
        per_shape = (res["compile_s_subset"] or 0.0) / max(res["distinct_shapes_subset"], 1)
        compile_s = per_shape * shapes_full if compiles else None
        e2e = (compile_s or 0.0) + rounds * round_s
        note = (
            f"EXTRAPOLATED from {res['nodes_measured']} measured nodes: s/round = a*N + "
            f"b*sum(steps) (a={res['fit_a_s_per_node'] * 1e3:.3f} ms/node, "
            f"b={res['fit_b_s_per_step'] * 1e6:.1f} us/step, least squares over per-node times)"
        )
        if compiles:
            note += (
                f"; compile = {shapes_full} distinct padded lengths x {per_shape:.2f} s "
                f"(measured over {res['distinct_shapes_subset']}); e2e = compile + "
                f"{rounds} x s/round"
            )
    first = res["round_s_measured"][0] if res["full"] else None
    return {"round_s": round_s, "e2e_s": e2e, "compile_s": compile_s, "first_round_s": first,
            "distinct_shapes": shapes_full, "note": note}


def machine_info() -> dict:
    import jax

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "load_average_at_start": list(os.getloadavg()),
    }
    try:
        import flax
        import optax

        info["flax_version"], info["optax_version"] = flax.__version__, optax.__version__
    except ImportError:
        pass
    info["git_commit"] = os.environ.get("BENCH_GIT_COMMIT", "")
    with contextlib.suppress(OSError):
        info["git_commit"] = info["git_commit"] or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=HERE, check=False,
        ).stdout.strip()
    return info


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def fmt(x, spec=".3g"):
    if x is None:
        return "–"
    if spec == ".3g" and abs(x) >= 1000:
        spec = ",.0f"
    return format(x, spec)


def build_rows(results: dict, rounds: int) -> list[dict]:
    rows = []
    for n_str, per in results.items():
        n = int(n_str)
        for method, r in per.items():
            if "error" in r:
                rows.append({"N": n, "method": method, "note": r["error"]})
                continue
            samples = r["real_samples_per_round"]
            rows.append({
                "N": n, "method": method,
                "round_s": r["round_s"],
                "samples_per_s": samples / r["round_s"],
                "gflops": FLOPS_PER_SAMPLE * samples / r["round_s"] / 1e9,
                "compile_s": r.get("compile_s"),
                "first_round_s": r.get("first_round_s") or (
                    r["round_s_measured"][0] if r.get("full") and "round_s_measured" in r else None
                ),
                "e2e_s": r["e2e_s"],
                "peak_rss_mb": r.get("peak_rss_mb"),
                "device_peak_mb": r.get("device_peak_mb"),
                "padding": r.get("padding_share"),
                "note": r.get("note", ""),
            })
    return rows


def targets(results: dict) -> list[dict]:
    out = []

    def get(n, m):
        r = results.get(str(n), {}).get(m)
        return None if r is None or "error" in r else r

    e, j, p = get(1000, "engine"), get(1000, "jax_loop"), get(1000, "numpy_loop")
    if e and j and p:
        sj, sp = j["round_s"] / e["round_s"], p["round_s"] / e["round_s"]
        out.append({"target": "N=1000: s/round >= 2x faster than both loops",
                    "value": f"{sj:.1f}x vs jax_loop, {sp:.1f}x vs numpy_loop",
                    "pass": bool(sj >= 2 and sp >= 2)})
        se = j["e2e_s"] / e["e2e_s"]
        out.append({"target": "N=1000: end-to-end (compile + rounds) >= 10x faster than jax_loop",
                    "value": f"{se:.1f}x", "pass": bool(se >= 10)})
    big = get(10000, "engine")
    out.append({"target": "N=10000 runs", "value": "ran" if big else "missing/failed",
                "pass": bool(big)})
    pads = {n: r["engine"]["padding_share"] for n, r in results.items()
            if "engine" in r and "error" not in r["engine"]}
    if pads:
        worst = max(pads.values())
        out.append({"target": "padding <= 30% of computed sample-steps (every N)",
                    "value": ", ".join(f"N={n}: {v:.1%}" for n, v in pads.items()),
                    "pass": bool(worst <= 0.30)})
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# FedAvg speed: {m['device_kind']} ({m['backend']})",
        "",
        f"{m['cpu_model']}, {m['cpu_cores']} cores; jax {m['jax_version']}; "
        f"{m['platform']}; git {m.get('git_commit', '?')}; "
        f"load average at start {m['load_average_at_start'][0]:.2f}."
        + (f" {m['load_note']}" if m.get("load_note") else ""),
        "",
        f"Synthetic(1,1), MLP 60-64-10 ({NUM_PARAMS} params), B={BATCH}, E={EPOCHS}, SGD "
        f"lr {LR}, all nodes every round, {report['config']['rounds']} rounds. "
        f"GFLOP/s = 6 x {NUM_PARAMS} x real samples per round / s per round. "
        "Extrapolated numbers are marked (*).",
        "",
        "| N | method | s/round | node-samples/s | GFLOP/s | compile s | 1st round s | e2e s "
        "| peak RSS MB | device peak MB | padding |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        if "round_s" not in row:
            lines.append(f"| {row['N']} | {row['method']} | {row['note']} ||||||||")
            continue
        star = "*" if "EXTRAPOLATED" in row["note"] else ""
        cstar = star if row["compile_s"] is not None else ""
        est = "~" if "rounds extrapolated" in row["note"] else ""
        lines.append(
            f"| {row['N']:,} | {row['method']} | {fmt(row['round_s'])}{star} "
            f"| {fmt(row['samples_per_s'], ',.0f')}{star} | {fmt(row['gflops'])}{star} "
            f"| {fmt(row['compile_s'])}{cstar} | {fmt(row['first_round_s'])} "
            f"| {est}{fmt(row['e2e_s'])}{star} "
            f"| {fmt(row['peak_rss_mb'], '.0f')} | {fmt(row['device_peak_mb'], '.0f')} "
            f"| {'–' if row['padding'] is None else format(row['padding'], '.1%')} |"
        )
    lines += ["", "Notes:", ""]
    for row in report["rows"]:
        if row.get("note"):
            lines.append(f"- N={row['N']:,} {row['method']}: {row['note']}")
    c = report.get("check")
    if c and "error" not in c:
        lines += [
            "",
            f"Correctness ({c['nodes']} nodes, 1 round, same init and minibatch orders): "
            f"max |engine - jax_loop| = {c['max_abs_diff_engine_vs_jax_loop']:.2e}, max |engine "
            f"(matmul precision 'highest') - numpy_loop| = "
            f"{c['max_abs_diff_engine_highest_vs_numpy_loop']:.2e}; default vs 'highest' engine: "
            f"{c['max_abs_diff_engine_default_vs_highest_precision']:.2e} (parameters moved up "
            f"to {c['max_abs_change_from_init']:.2e}); vectorised data generator identical to "
            f"fedmtl.synthetic: {c['fast_data_identical']}. {'PASS' if c['pass'] else 'FAIL'}",
        ]
    lines += ["", "| target | value | result |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {'PASS' if t['pass'] else 'FAIL'} |")
    eng_notes = []
    for n, per in report["results"].items():
        e = per.get("engine")
        if e and "error" not in e:
            eng_notes.append(
                f"- N={int(n):,}: {e['lanes']} lanes, {e['sequential_steps_per_round']} "
                f"sequential steps/round, lower {e['lower_s']:.1f} s + XLA compile "
                f"{e['xla_compile_s']:.1f} s, first round {e['first_round_s']:.1f} s, "
                f"data generation {e['data_gen_s']:.1f} s (not in e2e)"
            )
    if eng_notes:
        lines += ["", "Engine details:", "", *eng_notes]
    loads = [
        f"N={int(n):,} {method}: {r['load_average_at_end'][0]:.1f}"
        for n, per in report["results"].items() for method, r in per.items()
        if "load_average_at_end" in r and r.get("n", int(n)) == int(n)
    ]
    if loads:
        lines += ["", "1-minute load average when each process ended (machine shared with other "
                  f"jobs when above {m['cpu_cores']}): " + "; ".join(loads) + "."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, args, info: dict, t_start: float) -> str:
    report["results"] = dict(sorted(report["results"].items(), key=lambda kv: int(kv[0])))
    report["rows"] = build_rows(report["results"], args.rounds)
    report["targets"] = targets(report["results"])
    report["total_benchmark_s"] = now() - t_start
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "results-" + ("cpu" if info["backend"] == "cpu" else slug(info["device_kind"]))
    report["written"] = str(out_dir / f"{name}.json")
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    (out_dir / f"{name}.md").write_text(md)
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="100,1000,10000", help="comma-separated node counts N")
    p.add_argument("--rounds", type=int, default=20, help="rounds for end-to-end timing")
    p.add_argument("--loop-nodes", type=int, default=300,
                   help="loops run on all nodes up to this N, else on this many random nodes")
    p.add_argument("--loop-rounds", type=int, default=0,
                   help="rounds the loops run (0: --rounds on all nodes, 3 on a subset)")
    p.add_argument("--loop-max-n", type=int, default=0,
                   help="measure loops only up to this N; above it reuse the fit from the "
                        "largest measured N (0: measure at every N)")
    p.add_argument("--methods", default="engine,jax_loop,numpy_loop")
    p.add_argument("--check-nodes", type=int, default=20, help="N of the correctness check")
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(HERE))
    p.add_argument("--merge-from", help="an earlier results JSON whose other measurements "
                   "(and check) are kept in the output")
    p.add_argument("--render", help="only rewrite the .md (and targets) of this results JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        if args.worker == "check":
            emit(worker_check(args))
        elif args.worker == "engine":
            emit(worker_engine(args))
        else:
            emit(worker_loop(args, args.worker))
        return

    if args.render:
        path = Path(args.render)
        report = json.loads(path.read_text())
        report["rows"] = build_rows(report["results"], report["config"]["rounds"])
        report["targets"] = targets(report["results"])
        path.write_text(json.dumps(report, indent=1) + "\n")
        path.with_suffix(".md").write_text(markdown(report))
        print(markdown(report))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    info = machine_info()
    print(json.dumps(info, indent=1), flush=True)
    t_start = now()
    report = {"machine": info, "config": vars(args) | {
        "num_params": NUM_PARAMS, "flops_per_sample": FLOPS_PER_SAMPLE,
        "batch_size": BATCH, "epochs": EPOCHS, "lr": LR}, "results": {}}
    if not args.no_check:
        check = spawn(args, "check")
        report["check"] = check
        print(f"check: {json.dumps(check)}", flush=True)
    if args.merge_from:
        old = json.loads(Path(args.merge_from).read_text())
        # Keep every old measurement; the (N, method) pairs measured now replace theirs below.
        report["results"].update(old["results"])
        report.setdefault("check", old.get("check"))
        report["merged_from"] = {"file": args.merge_from, "machine": old["machine"],
                                 "config": old["config"]}
    fits = {}  # method -> the loop measurement that larger N reuse (--loop-max-n)
    for n_str, per in report["results"].items():  # measured loops of a merged file first
        for method, r in per.items():
            usable = method != "engine" and "error" not in r and r.get("n") == int(n_str)
            usable = usable and (not args.loop_max_n or int(n_str) <= args.loop_max_n)
            if usable and (method not in fits or fits[method]["n"] < r["n"]):
                fits[method] = r
    md = write_report(report, args, info, t_start)
    for n in sizes:
        per = {m: r for m, r in report["results"].get(str(n), {}).items() if m not in methods}
        counts = train_counts_only(n, args.seed)
        real = int(counts.sum()) * EPOCHS
        for method in methods:
            if method == "engine":
                r = spawn(args, "engine", n)
                if "error" not in r:
                    r["note"] = (
                        f"{r['lanes']} lanes; compile = trace+lower "
                        f"{r['lower_s']:.1f} s + XLA {r['xla_compile_s']:.1f} s"
                    )
            else:
                if args.loop_max_n and n > args.loop_max_n and method in fits:
                    r = dict(fits[method])
                    r["full"] = False
                    r["reused_from_n"] = r.get("reused_from_n", r["n"])
                else:
                    r = spawn(args, method, n)
                    if "error" not in r:
                        r["n"] = n
                        fits[method] = r
                if "error" not in r:
                    r = dict(r)
                    r.update(loop_estimates(r, n, counts, args.rounds))
                    if "reused_from_n" in r:
                        r["note"] += f" (fit measured at N={r['reused_from_n']:,})"
                    r["peak_rss_mb"] = r["peak_rss_mb"] if r.get("n") == n else None
                    r["device_peak_mb"] = r.get("device_peak_mb") if r.get("n") == n else None
            if "error" not in r:
                r["real_samples_per_round"] = real
            per[method] = r
            if "round_s" in r:
                print(f"  -> N={n} {method}: {r['round_s']:.4f} s/round, "
                      f"e2e {r['e2e_s']:.1f} s  {r.get('note', '')}", flush=True)
        report["results"][str(n)] = per
        md = write_report(report, args, info, t_start)  # after every N: partial results survive
    print("\n" + md, flush=True)
    for t in report["targets"]:
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']}")
    print(f"wrote {report['written']} ({report['total_benchmark_s']:.0f} s)")


if __name__ == "__main__":
    main()
