"""Task relationships for federated MTL (MOCHA): the precision Ω over nodes, learned from the
stacked personal parameters W [N, d] or given, stored so that N×N is never formed for large N.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class RelationshipError(ValueError):
    """A given Ω or adjacency that is not a valid relationship; the message says what is wrong."""


class Omega(NamedTuple):
    """Ω = U diag(a) Uᵀ + b (I − U Uᵀ): r eigenpairs plus one eigenvalue b on the rest.

    A dense or fixed Ω is the case r = N, b = 0.

    Attributes:
      basis: U [N, r] with orthonormal columns.
      a: [r] eigenvalues of Ω on the columns of U.
      b: [] eigenvalue of Ω on the orthogonal complement of U (N − r dimensions).
    """

    basis: jax.Array
    a: jax.Array
    b: jax.Array


def _active_rows(W: jax.Array, active) -> tuple[jax.Array, jax.Array]:
    """W with the rows of inactive nodes zeroed, and the active count (at least 1)."""
    if active is None:
        return W, jnp.asarray(W.shape[0], W.dtype)
    W = jnp.where(active[:, None], W, jnp.zeros((), W.dtype))
    return W, jnp.maximum(jnp.sum(active), 1).astype(W.dtype)


@jax.custom_batching.custom_vmap
def _thin_svd(W: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(U [N, r], s [r]) of the thin SVD of W [N, d], r = min(N, d)."""
    u, s, _ = jnp.linalg.svd(W, full_matrices=False)
    return u, s


@_thin_svd.def_vmap
def _thin_svd_batched(axis_size, in_batched, W):
    """A batch of SVDs (a sweep's runs: `Engine.sweep`) one after another: jaxlib's batched
    LAPACK kernel waits for its batch on the thread pool it runs on, and deadlocks when
    every pool thread runs such a kernel (jax 0.10.2, a sweep of MOCHA on 2 CPU devices).
    (A `custom_vmap` has no reverse-mode derivative: Ω is learned by the server, never
    differentiated through.)"""
    del axis_size, in_batched
    return jax.lax.map(_thin_svd, W), (True, True)


def learned(W: jax.Array, eps: float, active: jax.Array | None = None) -> Omega:
    """Ω = Σ⁻¹ with Σ = N · M^{1/2} / tr(M^{1/2}), M = W Wᵀ + ε I, from a thin SVD of W.

    MOCHA's Σ = (W Wᵀ)^{1/2} / tr(·) (Smith et al. 2017, after Zhang & Yeung 2010) is singular
    when N > d and, with tr Σ = 1, gives Ω eigenvalues that grow like N. The ridge ε =
    eps · ‖W‖_F² / min(N, d) (eps times the mean NONZERO eigenvalue of W Wᵀ, plus
    `finfo.tiny` so W = 0 gives Ω = I) makes M invertible; tr Σ = N keeps Ω's eigenvalues at
    most sqrt(1 + 1/eps) at any N, and row t of Ω W = U diag(a·s) Vᵀ at most
    sqrt(1 + 1/eps) · ‖w_t‖. Ω does not change when W is scaled. Relative to the nonzero
    spectrum (not to its mean over all N eigenvalues, most of them 0 when N > d), ε grows
    with W's singular values, so the pull between related nodes keeps its strength as N
    grows past d instead of fading like sqrt(d / N). O(N·d²) time, O(N·d) memory;
    r = min(N, d).

    Args:
      W: [N, d] one row of flattened personal parameters per node.
      eps: > 0, the relative ridge (not checked here: a traced value may be passed).
      active: [N] bool, the nodes Σ is learned from (None: all). The others' rows are
        ignored and N counts only active nodes, so padding nodes, or nodes that have not
        reported yet, change nothing in the active nodes' block of Ω.

    Returns:
      Omega with basis [N, r], a [r], b [] in W's dtype.

    Example:
      >>> omega = learned(jnp.ones((5, 3), jnp.float32), 1e-2)
    """
    W, n = _active_rows(W, active)
    u, s = _thin_svd(W)
    s2 = s * s
    r = s.shape[0]  # min(N, d); nonzero singular values: at most min(active, d)
    ridge = eps * jnp.sum(s2) / jnp.minimum(n, r) + jnp.finfo(W.dtype).tiny
    root = jnp.sqrt(s2 + ridge)  # [r] eigenvalues of M^{1/2} on U
    root_rest = jnp.sqrt(ridge)  # the others
    scale = (jnp.sum(root) + (n - r) * root_rest) / n  # τ / N over the active nodes
    return Omega(u, scale / root, scale / root_rest)


def learned_dense(W: jax.Array, eps: float, active: jax.Array | None = None) -> Omega:
    """`learned` through `eigh` of the N×N matrix M: the reference for small N (O(N³)).

    Args:
      W: [N, d].
      eps, active: as in `learned`.

    Returns:
      Omega with basis [N, N], a [N], b = 0.
    """
    size = W.shape[0]
    W, n = _active_rows(W, active)
    ridge = eps * jnp.sum(W * W) / jnp.minimum(n, W.shape[1]) + jnp.finfo(W.dtype).tiny
    mu, q = jnp.linalg.eigh(W @ W.T + ridge * jnp.eye(size, dtype=W.dtype))
    root = jnp.sqrt(jnp.maximum(mu, ridge))  # M ⪰ ε I: lower values are round-off
    scale = (jnp.sum(root) - (size - n) * jnp.sqrt(ridge)) / n  # inactive rows: root = √ε
    return Omega(q, scale / root, jnp.zeros((), W.dtype))


def fixed(matrix, tol: float = 1e-5) -> Omega:
    """A user-given Ω [N, N], checked and eigendecomposed once on the host (NumPy, O(N³)).

    Args:
      matrix: [N, N] symmetric positive semi-definite (e.g. a `laplacian`).
      tol: relative tolerance: |Ω − Ωᵀ| ≤ tol · max|Ω| and eigenvalues ≥ −tol · max|eig|
        (slightly negative ones are then set to 0).

    Returns:
      Omega with basis [N, N], a [N], b = 0, float32.

    Raises:
      RelationshipError: not square, not finite, asymmetric or not PSD, with the numbers.
    """
    m = _square(matrix, "Ω")
    asym = float(np.max(np.abs(m - m.T), initial=0.0))
    if asym > tol * float(np.max(np.abs(m), initial=0.0)):
        raise RelationshipError(f"Ω must be symmetric; max |Ω − Ωᵀ| = {asym:.3g}")
    eig, vec = np.linalg.eigh((m + m.T) / 2)
    top = float(np.max(np.abs(eig), initial=0.0))
    if eig.size and eig[0] < -tol * top:
        raise RelationshipError(f"Ω must be positive semi-definite; its most negative "
                                f"eigenvalue is {eig[0]:.3g} (largest |eigenvalue| {top:.3g})")
    return Omega(jnp.asarray(vec, jnp.float32), jnp.asarray(np.maximum(eig, 0.0), jnp.float32),
                 jnp.zeros((), jnp.float32))


def laplacian(adjacency) -> np.ndarray:
    """Graph Laplacian L = D − A of a weighted undirected graph, for Ω = L.

    tr(Wᵀ L W) = ½ Σ_{s,t} a_st ‖w_s − w_t‖² = Σ_{s<t} a_st ‖w_s − w_t‖², so the penalty
    (λ₁/2) tr(Wᵀ L W) is (λ₁/2) times the sum over edges of their weighted squared distance.

    Args:
      adjacency: [N, N] symmetric, non-negative, finite, zero diagonal.

    Returns:
      [N, N] float64 L (PSD, L 1 = 0).

    Raises:
      RelationshipError: naming what is wrong (shape, symmetry, sign, diagonal).
    """
    a = _square(adjacency, "adjacency")
    if (a < 0).any():
        s, t = np.unravel_index(np.argmin(a), a.shape)
        raise RelationshipError(f"adjacency must be non-negative; a[{s}, {t}] = {a[s, t]:.3g}")
    if not np.array_equal(a, a.T):
        s, t = np.unravel_index(np.argmax(np.abs(a - a.T)), a.shape)
        raise RelationshipError(f"adjacency must be symmetric; a[{s}, {t}] = {a[s, t]:.3g} but "
                                f"a[{t}, {s}] = {a[t, s]:.3g}")
    if np.diagonal(a).any():
        s = int(np.flatnonzero(np.diagonal(a))[0])
        raise RelationshipError(f"adjacency must have a zero diagonal (no self-loops); "
                                f"a[{s}, {s}] = {a[s, s]:.3g}")
    return np.diag(a.sum(axis=1)) - a


def apply(omega: Omega, X: jax.Array) -> jax.Array:
    """Ω X = U ((a − b) ⊙ Uᵀ X) + b X in O(N·r·k).

    Args:
      omega: Ω over N nodes.
      X: [N, k].

    Returns:
      [N, k].
    """
    u, a, b = omega
    return u @ ((a - b)[:, None] * (u.T @ X)) + b * X


def diagonal(omega: Omega) -> jax.Array:
    """Ω_tt = b + Σ_j (a_j − b) U_tj², [N]."""
    u, a, b = omega
    return (u * u) @ (a - b) + b


def dense(omega: Omega) -> jax.Array:
    """Ω as an [N, N] matrix (small N only)."""
    u, a, b = omega
    return (u * (a - b)[None, :]) @ u.T + b * jnp.eye(u.shape[0], dtype=u.dtype)


def sigma(omega: Omega) -> jax.Array:
    """Σ = Ω⁻¹ as an [N, N] matrix (small N only), for inspection.

    A pseudo-inverse: eigenvalues of Ω (a_j, and b when r < N) at most r · finfo.eps times
    the largest are inverted to 0, e.g. the constant vector of a Laplacian Ω, or the
    complement when b = 0.
    """
    u, a, b = omega
    dt = u.dtype
    cut = u.shape[1] * jnp.finfo(dt).eps * jnp.maximum(jnp.max(jnp.abs(a)), jnp.abs(b))
    inv = lambda v: jnp.where(jnp.abs(v) > cut, 1 / jnp.where(v == 0, 1, v), 0).astype(dt)
    inv_b = inv(b)
    return (u * (inv(a) - inv_b)[None, :]) @ u.T + inv_b * jnp.eye(u.shape[0], dtype=dt)


def coupling(omega: Omega, W: jax.Array) -> tuple[jax.Array, jax.Array]:
    """What the server sends each node: its own weight in Ω and the pull of the others.

    Node t's gradient of (1/2) tr(Wᵀ Ω W) at its current w, with the other rows at the
    server's copy W, is self_weight_t · w + pull_t (times λ₁).

    Args:
      omega: Ω over N nodes.
      W: [N, d] the server's copy of every node's parameters.

    Returns:
      pull [N, d] = (Ω W)_t − Ω_tt w_t, self_weight [N] = Ω_tt.
    """
    self_weight = diagonal(omega)
    return apply(omega, W) - self_weight[:, None] * W, self_weight


def _square(matrix, name: str) -> np.ndarray:
    """`matrix` as a finite float64 [N, N] NumPy array, or a RelationshipError."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise RelationshipError(f"{name} must be a square [N, N] matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise RelationshipError(f"{name} has {int((~np.isfinite(m)).sum())} non-finite entries")
    return m
