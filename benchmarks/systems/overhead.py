"""What the systems model costs per round: FedAvg at 1,000 nodes of the reference workload.

The reference workload of benchmarks/speed/bench_fedavg.py (its own construction, imported):
Synthetic(1,1) with sizes int(lognormal(4, 2)) + 50, MLP 60-64-10, B = 10, E = 1, SGD lr 0.05,
plain FedAvg. Three federations, measured side by side in one process:

  (a) default     Federation(): every node in every round.
  (b) systems     a full systems model: Poisson sampling with q = C / N (expected cohort C),
                  stragglers 0.5 (policy keep, unit step), dropout 0.2, lognormal speeds
                  (`fedmtl.systems.lognormal_speeds`, spread 0.5) and a deadline at the
                  --deadline-quantile (0.9) of the nodes' full-work times n_steps / speed.
  (c) cohort      Federation(cohort_size=C): the same expected cohort size, no systems model.

Each engine is built and compiled first (compile excluded: a warm-up chunk of --chunk rounds);
then --repeats times, in rotating order, each runs the same rounds 0 .. chunk-1 again (the
state's round counter is reset, so every repeat trains the same cohorts) as one jitted chunk;
ms per round = the median over repeats of chunk time / chunk. The systems model also changes
how much work a round holds (stragglers and the deadline cut steps, the Poisson cohort varies),
so the table also gives each round's loop steps (the lanes' longest run, from the
participation trace) and the time per loop step, and the cost of the plan alone
(`Engine.participation` over --plan-rounds rounds, vmapped). Writes overhead-<device>.json and
.md into --out.

    python benchmarks/systems/overhead.py           # 1,000 nodes, cohort 100, ~2 min
    python benchmarks/systems/overhead.py --quick   # 3 repeats of 5 rounds
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from _common import HERE, machine, machine_line, write_outputs
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(HERE.parent / "speed"))
sys.dont_write_bytecode = True  # leave no __pycache__ in benchmarks/speed
from bench_fedavg import BATCH, EPOCHS, LR, make_algo, synthetic_fast  # noqa: E402

LABELS = {"a": "(a) default: all nodes", "b": "(b) full systems model",
          "c": "(c) uniform cohort, no systems model"}


def federations(n: int, cohort: int, steps: np.ndarray, args):
    """The three Federations, and what the systems model was given."""
    from fedmtl import Federation, Systems
    from fedmtl.systems import lognormal_speeds

    speed = lognormal_speeds(n, args.spread, seed=args.seed)
    deadline = float(np.quantile(steps / speed, args.deadline_quantile))
    common = dict(rounds=args.chunk, batch_size=BATCH, local_epochs=EPOCHS,
                  rounds_per_sync=args.chunk, seed=args.seed)
    systems = Systems(sampling="poisson", sample_rate=cohort / n, stragglers=0.5,
                      straggler_policy="keep", straggler_unit="step", dropout=0.2,
                      speed=speed, deadline=deadline)
    feds = {"a": Federation(**common), "b": Federation(**common, systems=systems),
            "c": Federation(**common, cohort_size=cohort)}
    given = {"sample_rate": cohort / n, "stragglers": 0.5, "straggler_policy": "keep",
             "straggler_unit": "step", "dropout": 0.2, "speed": f"lognormal, spread "
             f"{args.spread} (min {speed.min():.2f}, max {speed.max():.2f})",
             "deadline": deadline, "deadline_quantile": args.deadline_quantile}
    return feds, given


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="N (default 1000)")
    parser.add_argument("--cohort", type=int, default=100,
                        help="C: (c)'s cohort and (b)'s expected cohort (default 100)")
    parser.add_argument("--chunk", type=int, default=10,
                        help="rounds per timed jitted chunk (default 10)")
    parser.add_argument("--repeats", type=int, default=7, help="timed chunks (default 7)")
    parser.add_argument("--fit-rounds", type=int, default=20,
                        help="rounds timed one by one for the fixed / per-step split "
                        "(default 20)")
    parser.add_argument("--fit-repeats", type=int, default=3,
                        help="times each of those rounds is timed (default 3)")
    parser.add_argument("--plan-rounds", type=int, default=1000,
                        help="rounds of the plan-only timing (default 1000)")
    parser.add_argument("--spread", type=float, default=0.5,
                        help="log-standard deviation of the speeds (default 0.5)")
    parser.add_argument("--deadline-quantile", type=float, default=0.9,
                        help="deadline = this quantile of n_steps / speed (default 0.9)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 repeats of 5 rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.chunk, args.plan_rounds = 3, 5, 200
        args.fit_rounds, args.fit_repeats = 8, 2
    import jax
    import jax.numpy as jnp

    from fedmtl import Engine
    from fedmtl import lanes as lanes_lib

    console = Console()
    info = machine()
    console.print(machine_line(info))
    start = time.perf_counter()
    data = synthetic_fast(1.0, 1.0, args.nodes, args.seed)
    steps = np.maximum((data.train.counts + BATCH - 1) // BATCH, 1) * EPOCHS
    feds, given = federations(args.nodes, args.cohort, steps, args)
    console.print(f"{args.nodes} nodes, {int(data.train.counts.sum()):,} training examples, "
                  f"{int(steps.sum()):,} node steps per epoch; deadline {given['deadline']:.1f}")

    engines, states, res = {}, {}, {}
    for name, fed in feds.items():
        t = time.perf_counter()
        eng = Engine(make_algo(), data, fed)
        state, _ = eng.run(eng.init(), args.chunk)  # warm-up: compiles the chunk
        jax.block_until_ready(state)
        engines[name], states[name] = eng, state
        trace = eng.participation(args.chunk)
        loop = [lanes_lib.makespan(trace["steps"][r], eng.lanes) for r in range(args.chunk)]
        res[name] = {"label": LABELS[name], "lanes": eng.lanes, "slots": eng.cohort,
                     "build_compile_first_chunk_s": time.perf_counter() - t,
                     "sampled_per_round": float(np.mean(trace["sampled"])),
                     "reported_per_round": float(np.mean(np.sum(trace["weights"] > 0, axis=1))),
                     "node_steps_per_round": float(np.mean(np.sum(trace["steps"], axis=1))),
                     "loop_steps_per_round": float(np.mean(loop)),
                     "work": float(np.mean(trace["work"])), "round_s": []}
        console.print(f"{LABELS[name]}: {eng.lanes} lanes, {eng.cohort} slots, built and "
                      f"compiled in {res[name]['build_compile_first_chunk_s']:.1f} s")

    order = list(feds)
    for rep in range(args.repeats):
        for name in order[rep % len(order):] + order[: rep % len(order)]:
            state = states[name]._replace(round=jnp.zeros((), jnp.int32))  # same rounds
            t = time.perf_counter()
            state, _ = engines[name].run(state, args.chunk)
            jax.block_until_ready(state)
            res[name]["round_s"].append((time.perf_counter() - t) / args.chunk)
            states[name] = state
        console.print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(
            f"{k} {1e3 * r['round_s'][-1]:.1f} ms" for k, r in res.items()))

    # One round at a time, the same --fit-rounds rounds again and again, for (b) and (c): a
    # round's time split into a fixed part per federation and a part per loop step shared by
    # both (the same loop body on the same lanes), by least squares over the rounds.
    fit = [k for k in ("b", "c") if engines[k].lanes == engines["c"].lanes]
    loops, per_round = {}, {}
    for name in fit:
        eng = engines[name]
        trace = eng.participation(args.fit_rounds)
        loops[name] = np.array([lanes_lib.makespan(trace["steps"][r], eng.lanes)
                                for r in range(args.fit_rounds)], float)
        states[name], _ = eng.run(states[name], 1)  # compiles the one-round program
        per_round[name] = np.zeros((args.fit_repeats, args.fit_rounds))
    for rep in range(args.fit_repeats):
        for name in fit[rep % len(fit):] + fit[: rep % len(fit)]:
            state = states[name]._replace(round=jnp.zeros((), jnp.int32))
            for r in range(args.fit_rounds):
                t = time.perf_counter()
                state, _ = engines[name].run(state, 1)
                jax.block_until_ready(state)
                per_round[name][rep, r] = time.perf_counter() - t
            states[name] = state
    split = {}
    if len(fit) == 2:
        med = {k: 1e3 * np.median(v, axis=0) for k, v in per_round.items()}  # ms [rounds]
        design = np.block([[np.ones((args.fit_rounds, 1)), np.zeros((args.fit_rounds, 1)),
                            loops["b"][:, None]],
                           [np.zeros((args.fit_rounds, 1)), np.ones((args.fit_rounds, 1)),
                            loops["c"][:, None]]])
        target = np.concatenate([med["b"], med["c"]])
        (fixed_b, fixed_c, per_step), *_ = np.linalg.lstsq(design, target, rcond=None)
        residual = target - design @ np.array([fixed_b, fixed_c, per_step])
        split = {"fixed_ms_b": float(fixed_b), "fixed_ms_c": float(fixed_c),
                 "us_per_loop_step": float(1e3 * per_step),
                 "r2": float(1 - residual.var() / target.var()),
                 "separate_fits": {k: dict(zip(("us_per_loop_step", "fixed_ms"),
                                               np.polyfit(loops[k], med[k], 1) * [1e3, 1],
                                               strict=True)) for k in fit},
                 "loop_steps_range": {k: [float(loops[k].min()), float(loops[k].max())]
                                      for k in fit},
                 "per_round_ms": {k: med[k].tolist() for k in fit},
                 "loop_steps": {k: loops[k].tolist() for k in fit}}

    for name, eng in engines.items():  # the plan alone: vmapped over --plan-rounds rounds
        eng.participation(args.plan_rounds)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            eng.participation(args.plan_rounds)
            times.append(time.perf_counter() - t)
        r = res[name]
        r["plan_us_per_round"] = 1e6 * float(np.median(times)) / args.plan_rounds
        r["ms_per_round"] = 1e3 * float(np.median(r["round_s"]))
        r["ms_per_round_min_max"] = [1e3 * min(r["round_s"]), 1e3 * max(r["round_s"])]
        r["us_per_loop_step"] = 1e3 * r["ms_per_round"] / max(r["loop_steps_per_round"], 1)

    ratio = lambda x, y, key: res[x][key] / res[y][key]
    ratios = {"b/c ms per round": ratio("b", "c", "ms_per_round"),
              "b/c per loop step": ratio("b", "c", "us_per_loop_step"),
              "a/c ms per round": ratio("a", "c", "ms_per_round"),
              "b/a ms per round": ratio("b", "a", "ms_per_round")}
    cols = ("federation", "lanes", "slots", "sampled / reported per round", "work done",
            "node steps / round", "loop steps / round", "ms / round (median)", "min-max",
            "µs / loop step", "plan µs / round")
    table = Table(title=f"FedAvg, {args.nodes} nodes, ms per round")
    for c in cols:
        table.add_column(c, justify="left" if c == "federation" else "right")
    md = ["# The systems model's cost per round", "",
          f"FedAvg on the reference workload (benchmarks/speed): Synthetic(1,1), {args.nodes} "
          f"nodes, MLP 60-64-10, B = {BATCH}, E = {EPOCHS}, SGD lr {LR}; cohort C = "
          f"{args.cohort}; median of {args.repeats} repeats of the same {args.chunk} rounds "
          "(one jitted chunk each, compile excluded).", "", machine_line(info), "",
          "Systems model (b): Poisson sampling q = "
          f"{given['sample_rate']:g}, stragglers 0.5 (keep, step), dropout 0.2, speeds "
          f"{given['speed']}, deadline {given['deadline']:.1f} time units (the "
          f"{args.deadline_quantile:g} quantile of the nodes' full-work times).", "",
          "| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for r in res.values():
        cells = (r["label"], str(r["lanes"]), str(r["slots"]),
                 f"{r['sampled_per_round']:.1f} / {r['reported_per_round']:.1f}",
                 f"{100 * r['work']:.0f}%", f"{r['node_steps_per_round']:,.0f}",
                 f"{r['loop_steps_per_round']:,.0f}", f"{r['ms_per_round']:.1f}",
                 f"{r['ms_per_round_min_max'][0]:.1f}-{r['ms_per_round_min_max'][1]:.1f}",
                 f"{r['us_per_loop_step']:.1f}", f"{r['plan_us_per_round']:.1f}")
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    headline = (f"The full systems model's round takes {res['b']['ms_per_round']:.1f} ms "
                f"against {res['c']['ms_per_round']:.1f} ms for the plain cohort of the same "
                f"expected size ({ratios['b/c ms per round']:.2f}x), because it runs "
                f"{res['b']['loop_steps_per_round']:,.0f} instead of "
                f"{res['c']['loop_steps_per_round']:,.0f} loop steps (stragglers and the "
                "deadline cut work)")
    lines = []
    if split:
        extra = split["fixed_ms_b"] - split["fixed_ms_c"]
        ratios["b/c fixed part"] = split["fixed_ms_b"] / split["fixed_ms_c"]
        headline += (f"; at equal work its fixed cost per round differs by {extra:+.2f} ms "
                     f"({100 * extra / res['c']['ms_per_round']:+.1f}% of (c)'s round)")
        sep = split["separate_fits"]
        lines = ["", f"Fixed part and part per loop step ({args.fit_rounds} rounds timed one "
                 f"at a time, median of {args.fit_repeats}, one host sync each; least squares "
                 "ms = fixed(federation) + per-step × loop steps, one per-step cost for both, "
                 f"R² {split['r2']:.3f}): fixed (b) {split['fixed_ms_b']:.2f} ms, fixed (c) "
                 f"{split['fixed_ms_c']:.2f} ms, {split['us_per_loop_step']:.1f} µs per loop "
                 f"step; fitted apart, (b) {sep['b']['fixed_ms']:.2f} ms + "
                 f"{sep['b']['us_per_loop_step']:.1f} µs/step over "
                 f"{split['loop_steps_range']['b'][0]:.0f}-"
                 f"{split['loop_steps_range']['b'][1]:.0f} loop steps, (c) "
                 f"{sep['c']['fixed_ms']:.2f} ms + {sep['c']['us_per_loop_step']:.1f} µs/step "
                 f"over {split['loop_steps_range']['c'][0]:.0f}-"
                 f"{split['loop_steps_range']['c'][1]:.0f}."]
    headline += (f"; planning a round alone takes {res['b']['plan_us_per_round']:.0f} µs vs "
                 f"{res['c']['plan_us_per_round']:.0f} µs")
    plan_share = 1e-3 * res["b"]["plan_us_per_round"] / res["c"]["ms_per_round"]
    if split and abs(extra) < 0.05 * res["c"]["ms_per_round"] and plan_share < 0.01:
        headline += (": the systems model adds no cost measurable here (under 5% of a round "
                     "at equal work, the plan itself under 1%)")
    headline += f". All {args.nodes} nodes: {res['a']['ms_per_round']:.1f} ms per round."
    md += ["", "Columns: slots = the cohort's fixed slot count C (a Poisson cohort gets its "
           "mean + 6 s.d. + 4); work done = the share of the sampled nodes' assigned steps "
           "that were run and aggregated; node steps = Σ local steps the cohort took; loop "
           "steps = the lanes' longest run (what a round's time follows); plan = "
           "`Engine.participation` over "
           f"{args.plan_rounds} rounds (vmapped) / {args.plan_rounds}.", "",
           "Ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + ".", *lines,
           "", headline]
    console.print(headline)
    device = "cpu" if info["backend"] == "cpu" else re.sub(
        r"[^a-z0-9]+", "-", info["device_kind"].lower()).strip("-")
    payload = {"machine": info | {"load_average_at_end": list(os.getloadavg())},
               "config": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()} | {"systems": given},
               "results": res, "ratios": ratios, "fixed_and_per_step": split,
               "headline": headline,
               "seconds": time.perf_counter() - start}
    write_outputs(args.out, f"overhead-{device}", payload, md, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
