"""Engine mechanics (the per-algorithm harness is tests/test_harness.py): the lane count,
empty nodes, jit and seeds change nothing they should not; evaluation matches a hand
computation.

Compiling is the slow part, so engines are built once per configuration (`_engine`) and the
data is tiny: 5 nodes of 5-16 examples, 4 features, 3 classes, an MLP with 8 hidden units.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import (  # the shared tiny problem
    BASE,
    CLASSES,
    DIM,
    SIZES,
    assert_close,
    assert_equal,
    data,
    host_copy,
)

from fedmtl import algorithms
from fedmtl.data import FederatedData
from fedmtl.engine import DivergenceError, Engine, Federation
from fedmtl.models import MLP
from fedmtl.training import Schedule, node_steps

# rounds_per_sync=1: every run compiles the same one-round scan, whatever the round count


def _algorithm(name: str, lr: float = 0.1) -> algorithms.Algorithm:
    return algorithms.ALGORITHMS[name](MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0)),
                                       local_optimizer=lr)


@functools.cache
def _engine(name: str, fed: Federation = BASE, empty_nodes: int = 0) -> Engine:
    """One engine per configuration for the whole module (compiling is the slow part)."""
    return Engine(_algorithm(name), data(), fed, empty_nodes=empty_nodes)


def _real_nodes(nodes, n):
    return jax.tree.map(lambda leaf: leaf[:n], nodes)


def _node_rows(split, k: int):
    """Node k's rows alone, on the device."""
    x, y = split.node(k)
    return jnp.asarray(x), jnp.asarray(y)


def _round_keys(seed: int, round_: int):
    """The engine's documented key derivation: (k_cohort, k_nodes) of a round."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), round_)
    return jax.random.split(key)


# ----- layout invariance -----


@pytest.mark.parametrize("lanes", [1, 2, 5])
def test_lane_count_does_not_change_results(lanes):
    """One lane runs the nodes one after another, five run them all side by side (on one
    device; tests/test_devices.py spreads them over several)."""
    auto = _engine("fedper")
    other = _engine("fedper", BASE._replace(lanes=lanes, devices=1))
    assert other.lanes == lanes
    assert other.makespan == {1: 11, 2: 6, 5: 3}[lanes]  # node steps 1, 1, 3, 3, 3
    a, ha = auto.run(auto.init(), 2)
    b, hb = other.run(other.init(), 2)
    assert_close(a.server, b.server)
    assert_close(a.nodes, b.nodes)
    np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-5)
    assert_close(auto.evaluate(a), other.evaluate(b))


def test_empty_nodes_change_nothing_for_real_nodes():
    plain = _engine("fedper")
    padded = _engine("fedper", BASE, empty_nodes=3)
    assert padded.num_nodes == plain.num_nodes + 3
    a, ha = plain.run(plain.init(), 2)
    b, hb = padded.run(padded.init(), 2)
    assert_close(a.server, b.server)
    assert_close(a.nodes, _real_nodes(b.nodes, plain.num_nodes))
    np.testing.assert_array_equal(ha["participants"], hb["participants"])
    np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-5)
    ea, eb = plain.evaluate(a), padded.evaluate(b)
    assert all(v.shape == (plain.num_nodes,) for m in eb.values() for v in m.values())
    assert_close(ea, eb)


PARTIAL = BASE._replace(cohort_size=3)


def test_empty_nodes_change_nothing_under_partial_participation():
    plain = _engine("fedper", PARTIAL)
    padded = _engine("fedper", PARTIAL, empty_nodes=3)
    a, ha = plain.run(plain.init(), 2)
    b, hb = padded.run(padded.init(), 2)
    np.testing.assert_array_equal(hb["participants"], [3, 3])
    np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-5)
    assert_close(a.server, b.server)
    assert_close(a.nodes, _real_nodes(b.nodes, plain.num_nodes))


# ----- partial participation -----


def _heads_changed(before, after) -> set[int]:
    changed = np.zeros(len(SIZES), bool)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        changed |= np.any(np.asarray(x) != np.asarray(y), axis=tuple(range(1, x.ndim)))
    return set(np.flatnonzero(changed).tolist())


def test_partial_participation_samples_fixed_cohorts():
    engine = _engine("fedper", PARTIAL)
    state = engine.init()
    cohorts = []
    for round_ in range(4):
        before = host_copy(state.nodes)
        state, history = engine.run(state, 1)
        np.testing.assert_array_equal(history["participants"], [3])
        changed = _heads_changed(before, host_copy(state.nodes))
        k_cohort, _ = _round_keys(PARTIAL.seed, round_)
        expected = set(np.asarray(jax.random.permutation(k_cohort, len(SIZES))[:3]).tolist())
        # exactly the sampled nodes trained; everyone else's head is bit-for-bit unchanged
        assert changed == expected
        cohorts.append(frozenset(changed))
    assert len(set(cohorts)) > 1


# ----- determinism, jit, retracing -----


def test_same_seed_identical_different_seed_different():
    engine = _engine("fedavg")
    a, ha = engine.run(engine.init(), 2)
    b, hb = engine.run(engine.init(), 2)
    assert_equal(a.server, b.server)
    assert_equal(ha, hb)
    twin = Engine(_algorithm("fedavg"), data(), BASE)  # a separate engine, same seed
    c, _ = twin.run(twin.init(), 2)
    assert_equal(a.server, c.server)
    assert_equal(engine.evaluate(a), twin.evaluate(c))
    other = Engine(_algorithm("fedavg"), data(), BASE._replace(seed=1))
    d, _ = other.run(other.init(), 2)
    for x, y in zip(jax.tree.leaves(a.server.params), jax.tree.leaves(d.server.params),
                    strict=True):
        assert not np.allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_a_run_seed_is_an_input_not_a_recompile():
    """init(seed) gives Federation(seed=...)'s run, and the compiled rounds and evaluation
    serve every seed (the seed is in the state, not a constant of the program)."""
    fed = BASE._replace(cohort_size=3)
    engine = Engine(_algorithm("fedper"), data(), fed)
    runs = {}
    for seed in (0, 1, 2):
        state, history = engine.run(engine.init(seed), 2)
        runs[seed] = (host_copy(state), history, engine.evaluate(state))
    assert engine._run._cache_size() == 1 and engine._evaluate._cache_size() == 1
    twin = Engine(_algorithm("fedper"), data(), fed._replace(seed=2))
    state, history = twin.run(twin.init(), 2)
    assert_equal(runs[2], (host_copy(state), history, twin.evaluate(state)))
    assert not np.array_equal(runs[0][1]["train_loss"], runs[1][1]["train_loss"])
    np.testing.assert_array_equal(engine.participation(2, seed=2)["ids"],
                                  twin.participation(2)["ids"])


def test_a_sweep_is_one_program_equal_to_separate_runs():
    """Three seeds vmapped in one program: each run's state and history equal its own
    `run(init(seed))` bit for bit; its evaluation (fine-tuning included) to 1 ulp, since
    XLA sums the per-node test losses in another order in the vmapped program."""
    engine = Engine(_algorithm("fedavg"), data(), BASE._replace(cohort_size=3))
    states, history = engine.sweep([0, 5, 7], 2)
    assert history["train_loss"].shape == (3, 2)
    per_seed = engine.evaluate_sweep(states)
    for i, seed in enumerate((0, 5, 7)):
        state, alone = engine.run(engine.init(seed), 2)
        assert_equal(jax.tree.map(lambda a, i=i: np.asarray(a)[i], states), host_copy(state))
        assert_equal({k: v[i] for k, v in history.items()}, alone)
        assert_close(per_seed[i], engine.evaluate(state), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="distinct"):
        engine.sweep([1, 1])


# ----- evaluation -----


def _forward(params: dict, x: np.ndarray) -> np.ndarray:
    """The MLP by hand in float64: relu(x W0 + b0) Wh + bh."""
    p = {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v, np.float64)
         for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    h = np.maximum(x @ p["body/0/kernel/value"] + p["body/0/bias/value"], 0)
    return h @ p["head/kernel/value"] + p["head/bias/value"]


def _manual_metrics(data, k, params):
    x, y = data.test.node(k)
    logits = _forward(params, x.astype(np.float64))
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return np.mean(np.argmax(logits, axis=1) == y), -np.mean(log_p[np.arange(len(y)), y])


def test_evaluation_matches_hand_computation():
    engine = _engine("fedavg")
    algo, data = engine.algorithm, engine.data
    state, _ = engine.run(engine.init(), 2)
    server = host_copy(state.server.params)
    result = engine.evaluate(state)
    assert set(result) == {"global", "personalized"}
    finetune_key = jax.random.fold_in(jax.random.key(BASE.seed), 2)
    schedule = Schedule(data.task, BASE.batch_size, BASE.local_epochs)
    tune = algo.finetune
    for k in range(data.num_nodes):
        acc, loss = _manual_metrics(data, k, server)
        np.testing.assert_allclose(result["global"]["accuracy"][k], acc, rtol=1e-6)
        np.testing.assert_allclose(result["global"]["loss"][k], loss, rtol=1e-5)
        tuned, _, _ = node_steps(
            tune.step, tune.init((server, algo.model.personal)), *_node_rows(data.train, k),
            jax.random.fold_in(finetune_key, k), schedule, BASE.finetune_steps,
        )
        shared, personal = tuned.params
        tuned = {**host_copy(shared), **host_copy(personal)}
        acc, loss = _manual_metrics(data, k, nnx.State(tuned))
        np.testing.assert_allclose(result["personalized"]["accuracy"][k], acc, rtol=1e-6)
        np.testing.assert_allclose(result["personalized"]["loss"][k], loss, rtol=1e-5)


def test_evaluation_of_local_models_per_node():
    engine = _engine("local")
    state, _ = engine.run(engine.init(), 1)
    nodes = host_copy(state.nodes)
    result = engine.evaluate(state)
    assert set(result) == {"local"}
    for k in range(engine.data.num_nodes):
        acc, loss = _manual_metrics(engine.data, k, jax.tree.map(lambda a, k=k: a[k], nodes))
        np.testing.assert_allclose(result["local"]["accuracy"][k], acc, rtol=1e-6)
        np.testing.assert_allclose(result["local"]["loss"][k], loss, rtol=1e-5)


def test_model_kinds():
    assert set(_engine("fedper").evaluate(_engine("fedper").init())) == {"personalized"}
    no_tuning = Engine(_algorithm("fedavg"), data(), BASE._replace(finetune_steps=0))
    assert set(no_tuning.evaluate(no_tuning.init())) == {"global"}
    tuned = _engine("fedavg").evaluate(_engine("fedavg").init())
    assert set(tuned) == {"global", "personalized"}
    # fine-tuning moves the model: some node's personalized loss differs from the global one
    assert not np.allclose(tuned["global"]["loss"], tuned["personalized"]["loss"])


# ----- bad configuration, divergence -----


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"cohort_size": 6}, "cohort_size"),
        ({"cohort_size": 0}, "cohort_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"rounds": -1}, "rounds"),
        ({"local_epochs": 0}, "local_epochs"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"lanes": 0}, "lanes"),
        ({"lane_step_cost": -1.0}, "lane_step_cost"),
        ({"rounds_per_sync": 0}, "rounds_per_sync"),
    ],
)
def test_bad_federation_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        Engine(_algorithm("fedavg"), data(), BASE._replace(**bad))


def test_engine_accepts_data_without_test_examples():
    """test_fraction=0 is valid data: the engine must build, train and evaluate (to NaN)."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, DIM)).astype(np.float32) for n in (4, 6)]
    ys = [rng.integers(0, CLASSES, n).astype(np.int32) for n in (4, 6)]
    data = FederatedData.from_nodes(xs, ys, num_classes=CLASSES, test_fraction=0.0)
    engine = Engine(_algorithm("fedavg"), data, BASE)
    assert int(engine.test.counts.sum()) == 0 and int(engine.train.counts.sum()) == 10
    state, history = engine.run(engine.init(), 1)
    assert history["participants"].tolist() == [2]
    result = engine.evaluate(state)
    assert all(np.isnan(v).all() for m in result.values() for v in m.values())


@pytest.mark.parametrize("name, where", [
    ("fedavg", ""), ("local", r"; \d node\(s\) hold non-finite personal state, first node '[a-e]'")
])
def test_divergence_stops_the_run_early_naming_the_round(name, where):
    """A non-finite training loss stops the run at the next host sync, not after all rounds;
    when nodes hold broken personal state, the first one is named."""
    engine = Engine(_algorithm(name, lr=1e6), data(names=["a", "b", "c", "d", "e"]),
                    BASE._replace(finetune_steps=0, rounds_per_sync=2))
    with pytest.raises(DivergenceError, match=rf"{name}: training diverged: non-finite "
                       rf"training loss in round \d+.*{where}") as error:
        engine.run(engine.init(), 40)
    losses = error.value.history["train_loss"]
    assert len(losses) < 40 and not np.isfinite(losses).all()
    assert int(error.value.state.round) == len(losses)


def test_non_finite_node_is_named():
    """Only node 3's local model is broken: the guard must name that node, not the first."""
    engine = _engine("local")
    state = engine.init()
    nodes = jax.tree.map(lambda leaf: leaf.at[3].set(jnp.nan), state.nodes)
    with pytest.raises(FloatingPointError, match=r"local: local model .*1 node\(s\).*'3'"):
        engine.evaluate(state._replace(nodes=nodes))
