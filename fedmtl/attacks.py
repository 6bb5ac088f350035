"""Byzantine attacks: a fixed share of the nodes lie (`Federation(attack=...)`).

The attackers are chosen once per run from the seed (exactly round(fraction · N) of the N
nodes). Upload attacks replace what an attacking node that reports sends, after it trained
honestly; the algorithm's own `finish` never sees them, and only floating-point parts of an
upload are touched. A data attack changes the attackers' training data before the run.

    sign_flip         u → −s · u (s = `scale`, 1 by default)
    scaled            u → s · u (model boosting; s = 10 by default)
    gaussian          u → noise N(0, σ²) of u's shape
    little_is_enough  every attacker sends μ − z · σ, the reporting honest uploads'
                      coordinate-wise mean and standard deviation, with Baruch et al.'s
                      z = Φ⁻¹((n − s) / n), s = ⌊n/2 + 1⌋ − f, for n reporters of which f
                      attack (NeurIPS 2019: "A Little Is Enough")
    label_flip        attackers train on labels y → C − 1 − y (classification only)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm


class AttackError(ValueError):
    """An attack that cannot run: the message names the attack, its parameter and what was
    expected."""


class Attack(NamedTuple):
    """Which nodes lie and how.

    Attributes:
      name: the attack's name.
      fraction: share of the nodes that attack, in [0, 1).
      corrupt: (uploads [C, ...], weights [C], attacking [C] bool, key) -> uploads, or None
        for a data attack.
      labels: (y [R], num_classes) -> flipped labels, for a data attack (else None).
      params: the attack's other parameters, as recorded in results.
    """

    name: str
    fraction: float
    corrupt: Callable[[Any, jax.Array, jax.Array, jax.Array], Any] | None = None
    labels: Callable[[np.ndarray, int], np.ndarray] | None = None
    params: dict | None = None


def _check_fraction(name: str, fraction: float) -> float:
    if not 0 <= fraction < 1:
        raise AttackError(f"{name}: the attackers' fraction must be in [0, 1), got {fraction}")
    return float(fraction)


def attackers(fraction: float, num_nodes: int, seed: int) -> np.ndarray:
    """The attacking nodes' mask [N]: round(fraction · N) nodes drawn from the seed."""
    count = int(round(fraction * num_nodes))
    mask = np.zeros(num_nodes, bool)
    mask[np.random.default_rng([seed, 19]).permutation(num_nodes)[:count]] = True
    return mask


def _floating(uploads, attacking, new_leaf):
    """Replaces the floating leaves' rows of attacking slots with new_leaf(leaf, index)."""
    leaves, tree = jax.tree.flatten(uploads)

    def one(i, leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        lead = attacking.reshape((-1,) + (1,) * (leaf.ndim - 1))
        return jnp.where(lead, new_leaf(leaf, i).astype(leaf.dtype), leaf)

    return jax.tree.unflatten(tree, [one(i, leaf) for i, leaf in enumerate(leaves)])


def sign_flip(fraction: float, scale: float = 1.0) -> Attack:
    """Attackers send −scale × their honest update."""
    fraction = _check_fraction("sign_flip", fraction)
    return Attack("sign_flip", fraction, lambda u, w, a, key: _floating(
        u, a, lambda leaf, i: -scale * leaf), params={"scale": scale})


def scaled(fraction: float, scale: float = 10.0) -> Attack:
    """Attackers send scale × their honest update (boosting it)."""
    fraction = _check_fraction("scaled", fraction)
    return Attack("scaled", fraction, lambda u, w, a, key: _floating(
        u, a, lambda leaf, i: scale * leaf), params={"scale": scale})


def gaussian(fraction: float, std: float = 1.0) -> Attack:
    """Attackers send Gaussian noise N(0, std²) in place of their update."""
    fraction = _check_fraction("gaussian", fraction)
    if not std >= 0:
        raise AttackError(f"gaussian: std must be >= 0, got {std}")
    return Attack("gaussian", fraction, lambda u, w, a, key: _floating(
        u, a, lambda leaf, i: std * jax.random.normal(jax.random.fold_in(key, i), leaf.shape)),
        params={"std": std})


def little_is_enough(fraction: float, z: float | None = None) -> Attack:
    """Attackers all send μ − z·σ of the reporting honest uploads (coordinate-wise), z from
    Baruch et al.'s rule unless given."""
    fraction = _check_fraction("little_is_enough", fraction)

    def corrupt(uploads, weights, attacking, key):
        del key
        honest = (weights > 0) & ~attacking
        n = jnp.sum(weights > 0).astype(jnp.float32)
        f = jnp.sum(attacking & (weights > 0)).astype(jnp.float32)
        if z is None:
            s = jnp.floor(n / 2 + 1) - f
            zz = norm.ppf(jnp.clip((n - s) / jnp.maximum(n, 1.0), 0.5, 1 - 1e-6))
        else:
            zz = jnp.float32(z)
        count = jnp.maximum(jnp.sum(honest), 1).astype(jnp.float32)

        def lie(leaf, i):
            del i
            lead = honest.reshape((-1,) + (1,) * (leaf.ndim - 1))
            mu = jnp.sum(jnp.where(lead, leaf, 0.0), axis=0) / count
            var = jnp.sum(jnp.where(lead, (leaf - mu[None]) ** 2, 0.0), axis=0) / count
            return jnp.broadcast_to(mu - zz * jnp.sqrt(var), leaf.shape)

        return _floating(uploads, attacking & (weights > 0), lie)

    return Attack("little_is_enough", fraction, corrupt, params={"z": z})


def label_flip(fraction: float) -> Attack:
    """Attackers train honestly on flipped labels y → C − 1 − y."""
    fraction = _check_fraction("label_flip", fraction)
    return Attack("label_flip", fraction,
                  labels=lambda y, classes: (classes - 1 - y).astype(y.dtype))


ATTACKS = {
    "sign_flip": sign_flip, "scaled": scaled, "gaussian": gaussian,
    "little_is_enough": little_is_enough, "label_flip": label_flip,
}
