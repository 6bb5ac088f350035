"""APFL and FedALA: their limit cases (APFL with α = 1 fixed is local training and its w is
FedAvg's; FedALA's first round is FedAvg's, and with η = 0 every round is), one step of each
against a NumPy reference written from the papers' equations, W within [0, 1], and named
errors for bad arguments. (The registry harness of test_harness.py runs them too.)"""

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
from fedmtl.algorithms.mixture import AlaNode, ApflNode, apfl, fedala
from fedmtl.engine import Engine, Federation
from fedmtl.models import LogisticRegression
from fedmtl.training import Batch, Schedule, node_round

# The tiny problem of tests/test_engine.py.
FED = Federation(rounds=2, batch_size=4, finetune_steps=0, seed=0, rounds_per_sync=1)
LR = 0.1


def _linear():
    return LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0))


@functools.cache
def _rounds(name: str, **kwargs) -> tuple:
    """The host states after rounds 1 and 2 of algorithms[name](MLP, **kwargs): one engine
    per configuration for the whole module (compiling is the slow part)."""
    factories = {"apfl": apfl, "fedala": fedala, **algorithms.ALGORITHMS}
    engine = Engine(factories[name](mlp(), local_optimizer=LR, **kwargs), data(), FED)
    one, _ = engine.run(engine.init(), 1)
    one = jax.device_get(one)  # the engine donates its input state: keep a host copy
    two, _ = engine.run(jax.device_put(one), 1)
    return one, jax.device_get(two)


def _trained(name: str, rounds: int = 2, **kwargs):
    """(server, nodes, round) on the host after `rounds` (1 or 2) rounds."""
    return _rounds(name, **kwargs)[rounds - 1]


# ----- a linear model in NumPy: the papers' gradients by hand -----


def _leaf(tree, name):
    """The array of `tree` at path head/<name>/value."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.tree_util.keystr(path, simple=True, separator="/") == f"head/{name}/value":
            return np.asarray(leaf, np.float64)
    raise KeyError(name)


def _linear_params(like, kernel, bias):
    """A LogisticRegression parameter tree of `like`'s structure holding kernel and bias."""
    def pick(path, leaf):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        value = {"head/kernel/value": kernel, "head/bias/value": bias}[name]
        return jnp.asarray(value, leaf.dtype)
    return jax.tree_util.tree_map_with_path(pick, like)


def _grads(kernel, bias, x, y, mask):
    """∇ of the mean cross-entropy over the real rows of x @ kernel + bias: (dK, db)."""
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = (p - np.eye(kernel.shape[1])[y]) * mask[:, None] / max(mask.sum(), 1)
    return x.T @ g, g.sum(axis=0)


def _step(algo):
    """The algorithm's step on a classification batch, jitted (op by op is slow)."""
    return jax.jit(lambda state, batch, key: algo.step(state, batch, key, "classification"))


def _batch(seed=0, rows=6, dead=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, DIM))
    y = rng.integers(0, CLASSES, rows)
    mask = np.arange(rows) < rows - dead  # the last rows are padding
    return x, y, mask, lambda epoch: Batch(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32),
                                           jnp.asarray(mask), jnp.int32(epoch))


# ----- APFL -----


def test_apfl_with_alpha_one_fixed_is_local_training_and_its_w_is_fedavgs():
    """α = 1 without adaptation: v̄ = v and v takes local training's steps, bit for bit; w is
    trained as FedAvg trains its model, whatever α."""
    got = _trained("apfl", alpha=1.0, adapt_alpha=False)
    assert_equal(got.nodes.v, _trained("local").nodes)
    np.testing.assert_array_equal(got.nodes.alpha, np.ones(len(SIZES), np.float32))
    assert_equal(got.server, _trained("fedavg").server)
    algo = apfl(mlp(), alpha=1.0, adapt_alpha=False)
    for k in range(len(SIZES)):  # the personalized model is v itself
        node = jax.tree.map(lambda leaf, k=k: leaf[k], got.nodes)
        assert_equal(algo.models(got.server.params, node)["personalized"][0], node.v)


def test_apfl_w_takes_fedavgs_steps_whatever_alpha():
    """One node's round: w's upload equals FedAvg's exactly while v and α move."""
    x, y, _, _ = _batch(seed=1, rows=11, dead=0)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    schedule, key = Schedule("classification", batch_size=4, epochs=2), jax.random.key(5)
    mixed, avg = apfl(mlp(), alpha=0.4, local_optimizer=LR), algorithms.fedavg(
        mlp(), local_optimizer=LR)
    w = mixed.broadcast(mixed.init(jax.random.key(0), 1))
    node = ApflNode(jax.tree.map(lambda p: p + 0.3, mixed.model.shared), jnp.float32(0.4))
    upload, new, _ = node_round(mixed, w, node, x, y, key, schedule)
    want, _, _ = node_round(avg, w, (), x, y, key, schedule)
    assert_equal(upload, want)
    assert float(new.alpha) != pytest.approx(0.4, abs=1e-6)
    assert all(not np.allclose(a, b) for a, b in
               zip(jax.tree.leaves(new.v), jax.tree.leaves(node.v), strict=True))


@pytest.mark.parametrize("alpha_lr", [0.7, 300.0], ids=["inside", "clipped"])
def test_apfl_step_equals_the_papers_update(alpha_lr):
    """w ← w − η∇f(w); v ← v − η α ∇f(v̄); α ← clip(α − η_α ⟨v − w, ∇f(v̄)⟩, 0, 1), with
    v̄ = α v + (1 − α) w, all from the values before the step (NumPy, float64)."""
    lr, alpha = 0.2, 0.3
    algo = apfl(_linear(), alpha=alpha, alpha_lr=alpha_lr, local_optimizer=lr)
    rng = np.random.default_rng(2)
    wk, wb, vk, vb = (rng.normal(size=s) for s in [(DIM, CLASSES), CLASSES] * 2)
    like = algo.model.shared
    w, v = _linear_params(like, wk, wb), _linear_params(like, vk, vb)
    x, y, mask, batch = _batch()
    state = algo.start(w, ApflNode(v, jnp.float32(alpha)))
    new, loss = _step(algo)(state, batch(0), jax.random.key(0))

    gwk, gwb = _grads(wk, wb, x, y, mask)
    mk, mb = alpha * vk + (1 - alpha) * wk, alpha * vb + (1 - alpha) * wb
    gmk, gmb = _grads(mk, mb, x, y, mask)
    grad_alpha = np.sum((vk - wk) * gmk) + np.sum((vb - wb) * gmb)
    want_alpha = np.clip(alpha - alpha_lr * grad_alpha, 0, 1)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    close(_leaf(new.w.params[0], "kernel"), wk - lr * gwk)
    close(_leaf(new.w.params[0], "bias"), wb - lr * gwb)
    close(_leaf(new.v, "kernel"), vk - lr * alpha * gmk)
    close(_leaf(new.v, "bias"), vb - lr * alpha * gmb)
    close(float(new.alpha), want_alpha)
    if alpha_lr > 1:
        assert float(new.alpha) in (0.0, 1.0)  # the clip bites
    else:
        assert 0 < float(new.alpha) < 1
    logits = x @ wk + wb
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]
    close(float(loss), ce[mask].mean())  # the step reports w's loss


def test_apfl_personalized_model_mixes_parameters():
    algo = apfl(_linear(), alpha=0.25)
    w = jax.tree.map(lambda p: p + 1.0, algo.model.shared)
    kinds = algo.models(w, ApflNode(algo.model.shared, jnp.float32(0.25)))
    assert_equal(kinds["global"][0], w)
    assert_close(kinds["personalized"][0],
                  jax.tree.map(lambda v, g: 0.25 * v + 0.75 * g, algo.model.shared, w))


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 1.5}, r"apfl: alpha must be in \[0, 1\]"),
    ({"alpha": -0.1}, "apfl: alpha must be"),
    ({"alpha": "0.5"}, "apfl: alpha must be"),
    ({"adapt_alpha": 1}, "apfl: adapt_alpha must be True or False"),
    ({"alpha_lr": 0.0}, "apfl: alpha_lr must be a finite number > 0"),
    ({"alpha_lr": float("nan")}, "apfl: alpha_lr must be"),
    ({"local_optimizer": optax.adam(1e-3)}, "apfl: alpha_lr must be given"),
    ({"local_optimizer": -0.1}, "^apfl: local_optimizer learning rate must be"),
    ({"loss": "nope"}, "apfl: unknown loss"),
])
def test_bad_apfl_arguments_are_named(kwargs, match):
    with pytest.raises(algorithms.AlgorithmError, match=match):
        apfl(mlp(), **kwargs)


def test_apfl_accepts_an_optax_optimizer_with_an_alpha_rate():
    algo = apfl(mlp(), local_optimizer=optax.adam(1e-3), alpha_lr=0.01)
    assert algo.name == "apfl" and algo.finetune is None


# ----- FedALA -----


def test_fedala_first_round_is_fedavgs_and_later_rounds_learn_w_within_bounds():
    """Round 1: θ_i = g, so θ̂ = g exactly and ∇_W = 0: FedAvg's round, W = 1. Round 2: W
    moves, within [0, 1], on the head only."""
    one = _trained("fedala", rounds=1)
    assert_equal(one.server, _trained("fedavg", rounds=1).server)
    assert all(np.all(w == 1) for w in jax.tree.leaves(one.nodes.W))
    two = _trained("fedala", rounds=2)
    W = jax.tree.leaves(two.nodes.W)
    assert len(W) == 2  # "head": its kernel and bias
    assert all(np.all((w >= 0) & (w <= 1)) for w in W)
    assert any(np.any(w < 1) for w in W)
    assert any(not np.allclose(a, b, rtol=1e-4) for a, b in zip(
        jax.tree.leaves(two.server), jax.tree.leaves(_trained("fedavg").server), strict=True))


def test_fedala_with_fixed_weights_is_fedavg():
    """η = 0 keeps W = 1: θ̂ = θ + (g − θ) = g up to rounding, so every round is FedAvg's."""
    got = _trained("fedala", eta=0.0)
    assert_close(got.server, _trained("fedavg").server)
    assert all(np.all(w == 1) for w in jax.tree.leaves(got.nodes.W))


@pytest.mark.parametrize("eta", [0.5, 500.0], ids=["inside", "clipped"])
def test_fedala_weight_step_equals_the_papers_update(eta):
    """A prologue step: W ← clip(W − η ∇L(θ̂) ⊙ (g − θ), 0, 1) on the mixed kernel, then the
    model is θ̂ = θ + (g − θ) ⊙ W with the unmixed bias taken from g; a training step then
    takes a plain gradient step from θ̂ (NumPy, float64)."""
    lr = 0.2
    algo = fedala(_linear(), mix="kernel", eta=eta, sample=1.0, local_optimizer=lr)
    rng = np.random.default_rng(3)
    tk, tb, gk, gb = (rng.normal(size=s) for s in [(DIM, CLASSES), CLASSES] * 2)
    W0 = rng.uniform(0.2, 0.8, size=(DIM, CLASSES))
    like = algo.model.shared
    theta, g = _linear_params(like, tk, tb), _linear_params(like, gk, gb)
    x, y, mask, batch = _batch(seed=4)
    state = algo.start(g, AlaNode(theta, (jnp.asarray(W0, jnp.float32),)))
    step = _step(algo)
    ala, _ = step(state, batch(-1), jax.random.key(0))

    dk, _ = _grads(tk + (gk - tk) * W0, gb, x, y, mask)
    W1 = np.clip(W0 - eta * dk * (gk - tk), 0, 1)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    (got_W,) = ala.W
    close(got_W, W1)
    assert np.all((np.asarray(got_W) >= 0) & (np.asarray(got_W) <= 1))
    if eta > 1:
        assert np.any(np.asarray(got_W) == 0) and np.any(np.asarray(got_W) == 1)
    hat_k = tk + (gk - tk) * W1
    close(_leaf(ala.train.params[0], "kernel"), hat_k)
    np.testing.assert_array_equal(_leaf(ala.train.params[0], "bias"), gb.astype(np.float32))
    assert_equal(ala.theta, theta)  # θ_i and g are the round's constants

    trained, _ = step(ala, batch(0), jax.random.key(0))
    dk, db = _grads(hat_k, gb.astype(np.float32), x, y, mask)
    close(_leaf(trained.train.params[0], "kernel"), hat_k - lr * dk)
    close(_leaf(trained.train.params[0], "bias"), gb - lr * db)
    (kept_W,) = trained.W
    close(kept_W, W1)  # training steps leave W alone


def test_fedala_weight_steps_see_a_sample_of_the_rows():
    """sample < 1 drops rows: the prologue step's loss is the mean over a random subset."""
    algo = fedala(_linear(), mix=True, sample=0.5)
    rng = np.random.default_rng(5)
    theta = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype),
                         algo.model.shared)
    node = algo.init_node(jax.random.key(0))._replace(theta=theta)
    x, y, mask, batch = _batch(seed=6, rows=40, dead=0)
    state = algo.start(algo.model.shared, node)
    logits = x @ _leaf(algo.model.shared, "kernel") + _leaf(algo.model.shared, "bias")
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]
    step = _step(algo)
    losses = {float(step(state, batch(-1), jax.random.key(s))[1]) for s in range(3)}
    assert len(losses) == 3  # each key keeps other rows ...
    assert all(not np.isclose(v, ce.mean(), rtol=1e-6) for v in losses)  # ... not all of them
    _, full = step(state, batch(0), jax.random.key(0))  # training steps see every row
    np.testing.assert_allclose(float(full), ce.mean(), rtol=1e-5)


def test_fedala_personalized_model_aggregates_the_received_global_one():
    algo = fedala(mlp(), mix="head")
    node = algo.init_node(jax.random.key(0))
    theta = jax.tree.map(lambda p: p + 1.0, node.theta)
    W = tuple(jnp.full_like(w, 0.25) for w in node.W)
    g = algo.model.shared
    kinds = algo.models(g, AlaNode(theta, W))
    assert_equal(kinds["global"][0], g)
    for path, got in jax.tree_util.tree_flatten_with_path(kinds["personalized"][0])[0]:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        g_leaf = np.asarray(
            [leaf for p, leaf in jax.tree_util.tree_flatten_with_path(g)[0] if p == path][0])
        want = g_leaf + 0.75 if name.startswith("head/") else g_leaf  # θ + (g − θ)·¼ = g + ¾
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"mix": "nope"}, "fedala: mix='nope' matches no parameter"),
    ({"mix": None}, "fedala: mix must select parameters"),
    ({"eta": -1.0}, "fedala: eta must be a finite number >= 0"),
    ({"sample": 0.0}, "fedala: sample must be a finite number > 0"),
    ({"sample": 1.5}, r"fedala: sample must be in \(0, 1\]"),
    ({"local_optimizer": 0.0}, "^fedala: local_optimizer learning rate must be"),
    ({"server_optimizer": "x"}, "^fedala: server_optimizer must be a learning rate"),
])
def test_bad_fedala_arguments_are_named(kwargs, match):
    with pytest.raises(algorithms.AlgorithmError, match=match):
        fedala(mlp(), **kwargs)


def test_fedala_mixes_every_parameter_with_mix_true():
    algo = fedala(mlp(), mix=True)
    node = algo.init_node(jax.random.key(0))
    assert len(node.W) == len(jax.tree.leaves(algo.model.shared)) == 4
    assert algo.prologue_epochs == 1 and algo.finetune is None
