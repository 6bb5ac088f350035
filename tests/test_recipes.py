"""Recipes (`fedmtl.recipe`): algorithms the engine builds inside its compiled program, so the
initial weights follow the run's seed and tuned hyperparameters are traced inputs; a grid of
them × seeds runs as one program (`Engine.sweep`, `fedmtl.sweep_grid`)."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx
from tiny import BASE, CLASSES, DIM, assert_close, assert_equal, data, host_copy

from fedmtl import algorithms
from fedmtl.algorithms import AlgorithmError, Recipe, recipe
from fedmtl.engine import Engine
from fedmtl.models import MLP
from fedmtl.tuning import grid_points, sweep_grid

FED = BASE._replace(rounds=2)


def _module(key):
    return MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(key))


def _recipe(name: str, tune=("local_optimizer",), **kwargs) -> Recipe:
    return recipe(algorithms.ALGORITHMS[name], _module, tune=list(tune),
                  **{"local_optimizer": 0.1, **kwargs})


def _trained(engine: Engine, state):
    state, history = engine.run(state)
    return host_copy(state), history, engine.evaluate(state)


# A plain SGD rate, a proximal weight, SCAFFOLD's rate inside its control variates, and a
# learned relationship (MOCHA's SVD) with its coupling weight.
CASES = [("fedavg", ("local_optimizer",), 0.05), ("mocha", ("lam",), 0.5),
         pytest.param("fedprox", ("mu",), 0.3, marks=pytest.mark.slow),
         pytest.param("scaffold", ("local_optimizer",), 0.05, marks=pytest.mark.slow)]


@pytest.mark.parametrize(("name", "tune", "value"), CASES)
def test_a_recipe_run_equals_the_algorithm_built_with_those_values(name, tune, value):
    """Engine(recipe).init(seed, {h: v}) trains like the algorithm built with nnx.Rngs(seed)
    and h=v, to float tolerance: there v is a constant of the program, which XLA may fold
    into other multiply-adds than a traced v (1e-8 apart after two rounds at the suite's
    optimization level 0; bit for bit at the default level, tried for all 21 algorithms)."""
    tiny = data()
    (hyper,) = tune
    engine = Engine(_recipe(name, tune, **({hyper: 0.01} if hyper != "local_optimizer" else {})),
                    tiny, FED)
    got = _trained(engine, engine.init(3, {hyper: value}))
    built = algorithms.ALGORITHMS[name](_module(3), **{"local_optimizer": 0.1, hyper: value})
    alone = Engine(built, tiny, FED)
    want = _trained(alone, alone.init(3))
    assert_close(got[0].server, want[0].server)
    assert_close(got[0].nodes, want[0].nodes)
    assert_close(got[1], want[1])
    assert_close(got[2], want[2])
    assert got[0].hyper == {hyper: np.float32(value)}


def test_initial_weights_follow_the_seed():
    """Seed s starts from the weights nnx.Rngs(s) draws; an Algorithm keeps its own."""
    tiny = data()
    engine = Engine(_recipe("fedavg"), tiny, FED)
    first, second = engine.init(0), engine.init(1)
    for seed, state in ((0, first), (1, second)):
        want = nnx.state(_module(seed), nnx.Param)
        assert_equal(host_copy(state.server.params), host_copy(want))
    assert not np.array_equal(*(jax.tree.leaves(s.server.params)[1] for s in (first, second)))
    plain = Engine(algorithms.fedavg(_module(0), local_optimizer=0.1), tiny, FED)
    assert_equal(host_copy(plain.init(1).server.params), host_copy(first.server.params))


def test_a_grid_of_rates_and_seeds_is_one_program_equal_to_separate_runs():
    """Four runs (2 rates × 2 seeds) as one sweep: each equals its own run bit for bit, the
    sweep compiles once, and new rates reuse a plain run's compilation."""
    tiny = data()
    engine = Engine(_recipe("fedavg"), tiny, FED)
    seeds, rates = [0, 0, 5, 5], [0.05, 0.2, 0.05, 0.2]
    states, history = engine.sweep(seeds, hyper={"local_optimizer": rates})
    states = host_copy(states)
    assert engine._run_many._cache_size() == 1
    for i, (seed, rate) in enumerate(zip(seeds, rates, strict=True)):
        one, alone = engine.run(engine.init(seed, {"local_optimizer": rate}))
        assert_equal(host_copy(one), jax.tree.map(lambda a, i=i: a[i], states))
        assert_equal(alone, {k: v[i] for k, v in history.items()})
    assert engine._run._cache_size() == 1  # four rates and seeds, one compilation
    losses = history["train_loss"]
    assert not np.array_equal(losses[0], losses[1]) and not np.array_equal(losses[0], losses[2])


def test_sweep_grid_reports_each_setting_over_seeds():
    tiny = data()
    found = sweep_grid(_recipe("fedavg"), tiny, FED, [1, 2],
                       {"local_optimizer": [0.05, 0.2]})
    assert found.name == "fedavg" and found.seeds == (1, 2)
    assert found.points == ({"local_optimizer": 0.05}, {"local_optimizer": 0.2})
    assert [len(runs) for runs in found.results] == [2, 2]
    alone = Engine(_recipe("fedavg"), tiny, FED)
    state, _ = alone.run(alone.init(2, {"local_optimizer": 0.2}))
    assert_close(found.results[1][1].per_node, alone.evaluate(state), rtol=1e-6, atol=0)
    rows = found.summary("global", "accuracy")
    for row, runs in zip(rows, found.results, strict=True):
        means = [np.nanmean(r.per_node["global"]["accuracy"]) for r in runs]
        assert row["node_mean"]["mean"] == pytest.approx(np.mean(means))
        assert row["node_mean"]["se"] == pytest.approx(np.std(means, ddof=1) / np.sqrt(2))
    assert found.summary() == found.summary("personalized", "accuracy")  # the defaults
    with pytest.raises(KeyError, match="fedavg reports no 'shared' models; it has"):
        found.summary("shared")
    best = max(rows, key=lambda r: r["node_mean"]["mean"])
    assert found.best("global", "accuracy") == {"local_optimizer": best["local_optimizer"]}


def test_bad_recipes_and_sweeps_are_named_errors_before_training():
    tiny = data()
    with pytest.raises(AlgorithmError, match="fedala: a tuned hyperparameter \\(one of sample\\) "
                       "decides the program's structure"):
        Engine(_recipe("fedala", ("sample",), sample=0.5), tiny, FED)
    with pytest.raises(AlgorithmError, match="tune='inner_steps' needs a float value"):
        _recipe("pfedme", ("inner_steps",))  # the factory's default, an integer: a shape
    engine = Engine(_recipe("fedavg"), tiny, FED)
    with pytest.raises(AlgorithmError, match="mu is not among its traced hyperparameters "
                       "\\(local_optimizer\\)"):
        engine.init(0, {"mu": 0.1})
    with pytest.raises(AlgorithmError, match="learning rate must be a finite number > 0"):
        engine.init(0, {"local_optimizer": -0.1})  # the factory's own check, not skipped
    with pytest.raises(AlgorithmError, match="local_optimizer must be one number"):
        engine.sweep([0, 1], hyper={"local_optimizer": [[0.1, 0.2], [0.1, 0.2]]})
    with pytest.raises(AlgorithmError, match="need an engine built from a Recipe"):
        Engine(algorithms.fedavg(_module(0)), tiny, FED).init(0, {"local_optimizer": 0.1})
    with pytest.raises(ValueError, match="one value per seed \\(2\\)"):
        engine.sweep([0, 1], hyper={"local_optimizer": [0.1]})
    with pytest.raises(ValueError, match="distinct runs"):
        engine.sweep([0, 0], hyper={"local_optimizer": [0.1, 0.1]})
    with pytest.raises(AlgorithmError, match="learning rate must be a finite number > 0"):
        sweep_grid(_recipe("fedavg"), tiny, FED, [0], {"local_optimizer": [0.1, -1.0]})
    with pytest.raises(ValueError, match="local_optimizer needs distinct values"):
        grid_points({"local_optimizer": [0.1, 0.1]})


def test_a_mocha_sweep_finishes_on_two_cpu_devices():
    """jaxlib's batched SVD waits for its batch on the thread pool it runs on: a vmapped MOCHA
    sweep on 2 CPU devices deadlocked (2-core machine) until the SVD of each run went one
    after another (`relationship._thin_svd`). In a process of its own with 2 devices."""
    code = textwrap.dedent("""
        import numpy as np, fedmtl
        from flax import nnx
        data = fedmtl.synthetic(1, 1, num_nodes=8, seed=0)
        algo = fedmtl.mocha(fedmtl.MLP(60, [16], 10, rngs=nnx.Rngs(0)))
        engine = fedmtl.Engine(algo, data, fedmtl.Federation(rounds=3))
        assert engine.devices == 2
        states, history = engine.sweep([0, 1])
        assert np.isfinite(history["train_loss"]).all()
        print("done")
    """)
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr[-2000:]
