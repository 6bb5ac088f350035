"""Multi-task algorithms: MOCHA, graph-regularized MTL and Ditto against their limit cases,
the coupling gradient against the objective's, stale rows under partial participation, and
named errors for bad relationships. (The engine harness of test_engine.py runs them too.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree
from tiny import CLASSES, DIM, SIZES, assert_equal, data, mlp  # the shared tiny problem

from fedmtl import algorithms, relationship
from fedmtl.algorithms import for_node
from fedmtl.engine import Engine, Federation
from fedmtl.models import LogisticRegression
from fedmtl.training import Batch

FED = Federation(rounds=2, batch_size=4, finetune_steps=0, seed=0, rounds_per_sync=1)
LR = 0.1  # with FED and data(): the programs test_engine.py compiles, so the cache serves


def _trained(algo, fed=FED):
    engine = Engine(algo, data(), fed)
    state, _ = engine.run(engine.init())
    return jax.device_get(state)


# ----- limit cases -----


def test_mocha_without_coupling_is_local_training():
    """λ₁ = λ₂ = 0 and the whole model personal: every node trains alone, bit for bit."""
    mocha = _trained(algorithms.mocha(mlp(), personal=True, lam=0.0, local_optimizer=LR))
    local = _trained(algorithms.local(mlp(), local_optimizer=LR))
    assert_equal(mocha.nodes, local.nodes)


def test_mocha_without_coupling_on_heads_is_fedper():
    mocha = _trained(algorithms.mocha(mlp(), personal="head", lam=0.0, local_optimizer=LR))
    fedper = _trained(algorithms.fedper(mlp(), local_optimizer=LR))
    assert_equal(mocha.nodes, fedper.nodes)
    assert_equal(mocha.server.body, fedper.server)


def test_ditto_without_proximal_term_is_local_and_fedavg():
    """λ = 0: the personal models are local training's, the global model is FedAvg's."""
    ditto = _trained(algorithms.ditto(mlp(), lam=0.0, local_optimizer=LR))
    local = _trained(algorithms.local(mlp(), local_optimizer=LR))
    fedavg = _trained(algorithms.fedavg(mlp(), local_optimizer=LR))
    assert_equal(ditto.nodes, local.nodes)
    assert_equal(ditto.server, fedavg.server)


@pytest.mark.slow
def test_ditto_with_a_strong_pull_keeps_personal_models_near_the_global_one():
    """One round: each v_t starts at, and is pulled toward, the initial global model w^0."""
    one = FED._replace(rounds=1, local_epochs=4)  # 4 to 12 steps per node
    algo = algorithms.ditto(mlp(), lam=9.0, personal_optimizer=0.1)
    w0 = ravel_pytree(algo.model.shared)[0]

    def spread(state):
        v = jax.vmap(lambda node: ravel_pytree(node)[0])(state.nodes)
        return float(jnp.mean(jnp.linalg.norm(v - w0[None], axis=1)))

    near = spread(_trained(algo, one))
    free = spread(_trained(algorithms.ditto(mlp(), lam=0.0, personal_optimizer=0.1), one))
    assert 0 < near < 0.5 * free


# ----- the coupling gradient is the objective's -----


@pytest.mark.parametrize("kind", ["learned", "graph", "fixed"])
def test_coupling_gradient_equals_the_objectives(kind):
    """At the server's copy, node t's penalty gradient is λ₁ (Ω W)_t + λ₂ w_t: the gradient of
    (λ₁/2) tr(Wᵀ Ω W) + (λ₂/2)‖W‖² with respect to row t."""
    n, lam, lam2 = len(SIZES), 0.7, 0.2
    rng = np.random.default_rng(1)
    if kind == "graph":
        adjacency = np.triu(rng.uniform(0, 1, (n, n)), 1)
        algo = algorithms.graph_mtl(mlp(), adjacency + adjacency.T, lam=lam, lam2=lam2)
    elif kind == "fixed":
        a = rng.normal(size=(n, n))
        algo = algorithms.mocha(mlp(), lam=lam, lam2=lam2, omega=a @ a.T / n + np.eye(n))
    else:
        algo = algorithms.mocha(mlp(), lam=lam, lam2=lam2)
    server = algo.init(jax.random.key(0), n)
    d = server.W.shape[1]
    W = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    omega = relationship.learned(W, 1e-3) if kind == "learned" else server.omega
    server = server._replace(W=W, omega=omega)
    want = lam * (relationship.dense(omega) @ W) + lam2 * W
    broadcast = algo.broadcast(server)
    _, unravel = ravel_pytree(algo.model.personal)
    for t in range(n):
        body, anchor = for_node(broadcast, t)
        state = algo.start((body, anchor), unravel(W[t]))
        # the penalty alone: the step's data term is zero on an empty (all-masked) batch
        batch = Batch(jnp.zeros((2, DIM)), jnp.zeros(2, jnp.int32),
                                      jnp.zeros(2, bool))
        new, _ = algo.step(state, batch, jax.random.key(0), "classification")
        step = (ravel_pytree(state.params[1])[0] - ravel_pytree(new.params[1])[0]) / 0.05
        np.testing.assert_allclose(step, want[t], rtol=2e-4, atol=2e-5)


# ----- partial participation -----


def test_partial_participation_keeps_the_stale_rows_of_absent_nodes():
    algo = algorithms.mocha(mlp(), lam=0.5)
    engine = Engine(algo, data(), FED._replace(cohort_size=2))
    start = jax.device_get(engine.init())
    state, _ = engine.run(engine.init(), 1)
    state = jax.device_get(state)
    rows = jax.vmap(lambda node: ravel_pytree(node)[0])(state.nodes)
    moved = np.flatnonzero(np.any(np.asarray(rows) != np.asarray(start.server.W), axis=1))
    assert len(moved) == 2  # the cohort trained and uploaded ...
    np.testing.assert_array_equal(state.server.W[moved], rows[moved])
    absent = np.setdiff1d(np.arange(len(SIZES)), moved)  # ... the others kept their rows
    np.testing.assert_array_equal(state.server.W[absent], start.server.W[absent])


# ----- bad arguments -----


@pytest.mark.parametrize("kwargs, match", [
    ({"lam": -0.1}, "lam must be"),
    ({"lam2": -1.0}, "lam2 must be"),
    ({"lam": float("nan")}, "lam must be"),
    ({"lam": "0.1"}, "lam must be a finite number >= 0, got '0.1'"),
    ({"eps": 0.0}, "eps must be"),
    ({"omega_every": 0}, "omega_every"),
    ({"omega": "clusters"}, "omega must be"),
    ({"personal": "nope"}, "matches no parameter"),
    ({"local_optimizer": -1.0}, "learning rate"),
])
def test_bad_mocha_arguments_are_named(kwargs, match):
    with pytest.raises(algorithms.AlgorithmError, match=match):
        algorithms.mocha(mlp(), **kwargs)


@pytest.mark.parametrize("omega, match", [
    (np.ones((3, 4)), "square"),
    (np.array([[1.0, 0.5], [0.0, 1.0]]), "symmetric"),
    (np.array([[1.0, 2.0], [2.0, 1.0]]), "PSD|positive semi"),
])
def test_a_bad_fixed_relationship_is_named(omega, match):
    with pytest.raises(relationship.RelationshipError, match=match):
        algorithms.mocha(mlp(), omega=omega)


def test_a_fixed_relationship_of_the_wrong_size_is_named_before_training():
    algo = algorithms.mocha(mlp(), omega=np.eye(3))
    with pytest.raises(relationship.RelationshipError, match="3 x 3 .* 5 nodes"):
        Engine(algo, data(), FED).init()


def test_ditto_rejects_a_negative_pull():
    with pytest.raises(algorithms.AlgorithmError, match="lam"):
        algorithms.ditto(mlp(), lam=-1.0)


def test_mocha_on_a_linear_model_couples_every_parameter():
    """The paper's setting: linear models, the whole model personal, nothing shared."""
    algo = algorithms.mocha(LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0)), personal=True)
    state = _trained(algo)
    assert jax.tree.leaves(state.server.body.params) == []
    assert state.server.W.shape == (len(SIZES), DIM * CLASSES + CLASSES)


# ----- what MTL is for: planted groups -----


def _adjusted_rand_index(a, b) -> float:
    """ARI of two labelings (Hubert & Arabie 1985), from the contingency table."""
    pairs = lambda counts: float(np.sum(counts * (counts - 1) / 2))
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia, ib), 1)
    both, ra, rb, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(
        np.array([len(a)]))
    expected = ra * rb / total
    return (both - expected) / (0.5 * (ra + rb) - expected)


def test_adjusted_rand_index_by_hand():
    assert _adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert _adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


@pytest.mark.slow
def test_learned_sigma_recovers_planted_groups_and_mtl_beats_local_and_global():
    """40 linear binary tasks in 4 planted groups, ~22 training examples each: MOCHA's
    learned Σ clusters into the groups (ARI >= 0.9) and its per-node accuracy beats both
    each node's local model and the one global model."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    import fedmtl
    from fedmtl.synthetic import planted_groups

    data, groups = planted_groups(40, 4, seed=0)
    linear = lambda: LogisticRegression(data.feature_shape[0], 2, rngs=nnx.Rngs(0))
    fed = Federation(rounds=60, batch_size=10, seed=0, rounds_per_sync=20)
    result = fedmtl.compare([algorithms.local(linear(), local_optimizer=0.1),
                             algorithms.fedavg(linear(), local_optimizer=0.1),
                             algorithms.mocha(linear(), personal=True, lam=1.0,
                                              local_optimizer=0.1)], data, fed)
    accuracy = {r.name: np.mean(next(iter(r.per_node.values()))["accuracy"])
                for r in result.results}
    assert accuracy["mocha"] > accuracy["local"] + 0.05
    assert accuracy["mocha"] > accuracy["fedavg"] + 0.1
    sigma = result.result("mocha").extras["sigma"]
    scale = np.sqrt(np.diag(sigma))
    distance = np.clip(1 - sigma / scale[:, None] / scale[None], 0, None)
    np.fill_diagonal(distance, 0)
    found = fcluster(linkage(squareform(distance, checks=False), "average"), 4, "maxclust")
    assert _adjusted_rand_index(found, groups) >= 0.9


def test_lane_count_does_not_change_mocha():
    """Per-node messages are gathered for whichever node a lane picks up: one lane running the
    nodes one after another gives what five side by side give."""
    algo = algorithms.mocha(mlp(), lam=0.5, local_optimizer=LR)
    one, five = (_trained(algo, FED._replace(lanes=lanes)) for lanes in (1, 5))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(five), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_empty_nodes_change_nothing_for_mocha():
    """Nodes without data (e.g. padding the node axis) take no step and, never reporting,
    stay out of the learned Σ: the real nodes train as they would without them."""
    algo = algorithms.mocha(mlp(), lam=0.5, local_optimizer=LR)
    plain = _trained(algo)
    engine = Engine(algo, data(), FED, empty_nodes=3)
    padded, _ = engine.run(engine.init())
    padded = jax.device_get(padded)
    n = len(SIZES)
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                    atol=1e-6)
    for a, b in zip(jax.tree.leaves(plain.nodes), jax.tree.leaves(padded.nodes), strict=True):
        close(a, b[:n])
    close(plain.server.W, padded.server.W[:n])
    assert padded.server.reported.tolist() == [True] * n + [False] * 3
    close(relationship.dense(plain.server.omega),
          relationship.dense(padded.server.omega)[:n, :n])


def test_compare_gives_each_algorithms_trained_node_models():
    import fedmtl

    result = fedmtl.compare([algorithms.fedper(mlp(), local_optimizer=LR)], data(), FED)
    fedper = result.result("fedper")
    shared, heads = fedper.node_models()["personalized"]  # leaves [N, ...]
    for got, want in zip(jax.tree.leaves(heads), jax.tree.leaves(fedper.state.nodes),
                         strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for got, want in zip(jax.tree.leaves(shared), jax.tree.leaves(fedper.state.server.params),
                         strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.broadcast_to(want, got.shape))
