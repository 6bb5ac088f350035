"""Byzantine-robust aggregation rules: where an algorithm averages uploads, one of these can
replace the weighted mean (`Federation(aggregator=...)`), so every algorithm runs under every
rule unchanged.

A rule is an `Aggregator`: `aggregate(uploads, weights, key)` maps uploads with a leading
node axis (leaves [C, ...]) and weights [C] (0: the slot did not report) to one upload-shaped
pytree. Rules that look at whole updates (Krum, the geometric median, clipping) treat a
node's upload as one flat vector [d] (`jax.flatten_util.ravel_pytree`); coordinate-wise rules
work element by element. Only reporting slots (weight > 0) count; with none reporting a rule
returns zeros (the engine then leaves the server as it was).

    mean              Σ w_k u_k / Σ w_k (FedAvg's; the default)
    median            coordinate-wise median of the reporters (Yin et al., ICML 2018)
    trimmed_mean      per coordinate, drop the ⌊β·m⌋ smallest and largest of the m reporters
                      and average the rest (Yin et al., ICML 2018)
    krum              the reporter whose m − f − 2 nearest other reporters are closest in
                      squared distance (Blanchard et al., NeurIPS 2017); needs m > 2f + 2
    multi_krum        the mean of the `select` best-scored reporters by Krum's score
    geometric_median  RFA's smoothed Weiszfeld iterations (Pillutla, Kakade, Harchaoui,
                      IEEE TSP 2022): v ← Σ β_k u_k / Σ β_k, β_k = w_k / max(ν, ‖v − u_k‖),
                      from the weighted mean
    norm_bound        clip every update to norm M, then the weighted mean (Sun et al. 2019)
    centered_clip     v ← v + (1/m) Σ_k (u_k − v) · min(1, τ / ‖u_k − v‖), L times
                      (Karimireddy, He, Jaggi, ICML 2021), from the coordinate-wise median
                      (the paper centres on the previous round's aggregate)

Rules other than mean, geometric_median and norm_bound weigh every reporter equally, as in
their papers: the weights only say who reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedmtl.aggregation import weighted_mean


class RobustnessError(ValueError):
    """A robust rule that cannot work: the message names the rule, its parameter and what was
    expected (e.g. Krum needs more nodes than 2f + 2)."""


class Aggregator(NamedTuple):
    """A rule from uploads [C, ...] and weights [C] to one upload.

    Attributes:
      name: the rule's name.
      aggregate: (uploads, weights [C], key) -> one upload-shaped pytree.
      check: (expected reporters per round) -> None, raising RobustnessError when the rule
        cannot work for that cohort.
      params: the rule's parameters, as recorded in results.
    """

    name: str
    aggregate: Callable[[Any, jax.Array, jax.Array], Any]
    check: Callable[[int], None] = lambda reporters: None
    params: dict | None = None


def flat_uploads(uploads):
    """(vectors [C, d], unravel: [d] -> one upload)."""
    one = jax.tree.map(lambda leaf: leaf[0], uploads)
    _, unravel = ravel_pytree(one)
    return jax.vmap(lambda u: ravel_pytree(u)[0])(uploads), unravel


def _by_vector(rule: Callable[[jax.Array, jax.Array], jax.Array]):
    """A rule on vectors [C, d] and weights [C] as a rule on upload pytrees."""

    def aggregate(uploads, weights, key):
        del key
        vectors, unravel = flat_uploads(uploads)
        reported = weights > 0
        out = rule(vectors, weights)
        return unravel(jnp.where(jnp.any(reported), out, jnp.zeros_like(out)))

    return aggregate


def _sorted_reporters(x, reported):
    """Each column of x [C, d] sorted with non-reporters last (as +inf), and the count m."""
    return jnp.sort(jnp.where(reported[:, None], x, jnp.inf), axis=0), jnp.sum(reported)


def _coordinate_median(x, weights):
    s, m = _sorted_reporters(x, weights > 0)
    lo, hi = jnp.maximum((m - 1) // 2, 0), jnp.maximum(m // 2, 0)
    return (s[lo] + s[hi]) / 2


def mean() -> Aggregator:
    """The weighted mean Σ w_k u_k / Σ w_k (FedAvg's rule)."""
    return Aggregator("mean", lambda uploads, weights, key: weighted_mean(uploads, weights))


def median() -> Aggregator:
    """The coordinate-wise median of the reporting uploads (the mean of the two middle values
    when their number is even)."""
    return Aggregator("median", _by_vector(_coordinate_median))


def trimmed_mean(trim: float = 0.1) -> Aggregator:
    """Per coordinate, the mean of the reporters' values after dropping the ⌊trim · m⌋
    smallest and the ⌊trim · m⌋ largest (0 <= trim < 0.5)."""
    if not 0 <= trim < 0.5:
        raise RobustnessError(f"trimmed_mean: trim must be in [0, 0.5), got {trim}")

    def rule(x, weights):
        s, m = _sorted_reporters(x, weights > 0)
        b = jnp.floor(trim * m.astype(jnp.float32)).astype(m.dtype)
        rank = jnp.arange(x.shape[0])[:, None]
        keep = (rank >= b) & (rank < m - b)
        return jnp.sum(jnp.where(keep, s, 0.0), axis=0) / jnp.maximum(m - 2 * b, 1).astype(
            x.dtype)

    return Aggregator("trimmed_mean", _by_vector(rule), params={"trim": trim})


def _krum_scores(x, reported, byzantine: int):
    """Krum's score of every slot [C]: the sum of squared distances to its m − f − 2 nearest
    other reporters (at least 1, at most m − 1); +inf for non-reporters."""
    sq = jnp.sum(x * x, axis=1)
    d = jnp.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    c = x.shape[0]
    other = reported[None, :] & ~jnp.eye(c, dtype=bool)
    d = jnp.sort(jnp.where(other, d, jnp.inf), axis=1)
    m = jnp.sum(reported)
    k = jnp.clip(m - byzantine - 2, 1, jnp.maximum(m - 1, 1))
    near = jnp.arange(c)[None, :] < k
    scores = jnp.sum(jnp.where(near & jnp.isfinite(d), d, 0.0), axis=1)  # a lone reporter: 0
    return jnp.where(reported, scores, jnp.inf)


def _check_krum(name: str, byzantine: int):
    def check(reporters: int) -> None:
        if reporters <= 2 * byzantine + 2:
            raise RobustnessError(
                f"{name}: Krum needs more nodes per round than 2f + 2 = {2 * byzantine + 2} "
                f"(f = {byzantine} Byzantine nodes), the cohort has {reporters}")

    return check


def _check_byzantine(name: str, byzantine) -> int:
    if isinstance(byzantine, bool) or not isinstance(byzantine, int) or byzantine < 0:
        raise RobustnessError(f"{name}: byzantine must be a whole number >= 0, got "
                              f"{byzantine!r}")
    return byzantine


def krum(byzantine: int = 1) -> Aggregator:
    """The reporting upload with the smallest Krum score, for up to f = `byzantine` Byzantine
    nodes."""
    f = _check_byzantine("krum", byzantine)

    def rule(x, weights):
        return x[jnp.argmin(_krum_scores(x, weights > 0, f))]

    return Aggregator("krum", _by_vector(rule), _check_krum("krum", f), {"byzantine": f})


def multi_krum(byzantine: int = 1, select: int | None = None) -> Aggregator:
    """The unweighted mean of the `select` reporting uploads with the best Krum scores
    (default m − f of the m reporters)."""
    f = _check_byzantine("multi_krum", byzantine)
    if select is not None and (not isinstance(select, int) or select < 1):
        raise RobustnessError(f"multi_krum: select must be a whole number >= 1, got {select!r}")

    def rule(x, weights):
        reported = weights > 0
        scores = _krum_scores(x, reported, f)
        m = jnp.sum(reported)
        count = jnp.maximum(m - f, 1) if select is None else jnp.minimum(select, m)
        rank = jnp.zeros(x.shape[0], jnp.int32).at[jnp.argsort(scores)].set(
            jnp.arange(x.shape[0], dtype=jnp.int32))
        chosen = (rank < count) & reported
        return jnp.sum(jnp.where(chosen[:, None], x, 0.0), axis=0) / jnp.maximum(
            jnp.sum(chosen), 1).astype(x.dtype)

    def check(reporters: int) -> None:
        _check_krum("multi_krum", f)(reporters)
        if select is not None and select > reporters:
            raise RobustnessError(f"multi_krum: select = {select} exceeds the cohort's "
                                  f"{reporters} nodes")

    return Aggregator("multi_krum", _by_vector(rule), check,
                      {"byzantine": f, "select": select})


def geometric_median(iterations: int = 10, nu: float = 1e-6) -> Aggregator:
    """RFA's weighted geometric median by `iterations` smoothed Weiszfeld steps from the
    weighted mean; ν > 0 keeps a step finite when v meets an upload."""
    if not isinstance(iterations, int) or iterations < 1 or not nu > 0:
        raise RobustnessError(f"geometric_median: iterations must be >= 1 and nu > 0, got "
                              f"{iterations}, {nu}")

    def rule(x, weights):
        alpha = weights / jnp.maximum(jnp.sum(weights), jnp.finfo(weights.dtype).tiny)

        def step(_, v):
            beta = alpha / jnp.maximum(nu, jnp.linalg.norm(x - v[None, :], axis=1))
            return beta @ x / jnp.maximum(jnp.sum(beta), jnp.finfo(x.dtype).tiny)

        return jax.lax.fori_loop(0, iterations, step, alpha @ x)

    return Aggregator("geometric_median", _by_vector(rule),
                      params={"iterations": iterations, "nu": nu})


def clip_rows(x, bound):
    """Rows of x [C, d] scaled to norm <= bound."""
    norm = jnp.linalg.norm(x, axis=1, keepdims=True)
    return x * jnp.minimum(1.0, bound / jnp.maximum(norm, jnp.finfo(x.dtype).tiny))


def norm_bound(max_norm: float) -> Aggregator:
    """The weighted mean of the uploads clipped to norm <= `max_norm`."""
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise RobustnessError(f"norm_bound: max_norm must be finite and > 0, got {max_norm}")

    def rule(x, weights):
        w = weights / jnp.maximum(jnp.sum(weights), jnp.finfo(weights.dtype).tiny)
        return w @ clip_rows(x, max_norm)

    return Aggregator("norm_bound", _by_vector(rule), params={"max_norm": max_norm})


def centered_clip(tau: float, iterations: int = 3) -> Aggregator:
    """Centered clipping with radius τ, `iterations` steps from the coordinate-wise median."""
    if not (math.isfinite(tau) and tau > 0) or not isinstance(iterations, int) or iterations < 1:
        raise RobustnessError(f"centered_clip: tau must be finite and > 0 and iterations >= 1, "
                              f"got {tau}, {iterations}")

    def rule(x, weights):
        reported = (weights > 0)[:, None]
        m = jnp.maximum(jnp.sum(weights > 0), 1).astype(x.dtype)

        def step(_, v):
            moved = jnp.where(reported, clip_rows(x - v[None, :], tau), 0.0)
            return v + jnp.sum(moved, axis=0) / m

        return jax.lax.fori_loop(0, iterations, step, _coordinate_median(x, weights))

    return Aggregator("centered_clip", _by_vector(rule),
                      params={"tau": tau, "iterations": iterations})


AGGREGATORS = {
    "mean": mean, "median": median, "trimmed_mean": trimmed_mean, "krum": krum,
    "multi_krum": multi_krum, "geometric_median": geometric_median, "norm_bound": norm_bound,
    "centered_clip": centered_clip,
}
