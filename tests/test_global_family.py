"""The global-model family: FedProx, SCAFFOLD and the named server optimizers (FedAvgM,
FedAdagrad, FedAdam, FedYogi) against their limit cases and small NumPy references written from
the papers' equations.

Engines run the tiny problem of tests/test_engine.py (same shapes, so compiled programs are
shared); the references use softmax regression with full-batch steps, whose gradient is
written by hand: ∇_W = xᵀ(softmax(xW + b) − onehot(y)) / n, ∇_b = Σ_rows(...) / n.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tiny import (  # the shared tiny problem
    BASE,
    CLASSES,
    DIM,
    assert_close,
    assert_equal,
    data,
    host_copy,
    mlp,
)

from fedmtl.algorithms import AlgorithmError, server_optimizers
from fedmtl.algorithms.global_ import (
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedprox,
    fedyogi,
)
from fedmtl.algorithms.scaffold import ScaffoldUpload, scaffold
from fedmtl.engine import Engine
from fedmtl.models import LogisticRegression
from fedmtl.training import Schedule, node_round

FAMILY = {"fedavg": fedavg, "fedprox": fedprox, "scaffold": scaffold, "fedavgm": fedavgm,
          "fedadagrad": fedadagrad, "fedadam": fedadam, "fedyogi": fedyogi}


@functools.cache
def _engine(name: str, **kwargs) -> Engine:
    return Engine(FAMILY[name](mlp(), local_optimizer=0.1, **kwargs), data(), BASE)


# ----- softmax regression by hand -----


def _wb(params):
    """(W [F, C], b [C]) float64 of a LogisticRegression's parameters."""
    return (np.asarray(params["head"]["kernel"][...], np.float64),
            np.asarray(params["head"]["bias"][...], np.float64))


def _grad(w, b, x, y):
    z = x @ w + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return x.T @ p / len(y), p.sum(axis=0) / len(y)


def _nodes(sizes, seed=0):
    """Heterogeneous nodes: each its own feature shift and label skew."""
    rng = np.random.default_rng(seed)
    xs = [(rng.normal(size=(n, DIM)) + rng.normal(size=DIM)).astype(np.float32) for n in sizes]
    ys = [rng.choice(CLASSES, n, p=rng.dirichlet(np.ones(CLASSES))).astype(np.int32)
          for n in sizes]
    return xs, ys


def _round_fn(algo, schedule):
    return jax.jit(lambda *args: node_round(algo, *args, schedule))


# ----- FedProx -----


def test_fedprox_with_mu_zero_is_fedavg():
    a, b = _engine("fedavg"), _engine("fedprox", mu=0.0)
    sa, ha = a.run(a.init(), 2)
    sb, hb = b.run(b.init(), 2)
    assert_equal(host_copy(sa.server), host_copy(sb.server))
    np.testing.assert_array_equal(ha["train_loss"], hb["train_loss"])


def test_fedprox_node_round_matches_numpy():
    """Full-batch steps on F_k(w) + (μ/2)‖w − w^t‖²: w ← w − lr (∇F_k(w) + μ (w − w^t))."""
    mu, lr, epochs = 0.5, 0.3, 3
    xs, ys = _nodes([7], seed=1)
    x, y = xs[0], ys[0]
    schedule = Schedule("classification", batch_size=8, epochs=epochs)
    uploads = {}
    for m in (mu, 0.0):
        algo = fedprox(LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0)), mu=m,
                       local_optimizer=lr)
        shared = algo.model.shared
        uploads[m], _, _ = _round_fn(algo, schedule)(shared, (), jnp.asarray(x), jnp.asarray(y),
                                                     jax.random.key(0))
    w0, b0 = _wb(shared)
    w, b = w0.copy(), b0.copy()
    for _ in range(epochs):
        gw, gb = _grad(w, b, x.astype(np.float64), y)
        w, b = w - lr * (gw + mu * (w - w0)), b - lr * (gb + mu * (b - b0))
    got_w, got_b = _wb(uploads[mu])
    np.testing.assert_allclose(got_w, w - w0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_b, b - b0, rtol=1e-5, atol=1e-6)
    assert not np.allclose(_wb(uploads[0.0])[0], got_w, rtol=1e-3)  # the proximal term bites


# ----- SCAFFOLD -----


def test_scaffold_round_one_is_fedavg_round_one():
    a, b = _engine("fedavg"), _engine("scaffold")
    sa, ha = a.run(a.init(), 1)
    sb, hb = b.run(b.init(), 1)
    assert_close(host_copy(sb.server.params), host_copy(sa.server.params), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(hb["train_loss"], ha["train_loss"], rtol=1e-6)
    sb, _ = b.run(sb, 1)  # round 2 corrects the gradients: it no longer is FedAvg
    sa, _ = a.run(sa, 1)
    assert not np.allclose(np.asarray(sb.server.params["head"]["kernel"][...]),
                           np.asarray(sa.server.params["head"]["kernel"][...]), rtol=1e-4)


def _scaffold_numpy(xs, ys, w0, b0, lr, server_lr, epochs, rounds):
    """SCAFFOLD option II, full-batch (K = epochs), from the paper's equations; c is the mean
    of the c_i of all (here: every) node with data."""
    nodes = len(xs)
    x = [w0.copy(), b0.copy()]
    c = [np.zeros_like(w0), np.zeros_like(b0)]
    ci = [[np.zeros_like(w0), np.zeros_like(b0)] for _ in range(nodes)]
    counts = np.array([len(y) for y in ys], np.float64)
    for _ in range(rounds):
        dys, dcs = [], []
        for i in range(nodes):
            yw, yb = x[0].copy(), x[1].copy()
            for _ in range(epochs):
                gw, gb = _grad(yw, yb, xs[i].astype(np.float64), ys[i])
                yw = yw - lr * (gw - ci[i][0] + c[0])
                yb = yb - lr * (gb - ci[i][1] + c[1])
            plus = [ci[i][j] - c[j] + (x[j] - yy) / (epochs * lr)
                    for j, yy in enumerate((yw, yb))]
            dys.append([yw - x[0], yb - x[1]])
            dcs.append([plus[j] - ci[i][j] for j in range(2)])
            ci[i] = plus
        for j in range(2):
            mean_dy = sum(counts[i] * dys[i][j] for i in range(nodes)) / counts.sum()
            x[j] = x[j] + server_lr * mean_dy
            c[j] = c[j] + sum(dcs[i][j] for i in range(nodes)) / nodes
    return x, c, ci


SCAFFOLD_LR, SCAFFOLD_SERVER_LR, SCAFFOLD_EPOCHS = 0.3, 0.5, 2


@functools.cache
def _scaffold():
    """SCAFFOLD on softmax regression with full-batch steps (K = epochs), and its jitted
    node_round (one compilation per node size, shared by the tests)."""
    algo = scaffold(LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0)),
                    local_optimizer=SCAFFOLD_LR, server_optimizer=SCAFFOLD_SERVER_LR)
    schedule = Schedule("classification", batch_size=16, epochs=SCAFFOLD_EPOCHS)
    return algo, _round_fn(algo, schedule)


def _scaffold_rounds(xs, ys, rounds, padding=1):
    """Rounds of a plain loop of node_round over the nodes with data, plus `padding` nodes
    without data whose upload rows are junk with weight 0."""
    algo, one = _scaffold()
    nodes = len(xs) + padding
    server = algo.init(jax.random.key(0), nodes)
    states = [algo.init_node(jax.random.key(k)) for k in range(nodes)]
    rng = np.random.default_rng(7)
    for round_ in range(rounds):
        received = algo.broadcast(server)
        uploads = []
        for k in range(len(xs)):
            upload, states[k], _ = one(received, states[k], jnp.asarray(xs[k]),
                                       jnp.asarray(ys[k]), jax.random.key(10 * round_ + k))
            uploads.append(upload)
        junk = jax.tree.map(lambda u: jnp.asarray(rng.normal(size=u.shape) * 1e3, u.dtype),
                            uploads[0])
        stacked = jax.tree.map(lambda *u: jnp.stack(u), *uploads, *[junk] * padding)
        weights = jnp.asarray([len(y) for y in ys] + [0] * padding, jnp.float32)
        server = algo.server_update(server, stacked, weights, jnp.arange(nodes))
    return server, states


def test_scaffold_two_rounds_match_numpy():
    xs, ys = _nodes([6, 9, 12], seed=2)
    algo = _scaffold()[0]
    server, states = _scaffold_rounds(xs, ys, 2)
    w0, b0 = _wb(algo.model.shared)
    x, c, ci = _scaffold_numpy(xs, ys, w0, b0, SCAFFOLD_LR, SCAFFOLD_SERVER_LR,
                               SCAFFOLD_EPOCHS, rounds=2)

    def close(got, want):
        for g, w in zip(_wb(got), want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)

    close(server.params, x)
    close(algo.broadcast(server).control, c)  # the padding node does not dilute c
    close(server.control_sum, [sum(ci[i][j] for i in range(3)) for j in range(2)])
    for k in range(3):
        close(states[k], ci[k])
    close(states[3], [np.zeros_like(w0), np.zeros_like(b0)])  # never trained
    np.testing.assert_array_equal(server.known, [True, True, True, False])
    assert np.abs(c[0]).max() > 1e-2  # the control variates are not trivially zero


def test_scaffold_zero_weight_uploads_leave_server_state_unchanged():
    xs, ys = _nodes([6, 9, 12], seed=2)
    algo = _scaffold()[0]
    server, _ = _scaffold_rounds(xs[:2], ys[:2], 1, padding=2)
    rng = np.random.default_rng(0)
    received = algo.broadcast(server)
    junk = ScaffoldUpload(*jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=(3,) + p.shape), p.dtype),
        (received.params, received.params)))
    # all weights zero: nothing moves, not even for the nodes the rows name
    same = algo.server_update(server, junk, jnp.zeros(3), jnp.asarray([0, 2, 3]))
    assert_equal(host_copy(same), host_copy(server))
    # zero-weight rows beside a real one: as if they were not there
    weights = jnp.asarray([5.0, 0.0, 0.0])
    with_junk = algo.server_update(server, junk, weights, jnp.asarray([1, 2, 3]))
    alone = algo.server_update(server, jax.tree.map(lambda u: u[:1], junk), weights[:1],
                               jnp.asarray([1]))
    assert_equal(host_copy(with_junk), host_copy(alone))
    np.testing.assert_array_equal(with_junk.known, [True, True, False, False])


# ----- named server optimizers -----


def _algorithm2_numpy(kind, grads, lr, b1, b2, tau, x0):
    """Reddi et al.'s Algorithm 2 on pseudo-gradients g_t = −Δ_t; returns [x_1, ..., x_T]."""
    x, out = x0.astype(np.float64), []
    m, v = np.zeros_like(x), np.full_like(x, tau ** 2)
    for g in grads:
        d = -g.astype(np.float64)
        m = b1 * m + (1 - b1) * d
        if kind == "fedadagrad":
            v = v + d ** 2
        elif kind == "fedadam":
            v = b2 * v + (1 - b2) * d ** 2
        else:
            v = v - (1 - b2) * d ** 2 * np.sign(v - d ** 2)
        x = x + lr * m / (np.sqrt(v) + tau)
        out.append(x)
    return out


@pytest.mark.parametrize("kind", ["fedadagrad", "fedadam", "fedyogi"])
def test_reddi_server_optimizers_match_algorithm_2(kind):
    lr, b1, b2, tau = 0.1, 0.7, 0.9, 0.3
    rng = np.random.default_rng(4)
    x0 = rng.normal(size=12).astype(np.float32)
    # gradients of mixed scale: Yogi's sign(v − Δ²) takes both signs
    grads = [(rng.normal(size=12) * s).astype(np.float32) for s in (1.0, 0.05, 2.0, 0.1, 1.0)]
    make = getattr(server_optimizers, kind)
    opt = make(lr, tau, b1) if kind == "fedadagrad" else make(lr, b1, b2, tau)
    params = {"w": jnp.asarray(x0[:8].reshape(2, 4)), "b": jnp.asarray(x0[8:])}
    state = opt.init(params)
    want = _algorithm2_numpy(kind, grads, lr, b1, b2, tau, x0)
    for g, expected in zip(grads, want, strict=True):
        updates, state = opt.update({"w": jnp.asarray(g[:8].reshape(2, 4)),
                                     "b": jnp.asarray(g[8:])}, state, params)
        params = optax.apply_updates(params, updates)
        got = np.concatenate([np.asarray(params["w"]).ravel(), np.asarray(params["b"])])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if kind == "fedyogi":
        d2 = np.stack(grads) ** 2
        assert (d2 > tau ** 2).any() and (d2 < tau ** 2).any()


def _server_steps(algo, steps, seed=5):
    """Two server updates of random deltas from 3 nodes (one of weight 0): (server params
    after each, the weighted mean deltas)."""
    rng = np.random.default_rng(seed)
    server = algo.init(jax.random.key(0), 3)
    weights = jnp.asarray([2.0, 0.0, 6.0])
    out, means = [], []
    for _ in range(steps):
        deltas = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(3,) + p.shape), p.dtype),
                              server.params)
        server = algo.server_update(server, deltas, weights, jnp.arange(3))
        out.append(server.params)
        means.append(jax.tree.map(lambda d: (2 * np.asarray(d[0], np.float64)
                                             + 6 * np.asarray(d[2], np.float64)) / 8, deltas))
    return out, means


@pytest.mark.parametrize("name", ["fedadagrad", "fedadam", "fedyogi"])
def test_named_adaptive_factories_step_along_the_mean_delta(name):
    """The factories' server_update is Algorithm 2 on the weighted mean delta Δ_t (g = −Δ_t):
    a positive Δ_t moves x up."""
    kwargs = {"server_optimizer": 0.05, "tau": 0.2, "b1": 0.5}
    if name != "fedadagrad":
        kwargs["b2"] = 0.8
    algo = FAMILY[name](LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0)), **kwargs)
    assert algo.name == name
    got, means = _server_steps(algo, 2)
    w0, _ = _wb(algo.model.shared)
    grads = [-m["head"]["kernel"][...].ravel() for m in means]
    want = _algorithm2_numpy(name, grads, 0.05, 0.5, kwargs.get("b2", 0.0), 0.2, w0.ravel())
    for params, expected in zip(got, want, strict=True):
        np.testing.assert_allclose(_wb(params)[0].ravel(), expected, rtol=1e-5, atol=1e-6)


def test_fedavgm_is_server_sgd_with_momentum():
    """v_t = β v_{t−1} − Δ_t, x_{t+1} = x_t − η v_t; β = 0 is FedAvg's server."""
    lr, beta = 0.7, 0.9
    algo = fedavgm(LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0)), server_optimizer=lr,
                   momentum=beta)
    assert algo.name == "fedavgm"
    got, means = _server_steps(algo, 2)
    w0, _ = _wb(algo.model.shared)
    d1, d2 = (m["head"]["kernel"][...] for m in means)
    np.testing.assert_allclose(_wb(got[0])[0], w0 + lr * d1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_wb(got[1])[0], w0 + lr * d1 + lr * (d2 + beta * d1),
                               rtol=1e-5, atol=1e-6)
    plain, _ = _server_steps(fedavgm(LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0)),
                                     server_optimizer=1.0, momentum=0.0), 2)
    avg, _ = _server_steps(fedavg(LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0))), 2)
    assert_equal(host_copy(plain), host_copy(avg))


# ----- arguments -----


@pytest.mark.parametrize("name", list(FAMILY))
def test_factories_accept_the_cli_keywords(name):
    algo = FAMILY[name](mlp(), local_optimizer=0.1, server_optimizer=0.5, loss="hinge",
                        class_weights=np.ones(CLASSES, np.float32))
    assert algo.name == name


@pytest.mark.parametrize("name, kwargs, match", [
    ("fedprox", {"mu": -0.1}, "fedprox: mu"),
    ("fedprox", {"mu": float("nan")}, "fedprox: mu"),
    ("fedprox", {"mu": True}, "fedprox: mu"),
    ("fedprox", {"local_optimizer": 0.0}, "fedprox: local_optimizer"),
    ("scaffold", {"local_optimizer": optax.sgd(0.1)}, "scaffold: local_optimizer"),
    ("scaffold", {"local_optimizer": float("nan")}, "scaffold: local_optimizer"),
    ("scaffold", {"local_optimizer": -0.1}, "scaffold: local_optimizer"),
    ("scaffold", {"server_optimizer": "adam"}, "scaffold: server_optimizer"),
    ("fedavgm", {"momentum": 1.0}, "fedavgm: momentum"),
    ("fedavgm", {"server_optimizer": optax.sgd(1.0)}, "fedavgm: server_optimizer"),
    ("fedadagrad", {"tau": 0.0}, "fedadagrad: tau"),
    ("fedadagrad", {"b1": 1.0}, "fedadagrad: b1"),
    ("fedadam", {"tau": -1e-3}, "fedadam: tau"),
    ("fedadam", {"b1": -0.1}, "fedadam: b1"),
    ("fedadam", {"b2": 1.0}, "fedadam: b2"),
    ("fedadam", {"server_optimizer": 0.0}, "fedadam: server_optimizer"),
    ("fedadam", {"server_optimizer": optax.adam(1e-2)}, "fedadam: server_optimizer"),
    ("fedyogi", {"b2": float("nan")}, "fedyogi: b2"),
    ("fedyogi", {"tau": float("inf")}, "fedyogi: tau"),
    ("fedyogi", {"loss": "nope"}, "fedyogi"),
])
def test_factories_reject_bad_arguments(name, kwargs, match):
    with pytest.raises(AlgorithmError, match=match):
        FAMILY[name](mlp(), **kwargs)


@pytest.mark.parametrize("make, args", [
    (server_optimizers.fedadagrad, (0.1, 0.0)),
    (server_optimizers.fedadam, (0.1, 0.9, 1.0, 1e-3)),
    (server_optimizers.fedyogi, (-0.1, 0.9, 0.99, 1e-3)),
    (server_optimizers.fedyogi, (0.1, 1.2, 0.99, 1e-3)),
])
def test_server_optimizers_reject_bad_arguments(make, args):
    with pytest.raises(ValueError, match=make.__name__):
        make(*args)
