"""Differential privacy of what nodes upload: DP-FedAvg's clipping and Gaussian noise, added
by the server to the sum (central) or by every node to its own upload (local), with adaptive
clipping; `fedmtl.accounting` turns the noise into ε.

Central DP (McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018, DP-FedAvg), per round, over the reporting nodes k:

    Δ̃_k  = Δ_k · min(1, S / ‖Δ_k‖)           the node's whole upload, flat (per_layer: each of
                                              its L leaves to S/√L, so ‖Δ̃_k‖ <= S still)
    mean  = (Σ_k w_k Δ̃_k + N(0, (z_Δ S ŵ)² I)) / D
    w_k   = 1 (weight_cap None: every node counts once)  or  min(n_k, ŵ) (examples, capped)
    D     = E[Σ_k w_k], the expected total weight of a round's cohort: a fixed denominator, so
            one node moves the mean by at most S ŵ / D and dropouts shrink it instead of
            telling the server who dropped (ŵ = 1 when weight_cap is None)

Per-node parts the server keeps rather than averages (MOCHA's personal columns, SCAFFOLD's
control variates) get N(0, (z_Δ S)² I) each: the clip is joint over the whole upload, so the
round is one Gaussian mechanism of multiplier z_Δ whatever the algorithm does with the parts.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with
Adaptive Clipping", NeurIPS 2021) moves S towards the γ-quantile of the update norms:

    b̄ = (Σ_k 1[‖Δ_k‖ <= S] + N(0, σ_b²)) / E[m];   S ← S · exp(−η (b̄ − γ))

and the update's noise multiplier is z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), so the pair costs as much
privacy as one mechanism of multiplier z (without adaptive clipping z_Δ = z).

Local DP: each node clips its own upload to S and adds N(0, (z S)² I) before it leaves the
node; the server then aggregates as it would without DP (any robust rule included).

What is protected: everything a node uploads, for the node as a whole (user-level DP).
Personal parameters that never leave the node are not noised and need not be; evaluation on
node data is not private.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedmtl import accounting

WHERE = ("central", "local")


class PrivacyError(ValueError):
    """A privacy setting that cannot work: names the setting and what was expected."""


class Privacy(NamedTuple):
    """Differential privacy of the uploads (`Federation(privacy=...)`); build it with
    `central(...)` or `local(...)`, which check every field.

    Attributes:
      where: "central" (the server noises the sum) or "local" (each node noises its upload).
      clip: S, the L2 bound of a node's upload (the starting S under adaptive clipping).
      noise_multiplier: z; None: calibrated from `epsilon`.
      epsilon: target ε after the federation's rounds (calibrates z); None: z is given.
      delta: δ at which ε is stated.
      per_layer: clip each leaf of the upload to S/√L instead of the whole upload to S.
      weight_cap: None: every reporting node weighs 1; a number ŵ: weight min(n_k, ŵ).
      target_quantile: γ for adaptive clipping; None: S stays fixed.
      clip_learning_rate: η of adaptive clipping.
      count_noise: σ_b of adaptive clipping's count (None: expected cohort / 20, the paper's).
      accountant: "rdp" or "pld" (dp-accounting's), for calibration and the final ε.
    """

    where: str = "central"
    clip: float = 1.0
    noise_multiplier: float | None = None
    epsilon: float | None = None
    delta: float = 1e-5
    per_layer: bool = False
    weight_cap: float | None = None
    target_quantile: float | None = None
    clip_learning_rate: float = 0.2
    count_noise: float | None = None
    accountant: str = "rdp"


def _number(name: str, value, *, above=None, minimum=None, below=None, finite=True):
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    ok = ok and not (finite and not math.isfinite(value)) and not math.isnan(value)
    ok = ok and (above is None or value > above) and (minimum is None or value >= minimum)
    ok = ok and (below is None or value < below)
    if not ok:
        bounds = [f"> {above}" if above is not None else "",
                  f">= {minimum}" if minimum is not None else "",
                  f"< {below}" if below is not None else ""]
        raise PrivacyError(f"privacy: {name} must be a {'finite ' if finite else ''}number "
                           f"{' and '.join(b for b in bounds if b)}, got {value!r}")


def check(p: Privacy) -> Privacy:
    """Every field of p, with a named error for the first that cannot work."""
    if p.where not in WHERE:
        raise PrivacyError(f"privacy: where must be one of {WHERE}, got {p.where!r}")
    _number("clip", p.clip, above=0, finite=False)
    if (p.noise_multiplier is None) == (p.epsilon is None):
        raise PrivacyError("privacy: give exactly one of noise_multiplier (z) and epsilon (a "
                           "target ε that calibrates z)")
    if p.noise_multiplier is not None:
        _number("noise_multiplier", p.noise_multiplier, minimum=0)
        if p.noise_multiplier > 0 and not math.isfinite(p.clip):
            raise PrivacyError("privacy: noise needs a finite clip norm (clip = inf bounds "
                               "nothing)")
    if p.epsilon is not None:
        _number("epsilon", p.epsilon, above=0)
        _number("clip", p.clip, above=0)
    _number("delta", p.delta, above=0, below=1)
    if p.weight_cap is not None:
        _number("weight_cap", p.weight_cap, above=0)
    if p.accountant not in accounting.ACCOUNTANTS:
        raise PrivacyError(f"privacy: accountant must be one of {accounting.ACCOUNTANTS}, "
                           f"got {p.accountant!r}")
    if p.target_quantile is not None:
        if p.where == "local":
            raise PrivacyError("privacy: adaptive clipping (target_quantile) needs central DP: "
                               "it estimates the quantile from a noised count at the server")
        _number("target_quantile", p.target_quantile, above=0, below=1)
        _number("clip_learning_rate", p.clip_learning_rate, above=0)
        _number("clip", p.clip, above=0)
        if p.count_noise is not None:
            _number("count_noise", p.count_noise, above=0)
    return p


def central(clip: float = 1.0, noise_multiplier: float | None = None, *,
            epsilon: float | None = None, delta: float = 1e-5, per_layer: bool = False,
            weight_cap: float | None = None, target_quantile: float | None = None,
            clip_learning_rate: float = 0.2, count_noise: float | None = None,
            accountant: str = "rdp") -> Privacy:
    """DP-FedAvg: the server clips every upload to `clip` and noises the sum.

    Example:
      >>> fed = Federation(rounds=100, systems=Systems(sampling="poisson", sample_rate=0.1),
      ...                  privacy=privacy.central(clip=0.5, epsilon=4.0, delta=1e-5))
    """
    return check(Privacy("central", clip, noise_multiplier, epsilon, delta, per_layer,
                         weight_cap, target_quantile, clip_learning_rate, count_noise,
                         accountant))


def local(clip: float = 1.0, noise_multiplier: float | None = None, *,
          epsilon: float | None = None, delta: float = 1e-5, per_layer: bool = False,
          accountant: str = "rdp") -> Privacy:
    """Local DP: every node clips its upload to `clip` and adds N(0, (z·clip)²) itself."""
    return check(Privacy("local", clip, noise_multiplier, epsilon, delta, per_layer,
                         accountant=accountant))


class Mechanism(NamedTuple):
    """A `Privacy` resolved for one federation (host numbers, fixed before training).

    Attributes:
      privacy: the user's setting.
      round: what the accountant knows of a round (`accounting.Round`).
      noise_multiplier: z (calibrated when a target ε was given).
      update_noise: z_Δ, the update's share of z under adaptive clipping (else z).
      count_noise: σ_b of adaptive clipping (0 without it).
      cap: ŵ (1 when every node weighs 1).
      denominator: D, the expected total weight of a round's reporters.
      expected: E[m], the expected number of reporters.
    """

    privacy: Privacy
    round: accounting.Round
    noise_multiplier: float
    update_noise: float
    count_noise: float
    cap: float
    denominator: float
    expected: float

    def epsilon(self, rounds: int) -> float:
        """ε after `rounds` rounds at the setting's δ, by its accountant."""
        p = self.privacy
        return accounting.epsilon(p.accountant, self.round, self.noise_multiplier, rounds,
                                  p.delta)


def accounted_round(p: Privacy, systems, cohort_size: int | None,
                    num_nodes: int) -> tuple[accounting.Round, float]:
    """(the accountant's view of a round, a node's probability of being in a cohort) under a
    `fedmtl.systems.Systems` (see `fedmtl.accounting`)."""
    n = num_nodes
    poisson = systems.sampling == "poisson"
    c = n if cohort_size is None else min(cohort_size, n)
    inclusion = float(systems.sample_rate) if poisson else c / n
    if p.where == "local":  # the server sees who took part: no amplification, Poisson or not
        return accounting.Round("local", n, description="local DP, every round"), inclusion
    if poisson:
        return accounting.Round("poisson", n, rate=inclusion,
                                description=f"Poisson sampling, q = {inclusion:g}"), inclusion
    if c == n:
        return accounting.Round("every_round", n, description="every node, every round"), 1.0
    if systems.sampling == "uniform" and not systems.limits_availability:
        return accounting.Round("without_replacement", n, c, description=(
            f"uniform cohort of {c} of {n}, without replacement")), c / n
    return accounting.Round("every_round", n, description=(
        f"{systems.sampling} cohort of {c} of {n}: no amplification by sampling claimed")), c / n


def resolve(p: Privacy, round_: accounting.Round, rounds: int, expected: float,
            denominator_weights: np.ndarray, inclusion: float) -> Mechanism:
    """The mechanism of a federation: z (calibrated to p.epsilon over `rounds` if asked), the
    adaptive split of z, and D.

    Args:
      round_: the accountant's view of a round.
      expected: E[m], the expected reporters of a round.
      denominator_weights: each node's upload weight before capping [N] (examples, or 1).
      inclusion: a node's probability of being in a round's cohort.
    """
    try:
        z = (p.noise_multiplier if p.epsilon is None
             else accounting.calibrate(p.accountant, round_, rounds, p.epsilon, p.delta))
        accounting.accountant(p.accountant, round_)  # PLD with a fixed cohort: named error
    except accounting.AccountingError as e:
        raise PrivacyError(f"privacy: {e}") from None
    sigma_b, z_update = 0.0, z
    if p.target_quantile is not None:
        sigma_b = expected / 20 if p.count_noise is None else p.count_noise
        if z > 0:
            if 2 * sigma_b <= z:
                raise PrivacyError(
                    f"privacy: adaptive clipping's count noise σ_b = {sigma_b:g} must exceed "
                    f"z/2 = {z / 2:g} (its share of the noise budget); raise count_noise or "
                    "the cohort")
            z_update = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5
    cap = 1.0 if p.weight_cap is None else float(p.weight_cap)
    weights = (np.ones_like(denominator_weights, np.float64) if p.weight_cap is None
               else np.minimum(denominator_weights, cap))
    denominator = float(inclusion * np.sum(weights))
    return Mechanism(p, round_, float(z), float(z_update), float(sigma_b), cap,
                     max(denominator, 1e-30), float(expected))


# ----- the round (pure, inside jit) -----

def clip_uploads(uploads, bound, per_layer: bool):
    """(uploads [C, ...] each scaled to L2 norm <= bound, norms before clipping [C]).

    per_layer: each of the L leaves to bound/√L.
    """
    leaves, treedef = jax.tree.flatten(uploads)
    sq = [jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1) for x in leaves]
    norms = jnp.sqrt(sum(sq))
    tiny = jnp.finfo(jnp.float32).tiny
    if per_layer:
        b = bound / math.sqrt(len(leaves))
        scales = [jnp.minimum(1.0, b / jnp.maximum(jnp.sqrt(s), tiny)) for s in sq]
    else:
        scales = [jnp.minimum(1.0, bound / jnp.maximum(norms, tiny))] * len(leaves)
    out = [x * s.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
           for x, s in zip(leaves, scales, strict=True)]
    return jax.tree.unflatten(treedef, out), norms


def _gaussian(tree, std, key):
    """N(0, std²) with the shape of every leaf of tree, each leaf its own key."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree.unflatten(treedef, [
        std.astype(x.dtype) * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=False)])


def _rows(mask, x):
    return mask.reshape((-1,) + (1,) * (x.ndim - 1))


def on_nodes(m: Mechanism, uploads, weights, key):
    """Local DP: every reporting node's upload clipped to S and noised with N(0, (zS)²)."""
    clipped, _ = clip_uploads(uploads, m.privacy.clip, m.privacy.per_layer)
    if m.noise_multiplier == 0:
        return clipped
    noise = _gaussian(clipped, jnp.asarray(m.noise_multiplier * m.privacy.clip, jnp.float32),
                      key)
    reported = weights > 0
    return jax.tree.map(lambda u, n: jnp.where(_rows(reported, u), u + n, u), clipped, noise)


class NoisedMean:
    """The `aggregate` central DP hands `server_update`: each call's mean is DP-FedAvg's
    noised, fixed-denominator mean; `release` noises per-node parts the server keeps. Every
    call draws fresh noise (its own fold_in of the round's key)."""

    def __init__(self, m: Mechanism, bound, key):
        self.m, self.bound, self.key, self.calls = m, bound, key, 0

    def _key(self):
        self.calls += 1
        return jax.random.fold_in(self.key, self.calls)

    def __call__(self, uploads, weights):
        m = self.m
        w = (weights > 0).astype(jnp.float32) if m.privacy.weight_cap is None else jnp.minimum(
            weights, m.cap)
        kept = lambda u: jnp.where(_rows(w > 0, u), u, 0)  # a non-reporter's row is junk
        total = jax.tree.map(lambda u: jnp.tensordot(w / m.denominator, kept(u), axes=1),
                             uploads)
        if m.update_noise == 0:  # exactly the clipped, fixed-denominator mean
            return total
        std = jnp.asarray(m.update_noise * m.cap / m.denominator, jnp.float32) * self.bound
        return jax.tree.map(jnp.add, total, _gaussian(total, std, self._key()))

    def release(self, rows, weights):
        """rows [C, ...] that the server keeps per node, each reporter's noised."""
        if self.m.update_noise == 0:
            return rows
        std = jnp.asarray(self.m.update_noise, jnp.float32) * self.bound
        noise = _gaussian(rows, std, self._key())
        reported = weights > 0
        return jax.tree.map(lambda r, n: jnp.where(_rows(reported, r), r + n, r), rows, noise)


def at_server(m: Mechanism, uploads, weights, bound, key):
    """Central DP's round at the server: (clipped uploads, the noised `aggregate`, next S,
    metrics {clip_norm, clipped share}).

    Args:
      uploads: leaves [C, ...]; weights [C] (0: did not report); bound: this round's S [].
    """
    k_mean, k_count = jax.random.split(key)
    clipped, norms = clip_uploads(uploads, bound, m.privacy.per_layer)
    reported = weights > 0
    inside = reported & (norms <= bound)
    count = jnp.sum(reported).astype(jnp.float32)
    metrics = {"clip_norm": bound,
               "clipped": jnp.sum(reported & ~inside).astype(jnp.float32) / jnp.maximum(count,
                                                                                       1.0)}
    p = m.privacy
    if p.target_quantile is None:
        nxt = bound
    else:
        noisy = jnp.sum(inside).astype(jnp.float32) + m.count_noise * jax.random.normal(
            k_count, ())
        b_bar = noisy / m.expected
        nxt = bound * jnp.exp(-p.clip_learning_rate * (b_bar - p.target_quantile))
    return clipped, NoisedMean(m, bound, k_mean), nxt.astype(jnp.float32), metrics


def integer_leaves(shapes: Any) -> list[str]:
    """Paths of the non-float leaves of one upload's shapes (cannot be clipped or noised)."""
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return [jax.tree_util.keystr(path) for path, s in flat
            if not jnp.issubdtype(s.dtype, jnp.floating)]
