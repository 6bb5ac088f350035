"""pFedMe and Per-FedAvg against NumPy references written from the papers' equations
(multinomial logistic regression, hand-written gradients and Hessian-vector products), their
limit cases, and named errors for bad arguments. (The engine harness runs them too.)"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fedmtl import algorithms
from fedmtl.algorithms.meta import perfedavg, pfedme
from fedmtl.models import MLP, LogisticRegression
from fedmtl.training import Batch, Schedule, node_round

DIM, CLASSES = 4, 3
N = 6  # rows of the one-node problems; batch_size 8 > N: every step sees all of them


def _xy(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, DIM)).astype(np.float32),
            rng.integers(0, CLASSES, n).astype(np.int32))


def _linear():
    return LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0))


# ----- multinomial logistic regression by hand (float64); params are (W [D, C], b [C]) -----


def _probs(params, x):
    z = x @ params[0] + params[1]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _loss(params, x, y):
    return float(-np.mean(np.log(_probs(params, x)[np.arange(len(y)), y])))


def _grad(params, x, y):
    """∇ of the mean cross-entropy: (Xᵀ(P − Y)/n, mean(P − Y))."""
    g = _probs(params, x) - np.eye(CLASSES)[y]
    return x.T @ g / len(y), g.mean(axis=0)


def _hvp(params, x, y, v):
    """∇²f · v: the logits move by dZ = X V_W + v_b, the probabilities by
    dP = P ⊙ dZ − P ⊙ rowsum(P ⊙ dZ); the gradient by (Xᵀ dP / n, mean(dP))."""
    p = _probs(params, x)
    dz = x @ v[0] + v[1]
    dp = p * dz - p * np.sum(p * dz, axis=1, keepdims=True)
    return x.T @ dp / len(y), dp.mean(axis=0)


def _axpy(a, x, y):
    """a·x + y for (W, b) pairs."""
    return tuple(a * xi + yi for xi, yi in zip(x, y, strict=True))


def _np_params(state):
    bias, kernel = jax.tree.leaves(state)  # leaves in key order: head/bias, head/kernel
    return np.asarray(kernel, np.float64), np.asarray(bias, np.float64)


def _to_state(template, params):
    """(W, b) as a parameter State shaped like `template` (its leaves are bias, kernel)."""
    structure = jax.tree.structure(template)
    return jax.tree.unflatten(structure, [jnp.asarray(params[1], jnp.float32),
                                          jnp.asarray(params[0], jnp.float32)])


def _random_global(algo, seed=5):
    """A global model with a random bias too (the module's starts at zero)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.5, jnp.float32),
                        algo.model.shared)


def _assert_params(got, want, rtol=1e-5, atol=1e-6):
    for g, w in zip(_np_params(got), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def _full_batch_round(algo, w_g, node, epochs, seed=1):
    x, y = _xy(N, seed)
    schedule = Schedule("classification", batch_size=8, epochs=epochs)
    run = jax.jit(lambda w, s: node_round(algo, w, s, jnp.asarray(x), jnp.asarray(y),
                                          jax.random.key(3), schedule))
    return run(w_g, node), x.astype(np.float64), y


# ----- pFedMe -----


def _pfedme_reference(w_g, x, y, steps, lam, k, nu, eta):
    """Dinh et al. (2020), Algorithm 1 on one node, full batches; the inner solve warm-starts
    from the last θ as in the authors' code. Returns (w, θ, summed step losses)."""
    w, theta, losses = w_g, w_g, 0.0
    for _ in range(steps):
        losses += _loss(theta, x, y)
        for _ in range(k):
            g = _grad(theta, x, y)
            theta = tuple(t - nu * (gi + lam * (t - wi)) for t, gi, wi in zip(theta, g, w,
                                                                              strict=True))
        w = tuple(wi - eta * lam * (wi - t) for wi, t in zip(w, theta, strict=True))
    return w, theta, losses


def test_pfedme_round_equals_the_papers_update():
    lam, k, nu, eta, epochs = 4.0, 3, 0.2, 0.07, 3
    algo = pfedme(_linear(), lam=lam, inner_steps=k, personal_lr=nu, local_optimizer=eta)
    w_g = _random_global(algo)
    (upload, theta, (loss_sum, seen)), x, y = _full_batch_round(
        algo, w_g, algo.init_node(jax.random.key(0)), epochs)
    w_want, theta_want, losses = _pfedme_reference(_np_params(w_g), x, y, epochs, lam, k,
                                                   nu, eta)
    _assert_params(theta, theta_want)
    _assert_params(jax.tree.map(jnp.add, w_g, upload), w_want)
    assert float(seen) == epochs * N
    np.testing.assert_allclose(float(loss_sum), losses * N, rtol=1e-5)
    kinds = algo.models(w_g, theta)
    assert set(kinds) == {"global", "personalized"} and algo.finetune is None
    _assert_params(kinds["personalized"][0], theta_want)
    _assert_params(kinds["global"][0], _np_params(w_g))


def test_pfedme_server_moves_beta_of_the_way_to_the_weighted_mean():
    """w_g ← (1 − β) w_g + β Σ p_i w_i, p_i ∝ example counts; zero-weight rows count for
    nothing."""
    beta = 1.5
    algo = pfedme(_linear(), server_optimizer=beta)
    server = algo.init(jax.random.key(0), 3)
    w_g = _np_params(server.params)
    rng = np.random.default_rng(2)
    locals_ = [(w_g[0] + rng.normal(size=w_g[0].shape), w_g[1] + rng.normal(size=w_g[1].shape))
               for _ in range(3)]
    uploads = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[
        jax.tree.map(jnp.subtract, _to_state(server.params, w), server.params)
        for w in locals_])
    uploads = jax.tree.map(lambda u: u.at[2].set(1e6), uploads)  # junk on the weightless row
    new = algo.server_update(server, uploads, jnp.array([2.0, 6.0, 0.0]), jnp.arange(3))
    mean = _axpy(0.25, locals_[0], tuple(0.75 * a for a in locals_[1]))
    _assert_params(new.params, _axpy(beta, mean, tuple((1 - beta) * a for a in w_g)),
                   rtol=1e-5, atol=1e-5)


def _pfedme_vs_fedavg(lam, eta=0.1):
    """Relative distance of the uploads of one round of pFedMe (ν·λ = 1) and FedAvg (rate η)
    on one node's minibatches (14 rows, batches of 4: 4 steps)."""
    x, y = _xy(14, seed=7)
    schedule = Schedule("classification", batch_size=4, epochs=1)
    uploads = []
    for algo in (pfedme(MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0)), lam=lam,
                        personal_lr=1.0 / lam, local_optimizer=eta),
                 algorithms.fedavg(MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0)),
                                   local_optimizer=eta)):
        server = algo.init(jax.random.key(0), 1)
        upload, _, _ = jax.jit(lambda w, s, a=algo: node_round(
            a, w, s, jnp.asarray(x), jnp.asarray(y), jax.random.key(4), schedule))(
            algo.broadcast(server), algo.init_node(jax.random.key(0)))
        uploads.append(jnp.concatenate([u.ravel() for u in jax.tree.leaves(upload)]))
    return float(jnp.linalg.norm(uploads[0] - uploads[1]) / jnp.linalg.norm(uploads[1]))


def test_pfedme_with_a_strong_pull_is_fedavg():
    """ν = 1/λ: the first inner step lands at θ = w − ν∇f(θ_prev), so θ − w = O(1/λ) and the
    step w ← w − ηλ(w − θ) → w − η∇f(w) as λ → ∞: FedAvg's SGD step, with error O(1/λ)."""
    coarse, fine = _pfedme_vs_fedavg(100.0), _pfedme_vs_fedavg(1000.0)
    assert fine < 5e-3 and fine < 0.2 * coarse


# ----- Per-FedAvg -----


def _batch(seed, n=5):
    x, y = _xy(n, seed)
    return Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(n, bool), jnp.int32(0))


def _perfedavg_reference(w, batches, alpha, beta, hessian):
    """Fallah et al. (2020): each meta-step takes D, D' (and D'') in turn; a trailing partial
    cycle is dropped. Returns (w, the loss each step reports)."""
    cycle, losses = 3 if hessian else 2, []
    data = [(np.asarray(b.x, np.float64), np.asarray(b.y)) for b in batches]
    for start in range(0, len(data) - cycle + 1, cycle):
        d, d1 = data[start], data[start + 1]
        temp = _axpy(-alpha, _grad(w, *d), w)
        meta = _grad(temp, *d1)
        losses += [_loss(w, *d), _loss(temp, *d1)]
        if hessian:
            d2 = data[start + 2]
            meta = _axpy(-alpha, _hvp(w, *d2, meta), meta)
            losses.append(_loss(w, *d2))
        w = _axpy(-beta, meta, w)
    return w, losses


def _steps(algo, w_g, batches):
    step = jax.jit(lambda s, b: algo.step(s, b, jax.random.key(0), "classification"))
    state, losses = algo.start(w_g, algo.init_node(jax.random.key(0))), []
    for batch in batches:
        state, loss = step(state, batch)
        losses.append(float(loss))
    return state, losses


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_perfedavg_meta_steps_use_successive_batches_as_in_the_paper(variant):
    """Two meta-steps on distinct batches D, D', (D''), then a partial cycle that changes
    nothing; every step reports its batch's loss at the point it differentiates."""
    alpha, beta = 0.3, 0.2
    algo = perfedavg(_linear(), variant=variant, alpha=alpha, local_optimizer=beta)
    w_g = _random_global(algo)
    batches = [_batch(seed) for seed in range(10, 17 if variant == "hf" else 15)]
    state, losses = _steps(algo, w_g, batches)
    want, want_losses = _perfedavg_reference(_np_params(w_g), batches, alpha, beta,
                                             variant == "hf")
    _assert_params(state.w, want)
    np.testing.assert_allclose(losses[:len(want_losses)], want_losses, rtol=1e-5)
    upload, node = algo.finish(w_g, (), state)
    _assert_params(jax.tree.map(jnp.add, w_g, upload), want)
    assert node == () and algo.name == {"fo": "perfedavg", "hf": "perfedavg_hf"}[variant]


@pytest.mark.parametrize("variant, epochs", [("fo", 4), ("hf", 6)])
def test_perfedavg_round_equals_the_papers_update(variant, epochs):
    """Full batches (D = D' = D''): `epochs` steps are two meta-steps; one more step (a
    partial cycle) leaves the upload exactly as it was."""
    alpha, beta = 0.4, 0.3
    algo = perfedavg(_linear(), variant=variant, alpha=alpha, local_optimizer=beta)
    w_g = _random_global(algo)
    (upload, _, (_, seen)), x, y = _full_batch_round(algo, w_g, (), epochs)
    full = Batch(jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.ones(N, bool))
    want, _ = _perfedavg_reference(_np_params(w_g), [full] * epochs, alpha, beta,
                                   variant == "hf")
    _assert_params(jax.tree.map(jnp.add, w_g, upload), want)
    assert float(seen) == epochs * N
    (longer, _, _), _, _ = _full_batch_round(algo, w_g, (), epochs + 1)
    for a, b in zip(jax.tree.leaves(upload), jax.tree.leaves(longer), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_perfedavg_hf_without_adaptation_is_fo():
    """α = 0: temp = w and the Hessian term vanishes, so HF's meta-step on (D, D', D'') is
    FO's on (D, D'): plain SGD with β on D'."""
    batches = [_batch(seed) for seed in (20, 21, 22)]
    states = {}
    for variant in ("fo", "hf"):
        algo = perfedavg(_linear(), variant=variant, alpha=0.0, local_optimizer=0.5)
        w_g = _random_global(algo)
        states[variant], _ = _steps(algo, w_g, batches[:2] if variant == "fo" else batches)
    _assert_params(states["hf"].w, _np_params(states["fo"].w), rtol=1e-6, atol=1e-7)
    sgd = _axpy(-0.5, _grad(_np_params(w_g), np.asarray(batches[1].x, np.float64),
                            np.asarray(batches[1].y)), _np_params(w_g))
    _assert_params(states["fo"].w, sgd)


def test_perfedavg_personalizes_by_sgd_steps_of_rate_alpha():
    alpha = 0.25
    algo = perfedavg(_linear(), alpha=alpha, local_optimizer=0.1)
    w_g = _random_global(algo)
    kinds = algo.models(w_g, ())
    assert set(kinds) == {"global"}
    batch = _batch(30)
    state, _ = algo.finetune.step(algo.finetune.init(kinds["global"]), batch,
                                  jax.random.key(0), "classification")
    w = _np_params(w_g)
    _assert_params(state.params[0], _axpy(-alpha, _grad(w, np.asarray(batch.x, np.float64),
                                                        np.asarray(batch.y)), w))


# ----- arguments -----


def test_factories_take_the_clis_keywords_and_optax_optimizers():
    weights = np.array([1.0, 2.0, 0.5], np.float32)
    for factory in (pfedme, perfedavg):
        for opt in (0.01, optax.sgd(0.01, momentum=0.9)):
            algo = factory(_linear(), local_optimizer=opt, server_optimizer=1.0, loss=None,
                           class_weights=weights)
            state, loss = _steps(algo, _random_global(algo), [_batch(40)])
            assert np.isfinite(loss[0])
            assert jax.tree.structure(algo.init(jax.random.key(0), 2).params) == \
                jax.tree.structure(algo.model.shared)


@pytest.mark.parametrize("factory, kwargs, match", [
    (pfedme, {"lam": 0.0}, r"^pfedme: lam must be a finite number > 0, got 0.0$"),
    (pfedme, {"lam": float("nan")}, r"^pfedme: lam must be"),
    (pfedme, {"lam": "15"}, r"^pfedme: lam must be"),
    (pfedme, {"inner_steps": 0}, r"^pfedme: inner_steps must be an integer >= 1, got 0$"),
    (pfedme, {"inner_steps": 2.0}, r"^pfedme: inner_steps must be an integer"),
    (pfedme, {"inner_steps": True}, r"^pfedme: inner_steps must be an integer"),
    (pfedme, {"personal_lr": 0.0}, r"^pfedme: personal_lr must be a finite number > 0"),
    (pfedme, {"personal_lr": 0.2, "lam": 10.0}, r"^pfedme: personal_lr \* lam must be < 2"),
    (pfedme, {"local_optimizer": -0.1}, r"^pfedme: local_optimizer learning rate must be"),
    (pfedme, {"server_optimizer": 0}, r"^pfedme: server_optimizer learning rate must be"),
    (pfedme, {"loss": "bogus"}, r"^pfedme: "),
    (perfedavg, {"variant": "so"}, r"^perfedavg: variant must be 'fo' or 'hf', got 'so'$"),
    (perfedavg, {"alpha": -0.1}, r"^perfedavg: alpha must be a finite number >= 0"),
    (perfedavg, {"alpha": float("inf")}, r"^perfedavg: alpha must be"),
    (perfedavg, {"local_optimizer": 0.0}, r"^perfedavg: local_optimizer learning rate must"),
    (perfedavg, {"server_optimizer": "1"}, r"^perfedavg: server_optimizer must be a learning"),
    (perfedavg, {"loss": "bogus"}, r"^perfedavg: "),
])
def test_bad_arguments_raise_named_errors(factory, kwargs, match):
    with pytest.raises(algorithms.AlgorithmError, match=match):
        factory(_linear(), **kwargs)
