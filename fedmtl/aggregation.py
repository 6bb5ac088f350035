"""Aggregators: plain functions from uploads with a leading node axis [C, ...] to one update."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_mean(uploads, weights: jax.Array):
    """Σ_k w_k u_k / Σ_k w_k over the node axis; zero-weight nodes contribute nothing.

    Args:
      uploads: pytree with leaves [C, ...].
      weights: [C] non-negative (e.g. example counts; 0 for absent nodes).
    """
    w = weights / jnp.maximum(jnp.sum(weights), jnp.finfo(weights.dtype).tiny)
    return jax.tree.map(lambda u: jnp.tensordot(w, u, axes=1), uploads)
