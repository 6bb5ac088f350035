"""Local training of ONE node: minibatch steps as a `lax.scan` over fixed-shape batches.

A node's rows are padded to S (a multiple of the batch size B) with n real rows first. Each
epoch visits the n real rows in a fresh random order in ceil(n / B) steps; the scan runs
E * S / B steps and the padded ones are exact no-ops (parameters and optimizer state kept by
`where`), so results do not depend on S. Written unbatched; the engine vmaps it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class NodeData(NamedTuple):
    """One node's padded split: x [S, *F], y [S, ...], n scalar int32 (real rows first)."""

    x: jax.Array
    y: jax.Array
    n: jax.Array


class Schedule(NamedTuple):
    """Static shape of local training: the task's loss, batch size B and E local epochs."""

    task: str = "classification"
    batch_size: int = 10
    epochs: int = 1


def shuffled_order(key: jax.Array, n: jax.Array, length: int) -> jax.Array:
    """A random order [S] of positions 0..S-1 with the n real ones first.

    With JAX's partitionable threefry (the default since 0.5) draw i of `uniform(key, (S,))`
    does not depend on S, so the order of the real rows depends only on (key, n), not on how
    much padding follows them (tests/test_engine.py checks this).
    """
    positions = jnp.arange(length)
    u = jax.random.uniform(key, (length,))
    return jnp.argsort(jnp.where(positions < n, u, jnp.inf))


def _keep_if(active, new, old):
    return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)


def minibatch_steps(
    loss_fn: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    params: Any,
    data: NodeData,
    key: jax.Array,
    schedule: Schedule,
    *,
    steps: int | None = None,
) -> tuple[Any, jax.Array, jax.Array]:
    """Trains `params` on one node's data.

    Args:
      loss_fn: (params, x [B, *F], y [B, ...], mask [B]) -> mean loss over real rows.
      optimizer: optax transformation; its state starts fresh here.
      params: pytree to train.
      data: the node's padded rows.
      key: the node's key for this call.
      schedule: batch size B and epochs E; the node takes ceil(n / B) * E real steps.
      steps: if given, take exactly this many real steps instead, cycling over one shuffled
        pass of the data (used for fine-tuning before evaluation).

    Returns:
      (trained params, summed training loss over real examples [scalar], real examples seen).
    """
    b = schedule.batch_size
    length = data.x.shape[0]
    if length % b:
        raise ValueError(f"padded length {length} is not a multiple of batch size {b}")
    per_epoch = jnp.maximum((data.n + b - 1) // b, 1)  # ceil(n / B), at least 1 to divide by
    if steps is None:
        epochs = schedule.epochs
        orders = jax.vmap(lambda k: shuffled_order(k, data.n, length))(
            jax.random.split(key, epochs)
        )
        total = epochs * (length // b)
        real_steps = epochs * ((data.n + b - 1) // b)
    else:
        orders = shuffled_order(key, data.n, length)[None]
        total = steps
        real_steps = jnp.where(data.n > 0, steps, 0)

    def step(carry, t):
        params, opt_state = carry
        epoch = jnp.minimum(t // per_epoch, orders.shape[0] - 1)
        start = (t % per_epoch) * b
        idx = jax.lax.dynamic_slice(orders[epoch], (start,), (b,))
        mask = start + jnp.arange(b) < data.n
        loss, grads = jax.value_and_grad(loss_fn)(params, data.x[idx], data.y[idx], mask)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        active = t < real_steps
        carry = _keep_if(active, (optax.apply_updates(params, updates), new_opt_state), carry)
        seen = jnp.where(active, jnp.sum(mask), 0).astype(loss.dtype)
        return carry, (loss * seen, seen)

    (params, _), (losses, seen) = jax.lax.scan(
        step, (params, optimizer.init(params)), jnp.arange(total)
    )
    return params, jnp.sum(losses), jnp.sum(seen)
