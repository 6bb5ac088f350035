"""Hyperparameter grids: G settings × S seeds of one algorithm trained as ONE vectorized program
(a leading run axis over the engine state, `Engine.sweep`), one compilation for the whole grid,
and the mean ± standard error over the seeds per setting."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedmtl.algorithms.recipes import Recipe
from fedmtl.data import FederatedData
from fedmtl.engine import Federation
from fedmtl.experiment import AlgorithmResult, sweep_algorithm
from fedmtl.report import HIGHER_IS_BETTER, mean_se, primary_metric, worst10


@dataclasses.dataclass(frozen=True)
class GridSweep:
    """A grid of one algorithm's hyperparameters over training seeds (`sweep_grid`).

    Attributes:
      name: the algorithm's name.
      points: the G settings {hyperparameter: value}, in order: the product of the grid's
        values, the first hyperparameter varying slowest.
      seeds: the S training seeds (the same for every setting).
      results: `results[g][s]` is the `AlgorithmResult` of setting g and seed s.
      seconds: the whole sweep's wall time (compilation, training, evaluation).
    """

    name: str
    points: tuple[dict[str, float], ...]
    seeds: tuple[int, ...]
    results: tuple[tuple[AlgorithmResult, ...], ...]
    seconds: float

    @property
    def task(self) -> str:
        """The data's task, read from the metrics the runs report."""
        metrics = next(iter(self.results[0][0].per_node.values()))
        return "regression" if "rmse" in metrics else "classification"

    def kinds(self) -> list[str]:
        """The model kinds the runs report (e.g. "global", "personalized", "local")."""
        return list(self.results[0][0].per_node)

    def _kind(self, kind: str | None) -> str:
        """`kind`, by default "personalized" where the algorithm reports it, else "global"."""
        kinds = self.kinds()
        if kind is None:
            kind = "personalized" if "personalized" in kinds else kinds[0]
        if kind not in kinds:
            raise KeyError(f"{self.name} reports no {kind!r} models; it has {', '.join(kinds)}")
        return kind

    def summary(self, kind: str | None = None, metric: str | None = None) -> list[dict]:
        """One row per setting: its hyperparameters, then "node_mean" and "worst10" (the node
        mean and the worst 10% of nodes of `metric` for models of `kind`, over nodes with a
        defined value), each {"mean", "se"} over the seeds (`report.mean_se`).

        Args:
          kind: the model kind (default: "personalized" where the algorithm reports it, else
            "global": FedAvg without fine-tuning).
          metric: default the task's primary one (accuracy; RMSE for regression).

        Raises:
          KeyError: the algorithm has no `kind` models (naming those it has) or no such metric.
        """
        kind, metric = self._kind(kind), metric or primary_metric(self.task)
        rows = []
        for point, runs in zip(self.points, self.results, strict=True):
            values = [np.asarray(r.per_node[kind][metric], float) for r in runs]
            values = [v[np.isfinite(v)] for v in values]
            rows.append({**point,
                         "node_mean": mean_se([float(v.mean()) for v in values]),
                         "worst10": mean_se([worst10(v, metric) for v in values])})
        return rows

    def best(self, kind: str | None = None, metric: str | None = None) -> dict[str, float]:
        """The setting whose node mean over the seeds is best (first on ties); `kind` and
        `metric` as in `summary`."""
        metric = metric or primary_metric(self.task)
        means = [row["node_mean"]["mean"] for row in self.summary(kind, metric)]
        pick = np.argmax(means) if HIGHER_IS_BETTER[metric] else np.argmin(means)
        return dict(self.points[int(pick)])


def grid_points(grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every setting of `grid` {name: values}: the product, the first name varying slowest.

    Raises:
      ValueError: an empty grid, a name without values, or a value listed twice.
    """
    if not grid:
        raise ValueError("sweep_grid needs at least one hyperparameter with values")
    for name, values in grid.items():
        values = [float(v) for v in values]
        if not values or len(set(values)) != len(values):
            raise ValueError(f"sweep_grid: {name} needs distinct values, got {values}")
    return [dict(zip(grid, combo, strict=True))
            for combo in itertools.product(*([float(v) for v in vs] for vs in grid.values()))]


def sweep_grid(
    recipe: Recipe, data: FederatedData, federation: Federation, seeds: Sequence[int],
    grid: Mapping[str, Sequence[float]], callback: Callable[[int, dict], None] | None = None,
) -> GridSweep:
    """Trains `recipe` for every setting of `grid` and every seed as one vectorized program:
    G·S runs, one compilation (the hyperparameters and seeds are traced inputs).

    Run (g, s) equals `Engine(recipe, data, federation).run(init(seed, point))` (states bit
    for bit, test metrics to rtol 1e-6; `Engine.sweep`). Each setting is first checked by the
    recipe's factory (`Engine.sweep` does it), with a named error before anything trains.

    Example:
      >>> r = recipe(fedavg, lambda key: MLP(60, [64], 10, rngs=nnx.Rngs(key)),
      ...            local_optimizer=0.05, tune=["local_optimizer"])
      >>> found = sweep_grid(r, data, Federation(rounds=20), [0, 1, 2],
      ...                    {"local_optimizer": [0.01, 0.03, 0.1]})
      >>> found.summary()   # per learning rate: node mean and worst 10%, mean ± s.e.
      >>> found.best()      # {"local_optimizer": 0.03}

    Args:
      grid: {hyperparameter: values}, names among the recipe's traced ones (`recipe(...,
        tune=)`).
      seeds: S distinct training seeds; each draws its own initial weights.
      callback: progress hook callback(round, metrics), each metric a mean over the runs.

    Raises:
      AlgorithmError: a name the recipe does not trace, or a value its factory rejects.
      DivergenceError: some run diverged (the message names its seed and setting). The runs
        train as one program, so the grid stops there: drop that value and run it again.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep_grid needs distinct seeds, got {list(seeds)}")
    points = grid_points(grid)
    runs = [(point, seed) for point in points for seed in seeds]
    hyper = {name: [point[name] for point, _ in runs] for name in grid}
    start = time.perf_counter()
    found = sweep_algorithm(recipe, data, federation, [seed for _, seed in runs], callback,
                            hyper=hyper)
    count = len(seeds)
    return GridSweep(recipe.name, tuple(points), seeds,
                     tuple(tuple(found[g * count:(g + 1) * count]) for g in range(len(points))),
                     time.perf_counter() - start)
