"""FedProx's straggler experiment on Synthetic(1,1): FedAvg (drops stragglers) vs FedProx
μ = 0 and μ = 1 (keep their partial work) with 0%, 50% and 90% stragglers.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous
Networks", MLSys 2020, Figure 1 / Section 5.2, with the settings of the reference code
(github.com/litian96/FedProx, run_fedprox.sh, flearn/trainers/fedavg.py and fedprox.py):
Synthetic(1,1) over 30 nodes with a 90/10 train/test split per node, multinomial logistic
regression, 10 nodes per round drawn uniformly, E = 20 local epochs, B = 10, SGD lr 0.01,
200 rounds. Exactly round(10·p) of the 10 selected nodes straggle and run randint(1, E), i.e.
1..E-1, epochs: `Systems(stragglers=p, straggler_unit="epoch", straggler_work=(0, 1))`.
FedAvg drops them (policy "drop"), FedProx aggregates their partial work ("keep").

After every --every (5) rounds the global model is evaluated: its training loss over all
training data (the paper's y-axis: Σ_k n_k loss_k / Σ_k n_k, through a FederatedData whose
test split is the training split) and its test accuracy pooled over all test examples
(Σ correct / Σ examples, the paper's metric). Writes fedprox_stragglers.json (every curve),
.md (the table) and .png (the curves, when matplotlib is installed) into --out.

    python benchmarks/systems/fedprox_stragglers.py           # 3 seeds, 200 rounds, ~11 min
    python benchmarks/systems/fedprox_stragglers.py --quick   # 1 seed, 40 rounds, ~2 min
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import compile_cache, machine, machine_line, mean_se, pooled, write_outputs
from flax import nnx
from rich.console import Console
from rich.table import Table

import fedmtl
from fedmtl import DivergenceError, Engine, FederatedData, Federation, Systems

# name: (factory, straggler policy); μ = 1 is the paper's best μ on Synthetic(1,1).
METHODS = {
    "FedAvg": (lambda module, lr: fedmtl.fedavg(module, local_optimizer=lr), "drop"),
    "FedProx μ=0": (lambda module, lr: fedmtl.fedprox(module, mu=0.0, local_optimizer=lr),
                    "keep"),
    "FedProx μ=1": (lambda module, lr: fedmtl.fedprox(module, mu=1.0, local_optimizer=lr),
                    "keep"),
}
PAPER = ("FedProx Figure 1 (Synthetic(1,1), E = 20): with 0% stragglers FedAvg and FedProx "
         "μ=0 coincide and μ=1 converges at least as well; with 50% and 90% stragglers FedAvg, "
         "which drops them, converges worse and oscillates (worst at 90%), FedProx μ=0, which "
         "keeps their partial work, does better, and FedProx μ=1 is the most stable and "
         "reaches the lowest training loss.")
DIFFERENCES = [
    "data: fedmtl.synthetic(1, 1, num_nodes=30, test_fraction=0.1) follows the reference "
    "generator (sizes int(lognormal(4, 2)) + 50, same priors) but is a different draw (numpy "
    "Generator, seeded), so node sizes and tasks differ from the reference's JSON files",
    "split: fedmtl rounds the test share per node (max(1, round(0.1 n))); the reference takes "
    "n - int(0.9 n): at most one example differs per node",
    "model init: nnx.Linear's LeCun-normal kernel, zero bias; the reference's tf.layers.dense "
    "uses Glorot-uniform (its L2 regulariser on the kernel is built but never added to the "
    "optimised loss, so neither trains with weight decay)",
    "randomness: cohorts, stragglers, their epochs and minibatch orders come from JAX keys of "
    "the seed; the reference seeds numpy with the round (the same stragglers for FedAvg and "
    "FedProx: here too, all three methods share the seed and so the cohorts and stragglers), "
    "and reshuffles each node's data in place after np.random.seed(100) at every epoch (one "
    "fixed permutation applied again and again); fedmtl draws a fresh order per epoch",
    "the reference evaluates one run per setting; we run --seeds training seeds on one data "
    "draw and report mean ± standard error over them",
]


def build(method: str, seed: int, lr: float):
    factory, policy = METHODS[method]
    return factory(fedmtl.LogisticRegression(60, 10, rngs=nnx.Rngs(seed)), lr), policy


def run_one(method: str, stragglers: float, seed: int, data: FederatedData,
            on_train: FederatedData, args) -> dict:
    """One (method, stragglers, seed) run: the curves and the engine's per-round history."""
    algo, policy = build(method, seed, args.lr)
    systems = Systems(stragglers=stragglers, straggler_unit="epoch", straggler_work=(0.0, 1.0),
                      straggler_policy=policy)
    fed = Federation(rounds=args.rounds, cohort_size=args.cohort, local_epochs=args.epochs,
                     batch_size=args.batch_size, finetune_steps=0, seed=seed,
                     rounds_per_sync=args.every, systems=systems)
    engine, on_train_engine = Engine(algo, data, fed), Engine(algo, on_train, fed)
    state = engine.init()
    rounds, train_loss, test_acc, history = [], [], [], []
    diverged = None

    def evaluate(state):
        rounds.append(int(state.round))
        try:
            train = on_train_engine.evaluate(state)["global"]
            test = engine.evaluate(state)["global"]
        except DivergenceError as e:
            return str(e)
        train_loss.append(pooled(train["loss"], data.train.counts))
        test_acc.append(pooled(test["accuracy"], data.test.counts))
        return None

    diverged = evaluate(state)
    while diverged is None and int(state.round) < args.rounds:
        try:
            state, h = engine.run(state, min(args.every, args.rounds - int(state.round)))
        except DivergenceError as e:
            diverged = str(e)
            break
        history.append(h)
        diverged = evaluate(state)
    hist = {k: np.concatenate([h[k] for h in history]) for k in history[0]} if history else {}
    if diverged:
        rounds = rounds[: len(train_loss)]
    return {
        "rounds": rounds, "train_loss": train_loss, "test_accuracy": test_acc,
        "diverged": diverged,
        "engine_train_loss": hist.get("train_loss", np.zeros(0)).tolist(),
        "mean_stragglers": float(np.mean(hist["stragglers"])) if hist else None,
        "mean_participants": float(np.mean(hist["participants"])) if hist else None,
        "mean_work": float(np.mean(hist["work"])) if hist else None,
    }


def summary_of(run: dict, rounds: int) -> dict:
    """Final and best-of-run numbers of one curve, and its oscillation in the second half."""
    loss, acc, r = (np.asarray(run[k], float) for k in ("train_loss", "test_accuracy", "rounds"))
    second = loss[r >= rounds // 2]
    complete = not run["diverged"] and len(r) and r[-1] == rounds
    return {
        "final_loss": float(loss[-1]) if complete else float("nan"),
        "best_loss": float(np.min(loss)),
        "final_accuracy": float(acc[-1]) if complete else float("nan"),
        "best_accuracy": float(np.max(acc)),
        # mean |loss(r) - loss(r - every)| over the second half of the run: how much it jumps
        "oscillation": float(np.mean(np.abs(np.diff(second)))) if len(second) > 1 else 0.0,
    }


def plot(curves: dict, methods, stragglers, path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(stragglers), figsize=(4.2 * len(stragglers), 6.4),
                             sharex=True, squeeze=False)
    colors = {"FedAvg": "tab:red", "FedProx μ=0": "tab:blue", "FedProx μ=1": "tab:green"}
    for j, p in enumerate(stragglers):
        for method in methods:
            runs = curves[(method, p)]
            length = min(len(r["train_loss"]) for r in runs)
            x = np.asarray(runs[0]["rounds"][:length])
            for i, key in enumerate(("train_loss", "test_accuracy")):
                y = np.stack([np.asarray(r[key][:length]) for r in runs])
                axes[i, j].plot(x, y.mean(axis=0), label=method, color=colors.get(method),
                                lw=1.2)
                if len(runs) > 1:
                    axes[i, j].fill_between(x, y.min(axis=0), y.max(axis=0), alpha=0.15,
                                            color=colors.get(method), lw=0)
        axes[0, j].set_title(f"{100 * p:.0f}% stragglers")
        axes[1, j].set_xlabel("# rounds")
    axes[0, 0].set_ylabel("training loss (global model)")
    axes[1, 0].set_ylabel("test accuracy (pooled)")
    axes[0, 0].legend()
    fig.suptitle("Synthetic(1,1), E = 20: mean over seeds (band: min-max)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="rounds (default 200)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds: cohorts, stragglers, shuffles, init (default "
                        "0 1 2)")
    parser.add_argument("--data-seed", type=int, default=0, help="the Synthetic(1,1) draw")
    parser.add_argument("--stragglers", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--every", type=int, default=5,
                        help="evaluate every this many rounds (default 5; the paper: 1)")
    parser.add_argument("--cohort", type=int, default=10, help="nodes per round (default 10)")
    parser.add_argument("--epochs", type=int, default=20, help="local epochs E (default 20)")
    parser.add_argument("--batch-size", type=int, default=10, help="B (default 10)")
    parser.add_argument("--lr", type=float, default=0.01, help="local SGD lr (default 0.01)")
    parser.add_argument("--quick", action="store_true", help="seed 0, 40 rounds, every 5")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.every = [0], 40, 5
    console = Console()
    compile_cache()
    info = machine()
    console.print(machine_line(info))
    start = time.perf_counter()
    data = fedmtl.synthetic(1.0, 1.0, num_nodes=30, test_fraction=0.1, seed=args.data_seed)
    on_train = FederatedData(data.train, data.train, data.task, data.num_classes, data.names)
    console.print(f"Synthetic(1,1): {data.summary()}")

    curves, runs = {}, []
    for p in args.stragglers:
        for method in args.methods:
            curves[(method, p)] = []
            for seed in args.seeds:
                t = time.perf_counter()
                run = run_one(method, p, seed, data, on_train, args)
                curves[(method, p)].append(run)
                s = summary_of(run, args.rounds)
                runs.append({"method": method, "stragglers": p, "seed": seed, **s,
                             **{k: run[k] for k in ("diverged", "mean_stragglers",
                                                    "mean_participants", "mean_work")}})
                console.print(f"{100 * p:3.0f}% stragglers  {method:12s} seed {seed}: "
                              f"final loss {s['final_loss']:.4f}, best {s['best_loss']:.4f}; "
                              f"final acc {100 * s['final_accuracy']:.1f}%  "
                              f"({time.perf_counter() - t:.0f} s)"
                              + (f"  DIVERGED: {run['diverged']}" if run["diverged"] else ""))

    # FedAvg and FedProx μ=0 are the same algorithm; without stragglers drop = keep.
    same = None
    if 0.0 in args.stragglers and {"FedAvg", "FedProx μ=0"} <= set(args.methods):
        same = max(float(np.max(np.abs(np.subtract(a["train_loss"], b["train_loss"]))))
                   for a, b in zip(curves[("FedAvg", 0.0)], curves[("FedProx μ=0", 0.0)],
                                   strict=True))

    keys = ("final_loss", "best_loss", "final_accuracy", "best_accuracy", "oscillation")
    summary = {}
    for p in args.stragglers:
        for method in args.methods:
            rows = [r for r in runs if r["method"] == method and r["stragglers"] == p]
            summary[f"{method} @ {100 * p:.0f}%"] = {
                k: dict(zip(("mean", "se"), mean_se([r[k] for r in rows]), strict=True))
                for k in keys} | {"mean_work": float(np.mean([r["mean_work"] for r in rows]))}

    n = len(args.seeds)
    title = (f"Synthetic(1,1), multinomial logistic regression, {args.cohort} of 30 nodes per "
             f"round, E = {args.epochs}, B = {args.batch_size}, lr {args.lr}, {args.rounds} "
             f"rounds; mean ± s.e. over {n} seed(s)")
    table = Table(title=title)
    cols = ("stragglers", "method", "final train loss", "best train loss", "final test acc %",
            "best test acc %", "oscillation", "work done")
    for c in cols:
        table.add_column(c, justify="left" if c in ("stragglers", "method") else "right")
    md = ["# FedProx straggler experiment (Figure 1, Synthetic(1,1))", "", title + ".", "",
          machine_line(info), "",
          "| " + " | ".join(cols) + " |", "|---|---|" + "---:|" * (len(cols) - 2)]
    pm = lambda d, scale=1.0, f=".4f": (f"{scale * d['mean']:{f}} ± {scale * d['se']:{f}}"
                                        if n > 1 else f"{scale * d['mean']:{f}}")
    for p in args.stragglers:
        for method in args.methods:
            s = summary[f"{method} @ {100 * p:.0f}%"]
            cells = (f"{100 * p:.0f}%", method, pm(s["final_loss"]), pm(s["best_loss"]),
                     pm(s["final_accuracy"], 100, ".1f"), pm(s["best_accuracy"], 100, ".1f"),
                     pm(s["oscillation"]), f"{100 * s['mean_work']:.0f}%")
            table.add_row(*cells)
            md.append("| " + " | ".join(cells) + " |")
    console.print(table)

    # The paper's qualitative result, checked on these numbers.
    checks = []
    get = lambda m, p, k: summary.get(f"{m} @ {100 * p:.0f}%", {}).get(k, {}).get("mean")
    for p in [q for q in args.stragglers if q > 0]:
        fa, p0, p1 = (get(m, p, "final_loss") for m in METHODS)
        oa, o1 = get("FedAvg", p, "oscillation"), get("FedProx μ=1", p, "oscillation")
        if None not in (fa, p1):
            checks.append((f"{100 * p:.0f}% stragglers: FedProx μ=1 ends with a lower training "
                           f"loss than FedAvg ({p1:.4f} vs {fa:.4f})", p1 < fa))
        if None not in (fa, p0):
            checks.append((f"{100 * p:.0f}% stragglers: keeping partial work (FedProx μ=0) "
                           f"ends lower than dropping it (FedAvg) ({p0:.4f} vs {fa:.4f})",
                           p0 < fa))
        if None not in (oa, o1):
            checks.append((f"{100 * p:.0f}% stragglers: FedProx μ=1 oscillates less than FedAvg "
                           f"(mean |Δ loss| {o1:.4f} vs {oa:.4f})", o1 < oa))
    if same is not None:
        checks.append((f"0% stragglers: FedAvg and FedProx μ=0 give the same curve (max "
                       f"|Δ loss| {same:.2e})", same < 1e-5))
    md += ["", "Columns: train loss is the global model's cross-entropy over all training "
           "examples (Σ_k n_k loss_k / Σ n_k), test accuracy Σ correct / Σ test examples, "
           f"evaluated every {args.every} round(s); best = best of run; oscillation = mean "
           f"|loss(r) − loss(r − {args.every})| over rounds ≥ {args.rounds // 2}; work done = "
           "the share of the cohort's assigned local steps that were run and aggregated "
           "(engine history `work`: FedAvg's dropped stragglers count as not done).", "",
           f"Paper: {PAPER}", "", "Checked on these numbers:", ""]
    md += [f"- {'yes' if ok else 'NO'}: {text}" for text, ok in checks]
    md += ["", "Where the protocol differs from the reference code:", ""]
    md += [f"- {d}" for d in DIFFERENCES]
    args.out.mkdir(parents=True, exist_ok=True)
    png = plot(curves, args.methods, args.stragglers, args.out / "fedprox_stragglers.png")
    if png is not None:
        md += ["", f"![curves]({png.name})"]
    console.print(f"paper: {PAPER}")
    for text, ok in checks:
        console.print(f"{'yes' if ok else '[red]NO[/]'}: {text}")

    payload = {
        "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"data": "fedmtl.synthetic(1, 1, num_nodes=30, test_fraction=0.1, seed=data_seed)",
           "model": "LogisticRegression(60, 10)",
           "systems": "Systems(stragglers=p, straggler_unit='epoch', straggler_work=(0, 1), "
                      "straggler_policy='drop' for FedAvg, 'keep' for FedProx)"},
        "paper": PAPER, "differences": DIFFERENCES,
        "checks": [{"claim": t, "holds": bool(ok)} for t, ok in checks],
        "summary": summary, "runs": runs,
        "curves": {f"{m} @ {100 * p:.0f}%": [
            {"seed": seed, **{k: r[k] for k in ("rounds", "train_loss", "test_accuracy",
                                                 "engine_train_loss", "diverged")}}
            for seed, r in zip(args.seeds, rs, strict=True)] for (m, p), rs in curves.items()},
        "seconds": time.perf_counter() - start,
    }
    write_outputs(args.out, "fedprox_stragglers", payload, md, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
