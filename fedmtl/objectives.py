"""Per-example losses and masked per-node metric sums for classification and regression."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

METRICS = {"classification": ("accuracy", "loss"), "regression": ("rmse", "mse")}
HIGHER_IS_BETTER = {"accuracy": True, "loss": False, "rmse": False, "mse": False}


def example_losses(task: str, outputs: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example loss [B]: softmax cross-entropy (outputs [B, C], y [B] int) or squared error
    (outputs [B] or [B, 1], y [B])."""
    if task == "classification":
        return optax.softmax_cross_entropy_with_integer_labels(outputs, y)
    pred = outputs.reshape(y.shape) if outputs.size == y.size else outputs
    err = (pred - y).reshape(y.shape[0], -1)
    return jnp.mean(err * err, axis=1)


def masked_mean_loss(task: str, outputs: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean loss over the real (mask=True) examples of a batch; 0 when none is real."""
    losses = example_losses(task, outputs, y)
    count = jnp.sum(mask).astype(losses.dtype)
    return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(count, 1.0)


def metric_sums(task: str, outputs: jax.Array, y: jax.Array, mask: jax.Array) -> dict:
    """Sums over real examples of one node: {"count", "loss" | "mse", "correct"} scalars."""
    losses = jnp.where(mask, example_losses(task, outputs, y), 0.0)
    sums = {"count": jnp.sum(mask).astype(jnp.float32), "loss": jnp.sum(losses)}
    if task == "classification":
        correct = (jnp.argmax(outputs, axis=-1) == y) & mask
        sums["correct"] = jnp.sum(correct).astype(jnp.float32)
    return sums


def finish_metrics(task: str, sums: dict) -> dict:
    """Per-node metrics from sums (any leading shape): accuracy & loss, or RMSE & MSE.

    A node without test examples has no metric: NaN, which reports leave out and name.
    """
    count = jnp.where(sums["count"] > 0, sums["count"], jnp.nan)
    mean_loss = sums["loss"] / count
    if task == "classification":
        return {"accuracy": sums["correct"] / count, "loss": mean_loss}
    return {"rmse": jnp.sqrt(mean_loss), "mse": mean_loss}
