"""Experiments: several algorithms on the same data and seed, per-node results side by side;
`compare_seeds` repeats a comparison over S training seeds, each algorithm as one program."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from fedmtl.algorithms import Algorithm
from fedmtl.algorithms.recipes import Recipe
from fedmtl.data import FederatedData
from fedmtl.engine import DivergenceError, Engine, EngineState, Federation
from fedmtl.engine.state import _concat
from fedmtl.engine.sweep import run_labels
from fedmtl.models import check_model


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
      extras: {name: array} the algorithm exposes after training (e.g. MOCHA's learned task
        covariance "sigma" [N, N]).
      privacy: the run's differential-privacy guarantee (`Engine.privacy_report`: ε at δ
        after the rounds, z, S, the accountant), {} without privacy.
      state: the trained `EngineState` (server state and stacked node states), or None.
      engine: builds a fresh `Engine` like the one that trained it (for `node_models()`), or
        None. A builder, not the engine itself: an engine holds its own device copy of the
        data, and a comparison of several algorithms would otherwise keep one per algorithm.
    """

    name: str
    per_node: dict[str, dict[str, np.ndarray]]
    history: dict[str, np.ndarray]
    seconds: float
    real_share: float
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    privacy: dict = dataclasses.field(default_factory=dict)
    state: EngineState | None = dataclasses.field(default=None, repr=False, compare=False)
    engine: Callable[[], Engine] | None = dataclasses.field(default=None, repr=False,
                                                            compare=False)

    def node_models(self) -> dict:
        """Every node's trained model of each kind, as evaluated (fine-tuning included):
        {kind: (shared, personal)} with leaves [N, ...]; apply one with
        `algorithm.model.apply(shared[k], personal[k], x)` (index leaves by node k)."""
        if self.engine is None or self.state is None:
            raise ValueError(f"{self.name}: this result keeps no trained state")
        return self.engine().node_models(self.state)


@dataclasses.dataclass(frozen=True)
class Failure:
    """An algorithm that stopped early: its name, why (one line), and the wall time it used."""

    name: str
    error: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Results of several algorithms on the same `data` under the same `federation`.

    Attributes:
      results: the algorithms that finished, in the order they ran.
      failures: the algorithms that diverged (their error says where), in the order they ran.
    """

    data: FederatedData
    federation: Federation
    results: tuple[AlgorithmResult, ...]
    failures: tuple[Failure, ...] = ()

    def result(self, name: str) -> AlgorithmResult:
        for r in self.results:
            if r.name == name:
                return r
        for f in self.failures:
            if f.name == name:
                raise KeyError(f"{name!r} failed: {f.error}")
        raise KeyError(f"no algorithm {name!r} in this comparison; have {self.names}")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.results]


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Where `compare` saves each algorithm's run (`fedmtl.checkpoints`, orbax) and whether
    it resumes from what is there.

    Attributes:
      directory: one subfolder per algorithm.
      every: save after every `every`-th round as well as at the end (None: at the end only).
      resume: continue each algorithm from its newest checkpoint (an algorithm saved at its
        last round is only evaluated again); without, the algorithm's earlier checkpoints
        in `directory` are deleted first.
      fingerprint: what the run is (e.g. `configs.fingerprint` of its options); a checkpoint
        saved under another fingerprint is refused.
    """

    directory: Path
    every: int | None = None
    resume: bool = False
    fingerprint: str = ""


def _restored(saver, state: EngineState, meta: dict, resume: bool, rounds: int):
    """(state, history so far) to start from: the newest checkpoint's when resuming (it must
    be this run's and not past its rounds), else `state` and {} after the directory's old
    checkpoints are deleted (a fresh run's checkpoints go forward from round 1)."""
    from fedmtl.checkpoints import CheckpointError

    if not resume:
        saver.clear()
        return state, {}
    if saver.latest() is None:
        return state, {}
    restored, history, found = saver.restore(state)
    if found != meta:
        raise CheckpointError(f"{saver.directory}: the checkpoint is of another run ({found}), "
                              f"not of this one ({meta}); start afresh without resuming")
    if int(restored.round) > rounds:
        raise CheckpointError(f"{saver.directory}: the checkpoint is of round "
                              f"{int(restored.round)}, past this run's {rounds} rounds")
    return restored, history


def run_algorithm(
    algorithm: Algorithm | Recipe, data: FederatedData, federation: Federation,
    callback: Callable[[int, dict], None] | None = None,
    checkpointing: Checkpointing | None = None,
) -> AlgorithmResult:
    """Trains `algorithm` for `federation.rounds` rounds and evaluates every node; with
    `checkpointing`, saves the run as it goes (and resumes it), with results equal to an
    uninterrupted run's."""
    start = time.perf_counter()
    engine = Engine(algorithm, data, federation)
    state, earlier = engine.init(), {}
    saver, meta = None, {"algorithm": algorithm.name}
    if checkpointing is not None:
        from fedmtl.checkpoints import Checkpoints

        saver = Checkpoints(Path(checkpointing.directory) / algorithm.name)
        meta["fingerprint"] = checkpointing.fingerprint
    try:
        if saver is not None:
            state, earlier = _restored(saver, state, meta, checkpointing.resume,
                                       federation.rounds)
        whole = lambda later: _concat([h for h in (earlier, later) if h])
        every = None if saver is None else max(1, checkpointing.every or federation.rounds)
        state, history = engine.run(
            state, federation.rounds - int(state.round), callback=callback,
            checkpoint_every=every, on_checkpoint=None if saver is None else (
                lambda s, h: saver.save(s, whole(h), meta)))
    finally:
        if saver is not None:
            saver.close()
    history = whole(history)
    per_node = engine.evaluate(state)
    extras = _extras(engine, state)
    return AlgorithmResult(
        algorithm.name, per_node, history, time.perf_counter() - start, engine.real_share,
        {k: np.asarray(v) for k, v in extras.items()}, engine.privacy_report(int(state.round)),
        state,
        lambda: Engine(algorithm, data, federation),
    )


def _extras(engine: Engine, state: EngineState) -> dict:
    """The algorithm's `extras` of a trained state, on the host ({} when it has none)."""
    algo = engine.algorithm
    return {} if algo.extras is None else jax.device_get(algo.extras(state.server))


def _check_algorithms(algorithms: Sequence[Algorithm | Recipe], data: FederatedData) -> None:
    """Distinct names, and every model against the data, before anything trains."""
    names = [a.name for a in algorithms]
    if len(set(names)) != len(names):
        raise ValueError(f"algorithm names must be distinct, got {names}")
    for algo in algorithms:
        check_model((algo.concrete(0) if isinstance(algo, Recipe) else algo).model, data)


def compare(
    algorithms: Sequence[Algorithm | Recipe], data: FederatedData, federation: Federation,
    callback: Callable[[str, int, dict], None] | None = None, *,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[Comparison], None] | None = None,
    checkpointing: Checkpointing | None = None,
) -> Comparison:
    """Runs each algorithm on the same data with the same federation (and so the same seed).

    An algorithm that diverges (`DivergenceError`: a non-finite training loss, checked at
    every host sync, or a non-finite test metric) is stopped and recorded in
    `Comparison.failures`; the others still run. Any other error propagates.

    Args:
      callback: progress hook called as callback(algorithm name, round, metrics).
      on_start: called with an algorithm's name before it is built and compiled.
      on_done: called with the comparison so far each time an algorithm finishes or fails
        (e.g. to write its results at once).
      checkpointing: save (and resume) each algorithm's run (`Checkpointing`).
    """
    _check_algorithms(algorithms, data)
    comparison = Comparison(data, federation, ())
    for algo in algorithms:
        if on_start is not None:
            on_start(algo.name)
        hook = None if callback is None else (lambda r, m, n=algo.name: callback(n, r, m))
        start = time.perf_counter()
        try:
            done = {"results": (*comparison.results, run_algorithm(algo, data, federation, hook,
                                                                  checkpointing))}
        except DivergenceError as e:
            failure = Failure(algo.name, str(e), time.perf_counter() - start)
            done = {"failures": (*comparison.failures, failure)}
        comparison = dataclasses.replace(comparison, **done)
        if on_done is not None:
            on_done(comparison)
    return comparison


@dataclasses.dataclass(frozen=True)
class SeedComparison:
    """One comparison repeated over training seeds (`compare_seeds`): same data, same
    federation, the run seed varied.

    Attributes:
      seeds: the S training seeds, in order.
      runs: one `Comparison` per seed, in the order of `seeds`. An algorithm that failed on
        any seed is among every run's failures.
      weights_per_seed: whether each seed drew its own initial weights (every algorithm was a
        `Recipe`) or every seed started from the algorithms' own.
    """

    seeds: tuple[int, ...]
    runs: tuple[Comparison, ...]
    weights_per_seed: bool = False

    @property
    def data(self) -> FederatedData:
        return self.runs[0].data

    @property
    def failures(self) -> tuple[Failure, ...]:
        return self.runs[0].failures

    @property
    def names(self) -> list[str]:
        return self.runs[0].names

    def run(self, seed: int) -> Comparison:
        """The comparison of training seed `seed`."""
        if seed not in self.seeds:
            raise KeyError(f"no training seed {seed} in this sweep; have {list(self.seeds)}")
        return self.runs[self.seeds.index(seed)]


def _evaluate_runs(engine: Engine, states: EngineState, labels: list[str]) -> list[dict]:
    """`engine.evaluate_sweep(states)`; a non-finite test metric raises DivergenceError naming
    the (first) run it came from by its label (e.g. "seed 3")."""
    try:
        return engine.evaluate_sweep(states)
    except DivergenceError as e:
        for i, label in enumerate(labels):  # only on failure: which run was it?
            try:
                engine.evaluate(jax.tree.map(lambda a, i=i: a[i], states))
            except DivergenceError as one:
                raise DivergenceError(f"{one} ({label})") from e
        raise


def sweep_algorithm(
    algorithm: Algorithm | Recipe, data: FederatedData, federation: Federation,
    seeds: Sequence[int], callback: Callable[[int, dict], None] | None = None, *,
    hyper: dict[str, Sequence[float]] | None = None,
) -> list[AlgorithmResult]:
    """Trains `algorithm` once per run as one vectorized program (`Engine.sweep`: one
    compilation) and evaluates every run in one more; run i has seed seeds[i] and, for a
    `Recipe`, the hyperparameters {name: values[i]} of `hyper` (`fedmtl.tuning` lays out a
    grid × seeds so).

    Run i's result equals `run_algorithm` under `federation._replace(seed=seeds[i])` (states
    and histories bit for bit, test metrics to rtol 1e-6: the vmapped evaluation sums in
    another order) where nothing else follows the federation's seed: the attacker set,
    availability phases and secure-aggregation keys stay those of `federation.seed` for every
    run. A `Recipe`'s initial weights follow each run's seed; an `Algorithm`'s are its own,
    the same for every run.

    Returns:
      One `AlgorithmResult` per run, in order; `seconds` is the whole sweep's wall time
      (compilation, training, evaluation) divided by S, and `state` the run's slice of the
      swept state.

    Raises:
      DivergenceError: some run diverged in training or testing (the message names it).
    """
    seeds = [int(s) for s in seeds]
    start = time.perf_counter()
    engine = Engine(algorithm, data, federation)
    states, history = engine.sweep(seeds, hyper=hyper, callback=callback)  # leaves [S, ...]
    per_node = _evaluate_runs(engine, states, run_labels(seeds, hyper))
    privacy = engine.privacy_report(int(np.ravel(states.round)[0]))
    one = [jax.tree.map(lambda a, i=i: a[i], states) for i in range(len(seeds))]
    extras = [_extras(engine, s) for s in one]
    seconds = (time.perf_counter() - start) / len(seeds)
    return [
        AlgorithmResult(
            algorithm.name, per_node[i], {k: v[i] for k, v in history.items()}, seconds,
            engine.real_share, {k: np.asarray(v) for k, v in extras[i].items()}, privacy,
            one[i], lambda: Engine(algorithm, data, federation))
        for i in range(len(seeds))
    ]


def compare_seeds(
    algorithms: Sequence[Algorithm | Recipe], data: FederatedData, federation: Federation,
    seeds: Sequence[int], callback: Callable[[str, int, dict], None] | None = None, *,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[SeedComparison], None] | None = None,
) -> SeedComparison:
    """`compare` over S training seeds: each algorithm trains all S runs as one vectorized
    program (`sweep_algorithm`) on the same data; the data split is the caller's, fixed.

    Give `Recipe`s (`fedmtl.recipe`) for each seed to draw its own initial weights; an
    `Algorithm` starts every seed from its own weights (`SeedComparison.weights_per_seed`).

    An algorithm that diverges on any seed fails as a whole (its `Failure` names the seed
    and, as every `seconds` here, its wall time divided by S); the others still run.

    Args:
      seeds: S distinct training seeds (e.g. seed, seed + 1, ..., seed + S - 1).
      callback: progress hook called as callback(algorithm name, round, metrics), the
        metrics each a mean over the seeds.
      on_start: called with an algorithm's name before it is built and compiled.
      on_done: called with the sweep so far each time an algorithm finishes or fails.

    Example:
      >>> sweep = compare_seeds([local(m), fedavg(m)], data, Federation(rounds=20), [0, 1, 2])
      >>> per_node = sweep.run(1).result("fedavg").per_node   # {kind: {metric: [N]}}
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"compare_seeds needs distinct seeds, got {list(seeds)}")
    _check_algorithms(algorithms, data)
    runs = [Comparison(data, federation, ()) for _ in seeds]
    per_seed = all(isinstance(a, Recipe) for a in algorithms)
    sweep = SeedComparison(seeds, tuple(runs), per_seed)
    for algo in algorithms:
        if on_start is not None:
            on_start(algo.name)
        hook = None if callback is None else (lambda r, m, n=algo.name: callback(n, r, m))
        start = time.perf_counter()
        try:
            found = sweep_algorithm(algo, data, federation, seeds, hook)
            runs = [dataclasses.replace(c, results=(*c.results, r))
                    for c, r in zip(runs, found, strict=True)]
        except DivergenceError as e:
            failure = Failure(algo.name, str(e), (time.perf_counter() - start) / len(seeds))
            runs = [dataclasses.replace(c, failures=(*c.failures, failure)) for c in runs]
        sweep = SeedComparison(seeds, tuple(runs), per_seed)
        if on_done is not None:
            on_done(sweep)
    return sweep
