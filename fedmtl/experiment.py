"""Experiments: several algorithms on the same data and seed, per-node results side by side."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from fedmtl.algorithms import Algorithm
from fedmtl.data import FederatedData
from fedmtl.engine import Engine, Federation


@dataclasses.dataclass(frozen=True)
class AlgorithmResult:
    """One algorithm's run.

    Attributes:
      name: the algorithm's name.
      per_node: {kind: {metric: [N]}} test metrics per node, kinds "global", "personalized",
        "local".
      history: {metric: [R]} per-round training metrics.
      seconds: wall time including compilation.
      real_share: share of the engine's computed sample-steps that were real examples.
    """

    name: str
    per_node: dict[str, dict[str, np.ndarray]]
    history: dict[str, np.ndarray]
    seconds: float
    real_share: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Results of several algorithms on the same `data` under the same `federation`."""

    data: FederatedData
    federation: Federation
    results: tuple[AlgorithmResult, ...]

    def result(self, name: str) -> AlgorithmResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no algorithm {name!r} in this comparison; have {self.names}")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.results]


def run_algorithm(
    algorithm: Algorithm, data: FederatedData, federation: Federation,
    callback: Callable[[int, dict], None] | None = None,
) -> AlgorithmResult:
    """Trains `algorithm` for `federation.rounds` rounds and evaluates every node."""
    start = time.perf_counter()
    engine = Engine(algorithm, data, federation)
    state, history = engine.run(engine.init(), callback=callback)
    per_node = engine.evaluate(state)
    return AlgorithmResult(
        algorithm.name, per_node, history, time.perf_counter() - start, engine.real_share
    )


def compare(
    algorithms: Sequence[Algorithm], data: FederatedData, federation: Federation,
    callback: Callable[[str, int, dict], None] | None = None,
) -> Comparison:
    """Runs each algorithm on the same data with the same federation (and so the same seed).

    Args:
      callback: progress hook called as callback(algorithm name, round, metrics).
    """
    names = [a.name for a in algorithms]
    if len(set(names)) != len(names):
        raise ValueError(f"algorithm names must be distinct, got {names}")
    results = []
    for algo in algorithms:
        hook = None if callback is None else (lambda r, m, n=algo.name: callback(n, r, m))
        results.append(run_algorithm(algo, data, federation, hook))
    return Comparison(data, federation, tuple(results))
