"""IFCA: one cluster is FedAvg; a node takes the cluster model with the lowest
loss on its rows and trains it as FedAvg would; the server averages each cluster over its own
members (weighted by example counts) and leaves the others alone; the cluster models start
as permutations of the module's parameters; planted groups are recovered. (The registry
harness of test_harness.py runs IFCA too.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tiny import (  # the shared tiny problem
    CLASSES,
    DIM,
    SIZES,
    assert_close,
    assert_equal,
    data,
    mlp,
)

from fedmtl import algorithms
from fedmtl.algorithms.clustered import cluster_inits, ifca
from fedmtl.engine import Engine, Federation
from fedmtl.models import LogisticRegression
from fedmtl.training import Schedule, node_round

# The tiny problem of tests/test_engine.py.
FED = Federation(rounds=2, batch_size=4, finetune_steps=0, seed=0, rounds_per_sync=1)
LR = 0.1


def _trained(algo, fed=FED):
    engine = Engine(algo, data(), fed)
    state, _ = engine.run(engine.init())
    return jax.device_get(state)


def _cluster(tree, j):
    return jax.tree.map(lambda leaf: leaf[j], tree)


# ----- limit case -----


def test_one_cluster_is_fedavg():
    """k = 1: the prologue only sums losses and the training epochs keep their shuffles and
    keys, so two rounds give FedAvg's server model (bit for bit in a node's own round, see
    below; through the engine to float32 rounding, as XLA fuses the two rounds' programs
    differently); every node is in cluster 0."""
    one = _trained(ifca(mlp(), clusters=1, local_optimizer=LR))
    fedavg = _trained(algorithms.fedavg(mlp(), local_optimizer=LR))
    assert_close(_cluster(one.server.params, 0), fedavg.server.params, atol=1e-7)
    np.testing.assert_array_equal(one.server.cluster, np.zeros(len(SIZES)))
    np.testing.assert_array_equal(one.nodes, np.zeros(len(SIZES)))


# ----- a node's round -----


def _losses(algo, models, x, y):
    """Each cluster model's cross-entropy summed over the rows, in float64."""
    out = []
    for j in range(jax.tree.leaves(models)[0].shape[0]):
        logits = np.asarray(algo.model.apply(_cluster(models, j), algo.model.personal, x),
                            np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        out.append(np.sum(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_node_trains_the_cluster_with_the_lowest_loss_as_fedavg_would(seed):
    """Three cluster models, one node of 11 rows: the node picks the argmin of the summed
    losses (NumPy), and its upload is FedAvg's round started from that model."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(11, DIM)), jnp.float32)
    y = jnp.asarray(rng.integers(0, CLASSES, 11), jnp.int32)
    algo = ifca(mlp(), clusters=3, local_optimizer=LR)
    models = algo.broadcast(algo.init(jax.random.key(seed), 1))
    schedule, key = Schedule("classification", batch_size=4, epochs=2), jax.random.key(7)
    round_ = jax.jit(lambda b, node: node_round(algo, b, node, x, y, key, schedule))
    (delta, j), cluster, (loss, seen) = round_(models, jnp.int32(-1))
    want = int(np.argmin(_losses(algo, models, x, y)))
    assert int(j) == int(cluster) == want
    avg = algorithms.fedavg(mlp(), local_optimizer=LR)
    plain, _, _ = jax.jit(lambda g: node_round(avg, g, (), x, y, key, schedule))(
        _cluster(models, want))
    assert_equal(delta, plain)
    assert float(seen) == 3 * 11  # a prologue pass and two training epochs


def test_a_node_chooses_again_every_round():
    """The choice is made from the models received, not the cluster remembered."""
    algo = ifca(mlp(), clusters=2, local_optimizer=LR)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, DIM)), jnp.float32)
    y = jnp.asarray(rng.integers(0, CLASSES, 6), jnp.int32)
    models = algo.broadcast(algo.init(jax.random.key(0), 1))
    schedule = Schedule("classification", batch_size=4, epochs=1)
    round_ = jax.jit(lambda b, node: node_round(algo, b, node, x, y, jax.random.key(1),
                                                schedule)[1])
    first = int(round_(models, jnp.int32(-1)))
    swapped = jax.tree.map(lambda m: m[::-1], models)
    assert int(round_(swapped, jnp.int32(first))) == 1 - first


# ----- the server -----


@pytest.mark.parametrize("server_optimizer", [1.0, optax.sgd(0.5, momentum=0.9)],
                         ids=["sgd", "momentum"])
def test_server_averages_each_cluster_over_its_members(server_optimizer):
    """Cluster 0: nodes of weights 1 and 3; cluster 1: a node of weight 2 and a zero-weight
    one; cluster 2: nobody, so it stays (with its momentum too). Weighted means by hand."""
    algo = ifca(LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0)), clusters=3,
                server_optimizer=server_optimizer)
    server = algo.init(jax.random.key(0), 6)
    rng = np.random.default_rng(1)
    deltas = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=(4, *p.shape[1:])), jnp.float32), server.params)
    chosen = jnp.asarray([0, 1, 0, 1], jnp.int32)
    weights = jnp.asarray([1.0, 2.0, 3.0, 0.0])
    new = algo.server_update(server, (deltas, chosen), weights, jnp.asarray([4, 0, 2, 5]))
    np.testing.assert_array_equal(new.cluster, [1, -1, 0, -1, 0, -1])
    for old, d, got in zip(jax.tree.leaves(server.params), jax.tree.leaves(deltas),
                           jax.tree.leaves(new.params), strict=True):
        old, d, got = (np.asarray(a, np.float64) for a in (old, d, got))
        np.testing.assert_array_equal(got[2], old[2])
        assert not np.allclose(got[0], old[0]) and not np.allclose(got[1], old[1])
        if server_optimizer == 1.0:
            np.testing.assert_allclose(got[0], old[0] + (d[0] + 3 * d[2]) / 4, rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(got[1], old[1] + d[1], rtol=1e-5, atol=1e-6)
    assert_equal(_cluster(new.opt_state, 2), _cluster(server.opt_state, 2))
    nobody = algo.server_update(server, (deltas, chosen), jnp.zeros(4), jnp.arange(4))
    assert_equal(nobody, server)


def test_cluster_models_start_as_permutations_of_the_module():
    module = mlp()
    params = algorithms.fedavg(module).model.shared
    key = jax.random.key(0)
    inits = cluster_inits(params, key, 3)
    assert_equal(_cluster(inits, 0), params)
    for j in (1, 2):
        for got, want in zip(jax.tree.leaves(_cluster(inits, j)), jax.tree.leaves(params),
                             strict=True):
            np.testing.assert_array_equal(np.sort(np.ravel(got)), np.sort(np.ravel(want)))
        kernels = [leaf for leaf in jax.tree.leaves(_cluster(inits, j)) if leaf.ndim == 2]
        assert all(not np.array_equal(k, w) for k, w in zip(
            kernels, [leaf for leaf in jax.tree.leaves(params) if leaf.ndim == 2], strict=True))
    other = cluster_inits(params, jax.random.key(1), 3)
    assert not np.array_equal(jax.tree.leaves(other)[1], jax.tree.leaves(inits)[1])
    algo = ifca(module, clusters=3)
    assert_equal(algo.init(key, 2).params, inits)


def test_personalized_model_is_the_nodes_cluster():
    algo = ifca(mlp(), clusters=2)
    models = algo.broadcast(algo.init(jax.random.key(0), 1))
    for cluster, j in ((1, 1), (0, 0), (-1, 0)):  # a node that never trained: cluster 0
        (params, _), = algo.models(models, jnp.int32(cluster)).values()
        assert_equal(params, _cluster(models, j))


@pytest.mark.parametrize("clusters", [0, -1, 1.5, True, "2"])
def test_bad_cluster_counts_are_named(clusters):
    with pytest.raises(algorithms.AlgorithmError, match="ifca: clusters must be an integer"):
        ifca(mlp(), clusters=clusters)


def test_bad_ifca_optimizers_are_named():
    with pytest.raises(algorithms.AlgorithmError, match="^ifca: local_optimizer learning rate"):
        ifca(mlp(), local_optimizer=-1.0)
    with pytest.raises(algorithms.AlgorithmError, match="^ifca: server_optimizer must be"):
        ifca(mlp(), server_optimizer="adam")


# ----- what IFCA is for: planted groups -----


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_groups_are_recovered(seed):
    """16 linear binary tasks in 2 planted groups: with k = 2, IFCA puts the groups in
    separate clusters and its per-node accuracy beats one FedAvg model's."""
    from fedmtl.synthetic import planted_groups

    data, groups = planted_groups(16, 2, dim=10, seed=seed)
    linear = functools.partial(LogisticRegression, data.feature_shape[0], 2)
    fed = Federation(rounds=20, batch_size=10, seed=seed, rounds_per_sync=20)
    accuracy = {}
    for algo in (ifca(linear(rngs=nnx.Rngs(0)), clusters=2, local_optimizer=0.1),
                 algorithms.fedavg(linear(rngs=nnx.Rngs(0)), local_optimizer=0.1)):
        engine = Engine(algo, data, fed)
        state, _ = engine.run(engine.init())
        accuracy[algo.name] = np.mean(next(iter(engine.evaluate(state).values()))["accuracy"])
        if algo.name == "ifca":
            found = np.asarray(state.server.cluster)
            assert np.array_equal(found, groups) or np.array_equal(found, 1 - groups), (
                found, groups)
            np.testing.assert_array_equal(np.asarray(state.nodes), found)
    assert accuracy["ifca"] > 0.85 and accuracy["ifca"] > accuracy["fedavg"] + 0.1, accuracy
