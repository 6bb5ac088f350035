"""Algorithms: FedAvg reduces to gradient descent, aggregation of equal updates is a no-op,
zero-weight nodes count for nothing, and personal state never leaves its node."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tiny import BASE, CLASSES, DIM, SIZES, assert_close  # the shared tiny problem

from fedmtl import algorithms
from fedmtl.aggregation import weighted_mean
from fedmtl.data import FederatedData
from fedmtl.engine import Engine, Federation
from fedmtl.models import MLP, LogisticRegression
from fedmtl.objectives import masked_mean_loss
from fedmtl.training import Schedule, epoch_orders, node_round, node_steps, sort_within_nodes

# The tiny problem of tests/test_engine.py (same shapes, so its compiled rounds are reused).


def _xy(sizes, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, DIM)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, CLASSES, n).astype(np.int32) for n in sizes]
    return xs, ys


def _algorithm(name: str, lr: float = 0.1) -> algorithms.Algorithm:
    return algorithms.ALGORITHMS[name](MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0)),
                                       local_optimizer=lr)


def _paths(tree) -> set[str]:
    return {jax.tree_util.keystr(p, simple=True, separator="/")
            for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _mean_loss(algo, shared, x, y):
    """The mean cross-entropy of the whole batch, written directly."""
    logits = algo.model.apply(shared, algo.model.personal, x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _gradient_descent(algo, x, y, lr, steps):
    params = algo.model.shared
    for _ in range(steps):
        grads = jax.grad(_mean_loss, argnums=1)(algo, params, jnp.asarray(x), jnp.asarray(y))
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return params


# ----- FedAvg -----


def test_fedavg_one_node_full_batch_is_one_gradient_step():
    xs, ys = _xy([13])
    data = FederatedData.from_nodes(xs, ys, num_classes=CLASSES)
    n = int(data.train.counts[0])
    lr = 0.3
    algo = _algorithm("fedavg", lr=lr)
    engine = Engine(algo, data, Federation(rounds=1, batch_size=16, local_epochs=1))
    state, history = engine.run(engine.init())
    x, y = data.train.node(0)
    expected = _gradient_descent(algo, x, y, lr, steps=1)
    assert_close(state.server.params, expected)
    np.testing.assert_allclose(history["train_loss"],
                               [_mean_loss(algo, algo.model.shared, x, y)], rtol=1e-5)
    assert n == len(x) and history["participants"].tolist() == [1]


def test_identical_nodes_aggregate_to_each_nodes_own_update():
    """Four nodes with the same data, two full-batch epochs: every node computes the same
    update, so the weighted average must be that update (aggregation is a no-op)."""
    xs, ys = _xy([9])
    train_x, train_y = [xs[0]] * 4, [ys[0]] * 4
    data = FederatedData.from_splits(train_x, train_y, train_x, train_y, num_classes=CLASSES)
    lr = 0.2
    algo = _algorithm("fedavg", lr=lr)
    engine = Engine(algo, data, Federation(rounds=1, batch_size=12, local_epochs=2))
    state, _ = engine.run(engine.init())
    assert_close(state.server.params, _gradient_descent(algo, xs[0], ys[0], lr, steps=2))


def test_weighted_mean_by_hand_and_zero_weights_ignored():
    rng = np.random.default_rng(0)
    uploads = {"a": rng.normal(size=(4, 3)).astype(np.float32),
               "b": rng.normal(size=(4, 2, 2)).astype(np.float32)}
    w = np.array([1.0, 3.0, 0.0, 2.0], np.float32)
    garbage = {"a": uploads["a"].copy(), "b": uploads["b"].copy()}
    garbage["a"][2], garbage["b"][2] = 1e30, -7e29  # finite junk on the zero-weight node
    got = weighted_mean(jax.tree.map(jnp.asarray, garbage), jnp.asarray(w))
    for key, u in uploads.items():
        want = np.tensordot(w.astype(np.float64), u.astype(np.float64), axes=1) / w.sum()
        np.testing.assert_allclose(got[key], want, rtol=1e-6, atol=1e-7)
    # all weights zero: nothing moves
    zero = weighted_mean(jax.tree.map(jnp.asarray, uploads), jnp.zeros(4, jnp.float32))
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(zero))


def test_zero_weight_node_does_not_move_the_server():
    algo = _algorithm("fedavg")
    server = algo.init(jax.random.key(0), 1)
    rng = np.random.default_rng(1)
    deltas = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=(3,) + p.shape), jnp.float32), server.params
    )
    only = jax.tree.map(lambda d: d[:1], deltas)
    a = algo.server_update(server, deltas, jnp.array([5.0, 0.0, 0.0]), jnp.arange(3))
    b = algo.server_update(server, only, jnp.array([5.0]), jnp.arange(1))
    assert_close(a.params, b.params, rtol=1e-6, atol=1e-7)
    assert_close(a.params, jax.tree.map(lambda p, d: p + d[0], server.params, deltas))


def test_finetune_equals_manual_minibatch_steps():
    """k fine-tuning steps cycle through one shuffled pass: batches of B in the node's order,
    the last one partial, then around again."""
    algo = _algorithm("fedavg", lr=0.1)
    xs, ys = _xy([7], seed=3)
    n, b, steps = 7, 3, 4  # batches of 3, 3, 1 real rows, then the first batch again
    x, y = jnp.asarray(xs[0]), jnp.asarray(ys[0])
    key = jax.random.key(11)
    schedule = Schedule("classification", batch_size=b, epochs=1)
    tune = algo.finetune
    got, _, seen = node_steps(tune.step, tune.init((algo.model.shared, algo.model.personal)),
                              x, y, key, schedule, steps)
    assert int(seen) == 3 + 3 + 1 + 3
    order = np.asarray(epoch_orders(jax.random.split(key)[0][None], jnp.zeros(n, jnp.int32),
                                    jnp.arange(n), 1)[0])
    assert sorted(order.tolist()) == list(range(n)) and order.tolist() != list(range(n))
    params = algo.model.shared
    for t in range(steps):
        idx = order[(t % 3) * b:(t % 3) * b + b]

        def loss(p, idx=idx):
            out = algo.model.apply(p, algo.model.personal, x[idx])
            return masked_mean_loss("classification", out, y[idx], jnp.ones(len(idx), bool))

        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params))
    assert_close(got.params[0], params)


def test_epoch_orders_depend_only_on_the_nodes_key_and_size():
    """A node's order is the same alone or beside others, wherever its rows sit."""
    keys = jax.random.split(jax.random.key(5), 3)
    counts = np.array([4, 9, 6])
    segment = jnp.asarray(np.repeat(np.arange(3), counts), jnp.int32)
    local = jnp.asarray(np.concatenate([np.arange(c) for c in counts]), jnp.int32)
    together = np.asarray(epoch_orders(keys, segment, local, 2))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for k, c in enumerate(counts):
        alone = np.asarray(epoch_orders(keys[k][None], jnp.zeros(c, jnp.int32), jnp.arange(c), 2))
        np.testing.assert_array_equal(together[:, offsets[k]:offsets[k + 1]] - offsets[k], alone)
        assert all(sorted(o.tolist()) == list(range(c)) for o in alone)
    assert not np.array_equal(together[0], together[1])  # each epoch reshuffles


@pytest.mark.parametrize("name", ["fedavg", "fedper", "local"])
def test_padded_node_round_equals_exact_rows(name):
    """Rows past n are padding: the round equals the one on the node's own rows exactly."""
    algo = _algorithm(name)
    xs, ys = _xy([7], seed=4)
    schedule = Schedule("classification", batch_size=3, epochs=2)
    broadcast = algo.broadcast(algo.init(jax.random.key(0), 1))
    node = algo.init_node(jax.random.key(1))
    key = jax.random.key(2)
    exact = node_round(algo, broadcast, node, jnp.asarray(xs[0]), jnp.asarray(ys[0]), key,
                       schedule)
    x = jnp.asarray(np.concatenate([xs[0], np.full((5, DIM), 9.0, np.float32)]))
    y = jnp.asarray(np.concatenate([ys[0], np.zeros(5, np.int32)]))
    padded = jax.jit(lambda n: node_round(algo, broadcast, node, x, y, key, schedule, n=n))
    got = padded(jnp.int32(7))
    for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(got[2][1]) == 2 * 7  # two epochs of the 7 real rows


def test_sort_within_nodes_equals_the_device_sort():
    """The CPU path (NumPy via pure_callback) is the same stable sort as lax.sort, ties too."""
    rng = np.random.default_rng(6)
    size = 3000  # above the size from which a CPU sorts on the host
    segment = jnp.asarray(np.sort(rng.integers(0, 7, size)), jnp.int32)
    bits = jnp.asarray(rng.integers(0, 40, size), jnp.uint32)  # many ties
    rows = jnp.arange(size, dtype=jnp.int32)
    want = jax.lax.sort((segment, bits, rows), num_keys=2, is_stable=True)[2]
    np.testing.assert_array_equal(sort_within_nodes(segment, bits), want)
    np.testing.assert_array_equal(jax.jit(sort_within_nodes)(segment, bits), want)
    batched = jax.vmap(sort_within_nodes, in_axes=(None, 0))(segment, jnp.stack([bits, bits]))
    np.testing.assert_array_equal(batched, jnp.stack([want, want]))


# ----- personal state stays personal -----


def _one_node(algo, state_of_node):
    xs, ys = _xy([6])
    return jax.eval_shape(
        lambda *args: node_round(algo, *args, Schedule(batch_size=4)),
        algo.broadcast(algo.init(jax.random.key(0), 1)), state_of_node, jnp.asarray(xs[0]),
        jnp.asarray(ys[0]), jax.random.key(1),
    )


def test_upload_contents():
    fedavg, fedper, local = (_algorithm(n) for n in ("fedavg", "fedper", "local"))
    upload, _, _ = _one_node(fedavg, ())
    assert _paths(upload) == _paths(fedavg.model.shared)
    assert any(p.startswith("head/") for p in _paths(upload))
    upload, head, _ = _one_node(fedper, fedper.model.personal)
    assert _paths(upload) == _paths(fedper.model.shared)
    assert _paths(upload) and not any("head" in p for p in _paths(upload))
    assert _paths(head) == _paths(fedper.model.personal) == {
        "head/kernel/value", "head/bias/value"}
    assert not any("head" in p for p in _paths(fedper.init(jax.random.key(0), 1)))
    upload, params, _ = _one_node(local, local.model.personal)
    assert jax.tree.leaves(upload) == [] and jax.tree.leaves(local.init(jax.random.key(0), 1)) == []
    assert jax.tree.leaves(local.broadcast(())) == []


def _data(change_node: int | None = None) -> FederatedData:
    """The tiny problem; with `change_node`, that node's training rows are redrawn (same
    counts, so the engine's shapes are unchanged)."""
    xs, ys = _xy(SIZES)
    data = FederatedData.from_nodes(xs, ys, num_classes=CLASSES)
    if change_node is None:
        return data
    rng = np.random.default_rng(99)
    train = [data.train.node(k) for k in range(data.num_nodes)]
    x, y = train[change_node]
    train[change_node] = (rng.normal(size=x.shape).astype(np.float32) * 3,
                          rng.integers(0, CLASSES, len(y)).astype(np.int32))
    test = [data.test.node(k) for k in range(data.num_nodes)]
    return FederatedData.from_splits(*zip(*train, strict=True), *zip(*test, strict=True),
                                     num_classes=CLASSES)


def _one_round(name, data):
    engine = Engine(_algorithm(name), data, BASE)
    state, _ = engine.run(engine.init(), 1)
    return jax.tree.map(np.asarray, state)


@pytest.mark.parametrize("name", ["local", "fedper"])
def test_changing_one_nodes_data_leaves_other_nodes_personal_state(name):
    j = 2
    a, b = _one_round(name, _data()), _one_round(name, _data(change_node=j))
    for leaf_a, leaf_b in zip(jax.tree.leaves(a.nodes), jax.tree.leaves(b.nodes), strict=True):
        others = [k for k in range(len(SIZES)) if k != j]
        np.testing.assert_array_equal(leaf_a[others], leaf_b[others])  # bit for bit
        assert not np.allclose(leaf_a[j], leaf_b[j])
    server_a, server_b = jax.tree.leaves(a.server), jax.tree.leaves(b.server)
    if name == "local":  # nothing is exchanged: the server holds nothing
        assert server_a == [] and server_b == []
    else:  # the body is shared: node j's data reaches the server through its body delta
        assert not any("head" in p for p in _paths(a.server))
        assert any(not np.allclose(x, y) for x, y in zip(server_a, server_b, strict=True))


# ----- factories reject what would silently train the wrong thing -----


_BAD_RATES = [-0.1, 0, 0.0, float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("rate", _BAD_RATES, ids=repr)
@pytest.mark.parametrize(
    "name, argument",
    [("fedavg", "local_optimizer"), ("fedavg", "server_optimizer"),
     ("fedper", "local_optimizer"), ("fedper", "server_optimizer"), ("local", "local_optimizer")],
)
def test_factories_reject_bad_learning_rates(name, argument, rate):
    """A negative rate would ascend the loss; zero, NaN and inf train nothing or garbage."""
    module = MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0))
    match = rf"^{name}: {argument} learning rate must be a finite number > 0, got {rate}$"
    with pytest.raises(algorithms.AlgorithmError, match=match):
        algorithms.ALGORITHMS[name](module, **{argument: rate})


@pytest.mark.parametrize("bad", [True, "0.1", None, optax.constant_schedule(0.1)],
                         ids=["bool", "str", "None", "schedule"])
def test_factories_reject_optimizers_that_are_neither_rate_nor_transformation(bad):
    module = MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0))
    with pytest.raises(algorithms.AlgorithmError,
                       match=r"^fedavg: server_optimizer must be a learning rate .* optax "
                             r"GradientTransformation, got "):
        algorithms.fedavg(module, server_optimizer=bad)


@pytest.mark.parametrize("good", [0.1, 1, np.float32(0.5), optax.adam(1e-3)],
                         ids=["float", "int", "np.float32", "adam"])
def test_factories_accept_positive_rates_and_transformations(good):
    module = MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0))
    algo = algorithms.fedavg(module, local_optimizer=good, server_optimizer=good)
    server = algo.init(jax.random.key(0), 1)
    assert jax.tree.structure(server.params) == jax.tree.structure(algo.model.shared)


def test_fedper_with_nothing_shared_is_an_error():
    """LogisticRegression's only layer is its head: FedPer would be local training."""
    module = LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0))
    with pytest.raises(algorithms.AlgorithmError,
                       match=r"^fedper: personal='head' matches every parameter of "
                             r"LogisticRegression, so nothing is shared and fedper would be "
                             r"local training; use a model with a body \(e\.g\. MLP\)"):
        algorithms.fedper(module)
    mlp = MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0))
    with pytest.raises(algorithms.AlgorithmError, match="personal=True matches every parameter"):
        algorithms.fedper(mlp, personal=True)
    with pytest.raises(algorithms.AlgorithmError,
                       match="personal='nope' matches no parameter of MLP"):
        algorithms.fedper(mlp, personal="nope")
    algorithms.fedavg(module)  # FedAvg shares all of it: fine
    algorithms.local(module)
