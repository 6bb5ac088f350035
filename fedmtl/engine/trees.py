"""Pytree helpers of the engine: leaves [L, ...] selected by lane masks, rows gathered and
scattered by index, buffers of zeros, sums over the devices of the mesh."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedmtl.devices import AXIS


def lead(mask: jax.Array, like: jax.Array) -> jax.Array:
    """A lane mask [L] shaped to broadcast against `like` [L, ...]."""
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))


def select(mask, new, old):
    return jax.tree.map(lambda a, b: jnp.where(lead(mask, a), a, b), new, old)


def gather(tree, ids):
    return jax.tree.map(lambda leaf: leaf[ids], tree)


def scatter(tree, ids, values):
    """tree[ids] = values, skipping ids out of range (lanes with nothing to write)."""
    return jax.tree.map(lambda leaf, v: leaf.at[ids].set(v, mode="drop"), tree, values)


def psum(tree):
    """Sum over the mesh's devices (inside `_spmd`); booleans: any."""
    return jax.tree.map(lambda a: (jax.lax.psum(a.astype(jnp.int32), AXIS) > 0
                                   if a.dtype == jnp.bool_ else jax.lax.psum(a, AXIS)), tree)


def zeros(shapes, lead: int):
    return jax.tree.map(lambda s: jnp.zeros((lead,) + s.shape, s.dtype), shapes)
