"""Turbofan Tycoon: maintenance strategies compared by the profit they earn (`fedmtl turbofan`).

RUL models are trained on the report protocol's factories (`fedmtl.datasets.turbofan`) with the
library's engine; a replay of the held-out run-to-failure engines in factories of engine slots
turns each strategy's maintenance decisions into dollars. See docs/turbofan.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from fedmtl import algorithms as algos
from fedmtl import models
from fedmtl.cli_common import bounded
from fedmtl.data import FederatedData
from fedmtl.datasets.turbofan import Engine as Trajectory
from fedmtl.datasets.turbofan import TurbofanStudy, turbofan
from fedmtl.engine import Engine, Federation
from fedmtl.output import atomic_write

# ----- economics and maintenance decisions -----


@dataclasses.dataclass(frozen=True)
class Economics:
    """Dollars and downtime of the report's study.

    Attributes:
      profit_per_cycle: earned by an engine slot for each cycle its engine runs.
      failure_cost: paid when an engine fails (runs to the end of its life).
      failure_downtime: cycles the slot stands still after a failure.
      maintenance_cost: paid for a maintenance before failure (the engine is replaced).
      maintenance_downtime: cycles the slot stands still after a maintenance.
    """

    profit_per_cycle: float = 250.0
    failure_cost: float = 60_000.0
    failure_downtime: int = 60
    maintenance_cost: float = 10_000.0
    maintenance_downtime: int = 20


def corrective_stops(lives: np.ndarray) -> np.ndarray:
    """Run to failure: every engine runs its whole life. lives [P] -> stop cycles [P]."""
    return np.asarray(lives, np.int64).copy()


def preventive_stops(lives: np.ndarray, interval: int) -> np.ndarray:
    """Maintain after `interval` cycles, unless the engine fails first (life <= interval).

    An engine whose life equals the interval fails in that cycle before it can be maintained.
    """
    return np.minimum(np.asarray(lives, np.int64), interval)


def predictive_stop(predicted_rul: np.ndarray, threshold: float) -> int:
    """Cycle at which an engine of life T = len(predicted_rul) leaves service.

    After running cycle c (1-based) the slot reads row c - 1 and maintains if the predicted
    RUL there is below `threshold`. A maintenance needs c < T: in cycle T the engine fails, so
    T is returned when no earlier row triggers (a failure).
    """
    below = np.flatnonzero(np.asarray(predicted_rul)[:-1] < threshold)
    return int(below[0]) + 1 if below.size else len(predicted_rul)


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    """One strategy's replay.

    Attributes:
      profit: [F] dollars per factory over the horizon.
      failures, maintenances: [F] events per factory within the horizon.
      running: [F] cycles engines ran per factory (all slots).
      cumulative: [H] fleet profit up to the end of each cycle.
    """

    profit: np.ndarray
    failures: np.ndarray
    maintenances: np.ndarray
    running: np.ndarray
    cumulative: np.ndarray


def slot_orders(num_factories: int, slots: int, pool_size: int, episodes: int,
                seed: int = 0) -> np.ndarray:
    """Pool engine of each episode [F, S, J]: slot s of factory f runs pool engines
    perm_f[s], perm_f[s + S], perm_f[s + 2S], ... (cycling), perm_f a seeded permutation.

    Every strategy replays the same orders, so strategies differ only by their decisions.
    """
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(pool_size) for _ in range(num_factories)])  # [F, P]
    pos = (np.arange(slots)[:, None] + slots * np.arange(episodes)[None, :]) % pool_size
    return perms[:, pos]


def replay(stops: np.ndarray, lives: np.ndarray, orders: np.ndarray, economics: Economics,
           horizon: int) -> ReplayResult:
    """Replays engine slots for `horizon` cycles.

    An episode of pool engine e in factory f runs r = stops[f, e] cycles (cycles t0 .. t0+r-1,
    each earning `profit_per_cycle`); if r >= lives[e] the engine failed, else it was
    maintained. Its cost is paid at the end of cycle t0 + r - 1 if that lies in the horizon,
    then the slot is down for the event's downtime and the next engine starts.

    Args:
      stops: [F, P] cycle at which each factory's strategy takes each pool engine out.
      lives: [P] true lives (cycles to failure) of the pool engines.
      orders: [F, S, J] pool engine of each slot's episodes (`slot_orders`); J must cover the
        horizon.
      economics: prices and downtimes.
      horizon: H simulated cycles.
    """
    stops, lives = np.asarray(stops, np.int64), np.asarray(lives, np.int64)
    num_factories = stops.shape[0]
    if np.any(stops < 1) or np.any(stops > lives[None, :]):
        raise ValueError("stop cycles must lie in [1, life]")
    run = stops[np.arange(num_factories)[:, None, None], orders]  # [F, S, J]
    failed = run >= lives[orders]
    down = np.where(failed, economics.failure_downtime, economics.maintenance_downtime)
    cost = np.where(failed, economics.failure_cost, economics.maintenance_cost)
    duration = run + down
    start = np.cumsum(duration, axis=-1) - duration
    if np.any(start[..., -1] + duration[..., -1] < horizon):
        raise ValueError("orders hold too few episodes to cover the horizon")
    started = start < horizon
    running = np.clip(horizon - start, 0, run)
    event = start + run <= horizon
    ppc = economics.profit_per_cycle
    profit = ppc * running - np.where(event, cost, 0.0)

    rate = np.zeros(horizon + 1)
    np.add.at(rate, start[started], ppc)
    np.add.at(rate, np.minimum(start + run, horizon)[started], -ppc)
    paid = np.zeros(horizon)
    np.add.at(paid, (start + run - 1)[event], cost[event])
    cumulative = np.cumsum(np.cumsum(rate)[:horizon] - paid)
    return ReplayResult(
        profit=profit.sum(axis=(1, 2)),
        failures=(failed & event).sum(axis=(1, 2)),
        maintenances=(~failed & event).sum(axis=(1, 2)),
        running=running.sum(axis=(1, 2)),
        cumulative=cumulative,
    )


def episodes_needed(horizon: int, economics: Economics) -> int:
    """Episodes per slot that surely cover the horizon (each lasts >= 1 + min downtime)."""
    shortest = 1 + min(economics.failure_downtime, economics.maintenance_downtime)
    return horizon // shortest + 1


# ----- RUL models -----


@dataclasses.dataclass(frozen=True)
class Training:
    """How the RUL models are trained (the report's 16-48-1 MLP, 865 weights).

    Attributes:
      model: "mlp" (hidden sizes `hidden`) or "conv1d" (for window examples [T, C]).
      rounds: rounds of every algorithm (local: one more local epoch per round).
      local_epochs: E per round.
      batch_size: B.
      lr: local SGD learning rate.
      hidden: MLP hidden sizes.
      target_scale: the models fit RUL / target_scale (`FederatedData.scale_targets`) and
        predictions are mapped back to cycles (uncapped RUL reaches ~500 cycles; on the raw
        target, SGD diverges at lr >= 1e-3).
      finetune_steps: local SGD steps that personalize the FedAvg model ("finetuned").
      seed: seeds model init and training.
    """

    model: str = "mlp"
    rounds: int = 100
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    hidden: tuple[int, ...] = (48,)
    target_scale: float = 100.0
    finetune_steps: int = 50
    seed: int = 0

    def federation(self) -> Federation:
        return Federation(
            rounds=self.rounds, local_epochs=self.local_epochs, batch_size=self.batch_size,
            seed=self.seed,
            rounds_per_sync=max(1, min(25, self.rounds)),
        )


@dataclasses.dataclass(frozen=True)
class Predictor:
    """Per-node RUL predictors of one kind: params[k] = (shared, personal) of node k.

    y_mean, y_scale: the target scaling of the data the models were trained on (a model's
    output o means o * y_scale + y_mean cycles; see `FederatedData.y_mean`).
    """

    name: str
    model: models.Model
    params: tuple
    y_mean: float
    y_scale: float
    seconds: float

    def predict(self, node: int, x: np.ndarray) -> np.ndarray:
        """Predicted RUL in cycles [T] of node `node`'s model on rows x [T, D]."""
        out = self.model.apply(*self.params[node], jnp.asarray(x, jnp.float32))
        out = np.asarray(out, np.float64).reshape(-1) * self.y_scale + self.y_mean
        if not np.all(np.isfinite(out)):
            raise FloatingPointError(
                f"{self.name}: non-finite RUL predictions of node {node}; training diverged "
                "(lower the learning rate or raise the target scale)"
            )
        return out


def _node(tree, k: int):
    return jax.tree.map(lambda leaf: leaf[k], tree)


KINDS = ("local", "fedavg", "fedper", "finetuned")


def fit(
    data: FederatedData, training: Training, kinds: Sequence[str] = KINDS,
    log: Callable[[str], None] | None = None,
) -> dict[str, Predictor]:
    """Trains RUL predictors on regression `data` with the engine.

    The models fit the targets scaled once more by `training.target_scale`; predictions come
    back in the data's raw units (cycles), whatever scaling `data` already had.

    Kinds: "local" (each node's own model), "fedavg" (the global model), "fedper" (shared body,
    per-node head), "finetuned" (the FedAvg model after `finetune_steps` local steps per node).
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown predictor kind(s) {sorted(unknown)}; choose from {KINDS}")
    log = log or (lambda message: None)
    scaled = data.scale_targets(0.0, training.target_scale)
    fed = training.federation()
    build = lambda: models.build(training.model, data.feature_shape, 1, seed=training.seed,
                                 hidden=training.hidden)
    factories = {"local": lambda: algos.local(build(), local_optimizer=training.lr),
                 "fedavg": lambda: algos.fedavg(build(), local_optimizer=training.lr),
                 "fedper": lambda: algos.fedper(build(), local_optimizer=training.lr)}
    out = {}
    for name in dict.fromkeys("fedavg" if k == "finetuned" else k for k in kinds):
        start = time.perf_counter()
        algo = factories[name]()
        tune = name == "fedavg" and "finetuned" in kinds
        fed_run = fed._replace(finetune_steps=training.finetune_steps if tune else 0)
        engine = Engine(algo, scaled, fed_run)
        state, _ = engine.run(engine.init())
        # The engine's per-node models: "global" (FedAvg), "personalized" (FedAvg fine-tuned
        # on the node, or FedPer's body + head) and "local"; leaves [N, ...].
        for kind, params in engine.node_models(state).items():
            label = {"global": "fedavg", "local": "local"}.get(kind)
            label = label or ("finetuned" if name == "fedavg" else name)
            per_node = tuple(_node(params, k) for k in range(data.num_nodes))
            out[label] = Predictor(label, algo.model, per_node, scaled.y_mean, scaled.y_scale,
                                   time.perf_counter() - start)
        log(f"trained {name}: {training.rounds} rounds in {time.perf_counter() - start:.1f} s"
            + (f", then {training.finetune_steps} fine-tuning steps per node" if tune else ""))
    return {k: out[k] for k in kinds}


def model_rmse(predictor: Predictor, data: FederatedData) -> float:
    """RMSE in cycles over all test rows, each node's rows by its own model."""
    err = [predictor.predict(k, x) - data.raw_targets(y) for k in range(data.num_nodes)
           for x, y in [data.test.node(k)] if len(y)]
    err = np.concatenate(err)
    return float(np.sqrt(np.mean(err**2)))


# ----- the study -----

STRATEGIES = {
    "corrective": "run every engine to failure",
    "preventive": "maintain after a fixed number of cycles (or fail first)",
    "local": "predictive: the factory's own model (trained on its engines only)",
    "federated": "predictive: the global FedAvg model",
    "fedper": "personalized federated predictive: FedPer's shared body, the factory's head",
    "fine-tuned": "personalized federated predictive: FedAvg fine-tuned on the factory's engines",
    "oracle": "reference, not a strategy: the true RUL as the prediction",
}
"""Strategy names and what they do; the predictive ones maintain at predicted RUL < threshold."""
_PREDICTOR_OF = {"local": "local", "federated": "fedavg", "fedper": "fedper",
                 "fine-tuned": "finetuned"}


@dataclasses.dataclass(frozen=True)
class Replay:
    """The replay: `slots` engine slots per factory, `horizon` cycles, thresholds."""

    slots: int = 4
    horizon: int = 2000
    preventive_interval: int = 193
    rul_threshold: float = 10.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class StrategyResult:
    name: str
    description: str
    result: ReplayResult
    model_rmse: float | None = None


def replay_pool(study: TurbofanStudy) -> tuple[Trajectory, ...]:
    """Held-out engines that run to failure (test-file engines stop before it: their sensor
    readings after truncation are unknown, so no strategy could be replayed on them)."""
    return tuple(e for e in study.holdout if e.failed)


def stop_cycles(name: str, pool: Sequence[Trajectory], num_factories: int, setup: Replay,
                predictors: dict[str, Predictor]) -> np.ndarray:
    """[F, P] cycle at which strategy `name` takes each pool engine out of service."""
    lives = np.array([len(e.rul) for e in pool])
    if name == "corrective":
        return np.broadcast_to(corrective_stops(lives), (num_factories, len(pool)))
    if name == "preventive":
        return np.broadcast_to(preventive_stops(lives, setup.preventive_interval),
                               (num_factories, len(pool)))
    if name == "oracle":
        stops = [predictive_stop(e.rul, setup.rul_threshold) for e in pool]
        return np.broadcast_to(np.array(stops), (num_factories, len(pool)))
    predictor = predictors[_PREDICTOR_OF[name]]
    x = np.concatenate([e.x for e in pool])
    bounds = np.cumsum([len(e.rul) for e in pool])[:-1]
    shared = predictor.name == "fedavg"  # one global model: predict once
    stops = np.empty((num_factories, len(pool)), np.int64)
    for f in range(num_factories):
        if f == 0 or not shared:
            preds = np.split(predictor.predict(f, x), bounds)
        stops[f] = [predictive_stop(p, setup.rul_threshold) for p in preds]
    return stops


def run_study(study: TurbofanStudy, predictors: dict[str, Predictor], setup: Replay,
              economics: Economics) -> list[StrategyResult]:
    """Replays every strategy whose predictor is available on the study's pool."""
    pool = replay_pool(study)
    if not pool:
        raise ValueError("no held-out engine runs to failure; nothing to replay")
    lives = np.array([len(e.rul) for e in pool])
    num_factories = study.data.num_nodes
    orders = slot_orders(num_factories, setup.slots, len(pool),
                         episodes_needed(setup.horizon, economics), setup.seed)
    out = []
    for name, description in STRATEGIES.items():
        key = _PREDICTOR_OF.get(name)
        if key is not None and key not in predictors:
            continue
        stops = stop_cycles(name, pool, num_factories, setup, predictors)
        result = replay(stops, lives, orders, economics, setup.horizon)
        rmse = None if key is None else model_rmse(predictors[key], study.data)
        out.append(StrategyResult(name, description, result, rmse))
    return out


# ----- output -----


def _signed(dollars: float) -> str:
    return f"{'+' if dollars >= 0 else '-'}${abs(dollars) / 1e6:,.2f}M"


def _gain_pct(v: float, base: float) -> float | None:
    """Relative gain in percent; None against a base that is not a profit."""
    return 100 * (v - base) / base if base > 0 else None


def strategy_table(results: list[StrategyResult], setup: Replay, num_factories: int) -> Table:
    """Profit, events and gains of each strategy (dollars in millions / thousands)."""
    by = {r.name: r.result.profit.sum() for r in results}
    table = Table(title=f"Turbofan Tycoon: {num_factories} factories x {setup.slots} slots, "
                  f"{setup.horizon} cycles (profit and gains in $M, per factory in $k)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("strategy", "RMSE", "profit", "/factory", "failures", "maint.", "vs corr",
                "vs prev"):
        table.add_column(col, justify="left" if col == "strategy" else "right",
                         no_wrap=col == "strategy")
    for r in results:
        total = by[r.name]
        table.add_row(
            r.name, "—" if r.model_rmse is None else f"{r.model_rmse:.1f}",
            f"{total / 1e6:,.2f}", f"{total / num_factories / 1e3:,.0f}",
            str(int(r.result.failures.sum())), str(int(r.result.maintenances.sum())),
            f"{(total - by['corrective']) / 1e6:+,.2f}",
            f"{(total - by['preventive']) / 1e6:+,.2f}",
        )
    return table


def to_json(results: list[StrategyResult], config: dict) -> dict:
    by = {r.name: float(r.result.profit.sum()) for r in results}
    return {
        **config,
        "strategies": {
            r.name: {
                "description": r.description,
                "model_test_rmse": r.model_rmse,
                "profit": by[r.name],
                "profit_per_factory": float(r.result.profit.mean()),
                "gain_vs_corrective": by[r.name] - by["corrective"],
                "gain_vs_preventive": by[r.name] - by["preventive"],
                "gain_vs_preventive_percent": _gain_pct(by[r.name], by["preventive"]),
                "failures": int(r.result.failures.sum()),
                "maintenances": int(r.result.maintenances.sum()),
                "running_cycles": int(r.result.running.sum()),
                "factory_profits": r.result.profit.round(2).tolist(),
            }
            for r in results
        },
    }


def save_plot(results: list[StrategyResult], path: Path, title: str) -> None:
    """Bar chart of total profit per strategy and the fleet's cumulative profit over time,
    written through a temporary file and a rename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(13, 5))
    names = [r.name for r in results]
    totals = [r.result.profit.sum() / 1e6 for r in results]
    colors = [f"C{i}" for i in range(len(results))]
    drawn = bars.barh(names[::-1], totals[::-1], color=colors[::-1])
    for bar, name in zip(drawn, names[::-1], strict=True):
        if name == "oracle":  # a reference, not a strategy
            bar.set(hatch="//", alpha=0.5)
    bars.set_xlabel("profit over the horizon ($ millions)")
    bars.set_title("Profit per strategy")
    for r, color in zip(results, colors, strict=True):
        lines.plot(np.arange(1, len(r.result.cumulative) + 1), r.result.cumulative / 1e6,
                   label=r.name, color=color, linestyle="--" if r.name == "oracle" else "-")
    lines.set_xlabel("cycle")
    lines.set_ylabel("cumulative profit ($ millions)")
    lines.set_title("Cumulative profit of the fleet")
    lines.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


# ----- command line -----


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `fedmtl turbofan`: the Turbofan Tycoon maintenance-strategy study."""
    p = subparsers.add_parser(
        "turbofan", help="Turbofan Tycoon: profit of maintenance strategies on held-out engines",
        description="Trains local, FedAvg and personalized RUL models on the report protocol's "
        "factories, replays the held-out run-to-failure engines in factories of engine slots "
        "and prints the profit of each maintenance strategy. See docs/turbofan.md.",
    )
    g = p.add_argument_group("study")
    g.add_argument("--factories", type=bounded(int, minimum=1), default=80,
                   help="factories (training nodes and replay factories; default 80)")
    g.add_argument("--engines-per-factory", type=bounded(int, minimum=2), default=4,
                   help="engines per training factory: 3 train + 1 test (default 4)")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="data folder (default: the shipped FD001/FD003, else $FEDMTL_DATA)")
    g = p.add_argument_group("training")
    d = Training()
    g.add_argument("--rounds", type=bounded(int, minimum=0), default=d.rounds,
                   help=f"rounds of every algorithm, 1 local epoch each (default {d.rounds})")
    g.add_argument("--batch-size", type=bounded(int, minimum=1), default=d.batch_size,
                   help=f"default {d.batch_size}")
    g.add_argument("--lr", type=bounded(float, minimum=1e-12), default=d.lr,
                   help=f"local SGD learning rate (default {d.lr})")
    g.add_argument("--hidden", type=bounded(int, minimum=1), nargs="+", default=list(d.hidden),
                   help="MLP hidden sizes (default 48: the report's 865-weight net)")
    g.add_argument("--target-scale", type=bounded(float, minimum=1e-12), default=d.target_scale,
                   help=f"models fit RUL / this (default {d.target_scale:g})")
    g.add_argument("--finetune-steps", type=bounded(int, minimum=0), default=d.finetune_steps,
                   help="local steps that personalize the FedAvg model; 0 drops the fine-tuned "
                   f"strategy (default {d.finetune_steps})")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the engine split, training and slot orders (default 0)")
    g = p.add_argument_group("economics")
    e = Economics()
    g.add_argument("--profit-per-cycle", type=float, default=e.profit_per_cycle,
                   help=f"dollars per running cycle (default {e.profit_per_cycle:g})")
    g.add_argument("--failure-cost", type=float, default=e.failure_cost,
                   help=f"dollars per failure (default {e.failure_cost:g})")
    g.add_argument("--failure-downtime", type=bounded(int, minimum=0), default=e.failure_downtime,
                   help=f"cycles down after a failure (default {e.failure_downtime})")
    g.add_argument("--maintenance-cost", type=float, default=e.maintenance_cost,
                   help=f"dollars per maintenance (default {e.maintenance_cost:g})")
    g.add_argument("--maintenance-downtime", type=bounded(int, minimum=0),
                   default=e.maintenance_downtime,
                   help=f"cycles down after a maintenance (default {e.maintenance_downtime})")
    g = p.add_argument_group("replay")
    r = Replay()
    g.add_argument("--slots", type=bounded(int, minimum=1), default=r.slots,
                   help=f"engine slots per factory (default {r.slots})")
    g.add_argument("--horizon", type=bounded(int, minimum=1), default=r.horizon,
                   help=f"simulated cycles (default {r.horizon})")
    g.add_argument("--preventive-interval", type=bounded(int, minimum=1),
                   default=r.preventive_interval,
                   help=f"preventive: maintain after this many cycles (default "
                   f"{r.preventive_interval})")
    g.add_argument("--rul-threshold", type=float, default=r.rul_threshold,
                   help="predictive: maintain when the predicted RUL is below this (default "
                   f"{r.rul_threshold:g})")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=Path("results/turbofan"),
                   help="folder for turbofan_tycoon.json (default results/turbofan)")
    g.add_argument("--plot", type=Path, default=None,
                   help="plot file (default OUT/turbofan_tycoon.png)")
    p.set_defaults(func=run)
    return p


def run(args, console: Console) -> int:
    """`fedmtl turbofan`."""
    if args.engines_per_factory * args.factories > 400:
        raise ValueError(f"--factories x --engines-per-factory = "
                       f"{args.factories * args.engines_per_factory} exceeds the 400 engines")
    plot = args.plot or args.out / "turbofan_tycoon.png"
    if plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ValueError(f"--plot must end in .png, .pdf or .svg, got {plot}")
    training = Training(
        rounds=args.rounds, batch_size=args.batch_size, lr=args.lr, hidden=tuple(args.hidden),
        target_scale=args.target_scale, finetune_steps=args.finetune_steps, seed=args.seed,
    )
    economics = Economics(args.profit_per_cycle, args.failure_cost, args.failure_downtime,
                          args.maintenance_cost, args.maintenance_downtime)
    setup = Replay(args.slots, args.horizon, args.preventive_interval, args.rul_threshold,
                   args.seed)
    study = turbofan(num_factories=args.factories, engines_per_factory=args.engines_per_factory,
                     seed=args.seed, data_dir=args.data_dir)
    pool = replay_pool(study)
    console.print(f"[bold]data[/]: turbofan report protocol: {study.data.summary()}; replay "
                  f"pool: {len(pool)} run-to-failure held-out engines of {len(study.holdout)}")
    kinds = [k for k in KINDS if k != "finetuned" or training.finetune_steps > 0]
    try:
        with console.status("training RUL models…"):
            predictors = fit(study.data, training, kinds, log=console.print)
        results = run_study(study, predictors, setup, economics)
    except FloatingPointError as e:
        raise ValueError(str(e)) from None
    console.print(strategy_table(results, setup, study.data.num_nodes))
    by = {r.name: r.result.profit.sum() for r in results}
    console.print(f"RMSE: the model's test RMSE (cycles) on the factories' test engines. "
                  f"Federated vs local: {_signed(by['federated'] - by['local'])}, vs corrective: "
                  f"{_signed(by['federated'] - by['corrective'])}")
    config = {
        "arguments": {k: str(v) if isinstance(v, Path) else v
                      for k, v in vars(args).items() if k != "func"},
        "training": {**dataclasses.asdict(training), "hidden": list(training.hidden)},
        "economics": dataclasses.asdict(economics),
        "replay": dataclasses.asdict(setup),
        "factories": study.data.num_nodes,
        "pool": [e.name for e in pool],
        "seconds": {k: p.seconds for k, p in predictors.items()},
    }
    json_path = args.out / "turbofan_tycoon.json"
    atomic_write(json_path, json.dumps(to_json(results, config), indent=2) + "\n")
    save_plot(results, plot, f"Turbofan Tycoon ({study.data.num_nodes} factories x "
              f"{setup.slots} slots, {setup.horizon} cycles, seed {args.seed})")
    console.print(f"wrote {json_path}, {plot}")
    return 0
