"""Task relationships (fedmtl.relationship): the learned Ω matches a sqrtm reference, the low-rank
path matches the dense one, the coupling stays bounded at N ≫ d, given Ω and graphs are checked;
planted_groups is seeded and shaped, and sharing within groups beats local and global models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedmtl import relationship as rel
from fedmtl.relationship import RelationshipError
from fedmtl.synthetic import planted_groups

EPS = 0.1
SHAPES = [(6, 15), (15, 6)]  # N < d and N > d


def _w(n, d, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _close(got, want, rtol=1e-4):
    """Equal up to rtol times the largest |entry| of `want` (float32 against float64)."""
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want,
                               atol=rtol * max(float(np.abs(want).max()), 1e-30), rtol=0)


def _reference(W, eps):
    """Σ, Ω in float64: Σ = N sqrtm(W Wᵀ + ε I) / tr(·), ε = eps ‖W‖_F² / min(N, d),
    Ω = Σ⁻¹."""
    sqrtm = pytest.importorskip("scipy.linalg").sqrtm
    W = np.asarray(W, np.float64)
    n = len(W)
    ridge = eps * np.sum(W * W) / min(W.shape)
    root = np.real(sqrtm(W @ W.T + ridge * np.eye(n)))
    sig = n * root / np.trace(root)
    return sig, np.linalg.inv(sig)


# ----- learned Ω -----


@pytest.mark.parametrize("fn", [rel.learned, rel.learned_dense])
@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_learned_matches_sqrtm_reference(fn, n, d):
    W = _w(n, d)
    sig, om = _reference(W, EPS)
    omega = fn(jnp.asarray(W), EPS)
    _close(rel.dense(omega), om)
    _close(rel.sigma(omega), sig)
    assert abs(np.trace(np.asarray(rel.sigma(omega), np.float64)) - n) < 1e-4 * n  # tr Σ = N


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_low_rank_equals_dense(n, d):
    W = jnp.asarray(_w(n, d, seed=1))
    low, full = rel.learned(W, EPS), rel.learned_dense(W, EPS)
    assert low.basis.shape == (n, min(n, d)) and full.basis.shape == (n, n)
    X = jnp.asarray(_w(n, 3, seed=2))
    for f in (rel.dense, rel.sigma, rel.diagonal, lambda o: rel.apply(o, X)):
        _close(f(low), f(full))
    for got, want in zip(rel.coupling(low, W), rel.coupling(full, W), strict=True):
        _close(got, want)


def test_learned_jits_with_a_traced_eps():
    W = jnp.asarray(_w(12, 5))
    step = lambda W, eps: rel.coupling(rel.learned(W, eps), W)
    for got, want in zip(jax.jit(step)(W, jnp.float32(EPS)), step(W, EPS), strict=True):
        _close(got, want, rtol=1e-5)


def _small_omegas():
    """Ω of every kind: low rank with a complement (N > d), learned dense, fixed Laplacian."""
    adjacency = np.zeros((9, 9))
    adjacency[np.arange(8), np.arange(1, 9)] = np.linspace(0.5, 2.0, 8)  # a weighted path
    return {
        "low_rank": rel.learned(jnp.asarray(_w(9, 4)), EPS),
        "learned_dense": rel.learned_dense(jnp.asarray(_w(9, 4)), EPS),
        "laplacian": rel.fixed(rel.laplacian(adjacency + adjacency.T)),
    }


@pytest.mark.parametrize("kind", ["low_rank", "learned_dense", "laplacian"])
def test_apply_and_diagonal_are_the_dense_matrix_ops(kind):
    omega = _small_omegas()[kind]
    full = np.asarray(rel.dense(omega), np.float64)
    X = _w(9, 5, seed=3)
    _close(rel.apply(omega, jnp.asarray(X)), full @ X)
    _close(rel.diagonal(omega), np.diagonal(full))
    np.testing.assert_allclose(full, full.T, atol=1e-6)


@pytest.mark.parametrize("kind", ["low_rank", "laplacian"])
def test_coupling_is_each_nodes_gradient(kind):
    """λ₁(self_weight_t · w + pull_t) is the gradient of (λ₁/2) tr(Wᵀ Ω W) in row t at any w,
    the other rows held at the server's copy."""
    omega = _small_omegas()[kind]
    full = rel.dense(omega)
    W = jnp.asarray(_w(9, 5, seed=4))
    pull, self_weight = rel.coupling(omega, W)
    w = jnp.asarray(_w(1, 5, seed=5)[0])
    for t in (0, 4, 8):
        penalty = lambda v, t=t: 0.5 * jnp.trace(W.at[t].set(v).T @ full @ W.at[t].set(v))
        _close(self_weight[t] * w + pull[t], jax.grad(penalty)(w))
    _close(self_weight[:, None] * W + pull, rel.apply(omega, W))  # at w_t: the row of Ω W


def test_coupling_stays_bounded_at_many_nodes():
    """N = 2000 ≫ d = 8 (rank 8 ≪ N: MOCHA's Σ = (W Wᵀ)^{1/2} / tr would be singular and, with
    tr Σ = 1, give Ω_tt ≈ N). Proven bounds, independent of N, checked here:
      Ω's eigenvalues (a, b) ≤ sqrt(1 + 1/eps), so Ω_tt ≤ sqrt(1 + 1/eps);
      ‖(Ω W)_t‖ ≤ max_j a_j ‖w_t‖ (Ω is a function of W Wᵀ);
      hence ‖pull_t‖ ≤ 2 sqrt(1 + 1/eps) ‖w_t‖: O(1) times the node's own weights, 0 at w_t = 0.
    W: four planted groups, one node 100× larger than the rest, one node at 0."""
    n, d, eps = 2000, 8, 1e-2
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, d))[np.arange(n) % 4] + 0.1 * rng.normal(size=(n, d))
    W[0] *= 100
    W[1] = 0
    W = jnp.asarray(W, jnp.float32)
    omega = rel.learned(W, eps)
    pull, self_weight = rel.coupling(omega, W)
    row = lambda m: np.linalg.norm(np.asarray(m, np.float64), axis=1)
    norms, slack = row(W), 1 + 1e-4
    atol = 1e-6 * norms.max()  # float32 round-off of Ω W, exact 0 for the zero row
    top = np.sqrt(1 + 1 / eps)
    for v in (pull, self_weight, omega.a, omega.b):
        assert np.isfinite(np.asarray(v)).all()
    assert float(omega.a.min()) > 0 and float(max(omega.a.max(), omega.b)) <= top * slack
    assert float(self_weight.max()) <= top * slack
    pulled = row(rel.apply(omega, W))
    assert (pulled <= float(omega.a.max()) * norms * slack + atol).all()
    assert (row(pull) <= 2 * top * norms * slack + atol).all()
    assert row(pull)[1] <= atol


@pytest.mark.parametrize("scale", [1e-10, 1e10])
def test_learned_does_not_change_when_w_is_scaled(scale):
    W = _w(40, 6)
    want = rel.dense(rel.learned(jnp.asarray(W), EPS))
    _close(rel.dense(rel.learned(jnp.asarray(W * np.float32(scale)), EPS)), want, rtol=1e-4)


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("fn", [rel.learned, rel.learned_dense])
def test_zero_w_gives_identity(fn, n, d):
    W = jnp.zeros((n, d), jnp.float32)
    omega = fn(W, EPS)
    _close(rel.dense(omega), np.eye(n), rtol=1e-6)
    _close(rel.sigma(omega), np.eye(n), rtol=1e-6)
    pull, self_weight = rel.coupling(omega, W)
    assert not np.asarray(pull).any()
    _close(self_weight, np.ones(n), rtol=1e-6)


# ----- given Ω and graphs -----


def test_fixed_keeps_a_psd_matrix_and_pseudo_inverts_it():
    adjacency = np.array([[0, 1, 0, 2], [1, 0, 3, 0], [0, 3, 0, 1], [2, 0, 1, 0]], np.float64)
    L = rel.laplacian(adjacency)
    omega = rel.fixed(L)
    assert omega.basis.dtype == jnp.float32 and float(omega.b) == 0
    _close(rel.dense(omega), L)
    _close(rel.sigma(omega), np.linalg.pinv(L))  # the constant vector (eigenvalue 0) maps to 0


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        (np.eye(3)[:2], r"square.*\(2, 3\)"),
        (np.ones(3), r"square.*\(3,\)"),
        (np.array([[1.0, 0.5], [0.0, 1.0]]), r"symmetric.*max \|Ω − Ωᵀ\| = 0\.5"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), r"positive semi-definite.*most negative eigenvalue "
                                             r"is -1\b"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), r"2 non-finite"),
    ],
)
def test_fixed_rejects_with_named_errors(matrix, match):
    with pytest.raises(RelationshipError, match=match):
        rel.fixed(matrix)


def test_laplacian_penalty_is_half_the_weighted_squared_distances():
    rng = np.random.default_rng(0)
    a = np.triu(rng.uniform(0, 1, (6, 6)), 1)
    a = a + a.T
    W = rng.normal(size=(6, 3))
    L = rel.laplacian(a)
    pairs = sum(a[s, t] * np.sum((W[s] - W[t]) ** 2) for s in range(6) for t in range(6))
    np.testing.assert_allclose(np.trace(W.T @ L @ W), pairs / 2)
    np.testing.assert_allclose(L @ np.ones(6), 0, atol=1e-12)


@pytest.mark.parametrize(
    ("adjacency", "match"),
    [
        (np.array([[0.0, -1.0], [-1.0, 0.0]]), r"non-negative; a\[0, 1\] = -1"),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), r"symmetric; a\[.*\] = .* but a\[.*\]"),
        (np.array([[0.0, 1.0], [1.0, 0.5]]), r"zero diagonal.*a\[1, 1\] = 0\.5"),
        (np.zeros((2, 3)), r"square"),
    ],
)
def test_laplacian_rejects_with_named_errors(adjacency, match):
    with pytest.raises(RelationshipError, match=match):
        rel.laplacian(adjacency)


# ----- planted groups -----


def test_planted_groups_is_seeded_and_shaped():
    a, groups = planted_groups(50, 4, dim=7, num_classes=3, seed=2)
    b, groups_b = planted_groups(50, 4, dim=7, num_classes=3, seed=2)
    c, _ = planted_groups(50, 4, dim=7, num_classes=3, seed=3)
    assert a.num_nodes == 50 and a.feature_shape == (7,) and a.num_classes == 3
    assert groups.shape == (50,) and sorted(np.bincount(groups)) == [12, 12, 13, 13]
    sizes = a.train.counts + a.test.counts
    assert sizes.min() >= 10 and sizes.max() <= 200 and len(set(sizes.tolist())) > 20
    for split in (a.train, a.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
        assert split.y.min() >= 0 and split.y.max() < 3
    np.testing.assert_array_equal(groups, groups_b)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.train.counts, c.train.counts)


def _logistic(x, y, mask, classes, steps=300, lr=0.5, lam=1e-2):
    """Softmax regression by full-batch gradient descent on M stacked problems: x [M, S, D],
    y [M, S], mask [M, S] → weights [M, D + 1, C]."""
    x = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2)
    onehot = np.eye(classes)[y] * mask[..., None]
    n = np.maximum(mask.sum(1), 1)[:, None, None]
    w = np.zeros((x.shape[0], x.shape[2], classes))
    for _ in range(steps):
        z = np.einsum("msd,mdc->msc", x, w)
        p = np.exp(z - z.max(2, keepdims=True))
        p = p / p.sum(2, keepdims=True) * mask[..., None]
        w -= lr * (np.einsum("msd,msc->mdc", x, p - onehot) / n + lam * w)
    return w


def test_planted_groups_reward_sharing_within_groups():
    """With a linear model: local training (too little data) and one global model (groups
    disagree) both lose clearly to one model per planted group."""
    data, groups = planted_groups(60, 3, seed=0)
    C = data.num_classes
    x, y, mask = data.padded("train")
    tx, ty, tmask = data.padded("test")

    def accuracy(w):  # w [N, D + 1, C]: mean over nodes of the per-node test accuracy
        z = np.einsum("nsd,ndc->nsc", np.concatenate([tx, np.ones(tx.shape[:2] + (1,))], 2), w)
        return float(np.mean(((z.argmax(2) == ty) * tmask).sum(1) / tmask.sum(1)))

    row_group = np.repeat(groups, data.train.counts)  # [T] group of each train row

    def pooled(rows):  # one model on the chosen train rows of every node, [D + 1, C]
        xs, ys = data.train.x[rows][None], data.train.y[rows][None]
        return _logistic(xs, ys, np.ones(ys.shape, bool), C)[0]

    local = accuracy(_logistic(x, y, mask, C))
    glob = accuracy(np.repeat(pooled(row_group >= 0)[None], len(groups), 0))
    grouped = accuracy(np.stack([pooled(row_group == g) for g in range(3)])[groups])
    assert grouped > max(local, glob) + 0.1, (local, glob, grouped)


@pytest.mark.parametrize("fn", [rel.learned, rel.learned_dense])
@pytest.mark.parametrize(("n", "d"), [(6, 15), (40, 6)])
def test_inactive_rows_change_nothing_for_the_active_ones(fn, n, d):
    """Padding nodes (or nodes yet to report) appended to W leave the active nodes' Ω block,
    diagonal and coupling as they are without them."""
    W = jnp.asarray(_w(n, d))
    extra = jnp.asarray(_w(3, d, seed=9))  # whatever the inactive rows hold
    active = jnp.asarray([True] * n + [False] * 3)
    alone, padded = fn(W, 1e-2), fn(jnp.concatenate([W, extra]), 1e-2, active)
    _close(rel.dense(padded)[:n, :n], rel.dense(alone), rtol=2e-4)
    _close(rel.diagonal(padded)[:n], rel.diagonal(alone), rtol=2e-4)
    pull, weight = rel.coupling(padded, jnp.concatenate([W, extra]))
    want_pull, want_weight = rel.coupling(alone, W)
    _close(pull[:n], want_pull, rtol=2e-4)
    _close(weight[:n], want_weight, rtol=2e-4)
