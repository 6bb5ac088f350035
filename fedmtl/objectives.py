"""Per-example losses and masked per-node metric sums for classification and regression; the
per-node ROC AUC of binary tasks, computed on the host from each test row's score."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

METRICS = {"classification": ("accuracy", "loss"), "regression": ("rmse", "mse")}
"""The metrics every task of a kind reports (a binary task reports more: see `metrics`)."""
BINARY_METRICS = ("accuracy", "balanced_accuracy", "auc", "loss")
"""The metrics of a binary classification task (num_classes == 2), in report order."""
HIGHER_IS_BETTER = {"accuracy": True, "balanced_accuracy": True, "auc": True, "loss": False,
                    "rmse": False, "mse": False}


def metrics(task: str, num_classes: int | None = None) -> tuple[str, ...]:
    """The per-node test metrics of a task, in report order: `METRICS[task]`, and for binary
    classification (num_classes == 2) also balanced accuracy and ROC AUC (`BINARY_METRICS`)."""
    if task == "classification" and num_classes == 2:
        return BINARY_METRICS
    return METRICS[task]


def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
    """Class weights [C] float32 w_c = n / (C · n_c) over the labels given (e.g. every train
    row: `data.train.y`), so that each present class weighs n / C in total; a class without
    examples gets 0."""
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes)[:num_classes]
    n = counts.sum()
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, n / (num_classes * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


LOSSES = ("cross_entropy", "hinge", "squared")
"""The training losses of a classification task, by name (`example_losses`'s `loss`);
"cross_entropy" is the default. A regression task trains on the squared error."""


def check_loss(loss: str | None) -> str | None:
    """`loss` if it is None or a name in `LOSSES`.

    Raises:
      ValueError: any other value; the message lists the names.
    """
    if loss is not None and (not isinstance(loss, str) or loss not in LOSSES):
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return loss


def _classification_losses(outputs: jax.Array, y: jax.Array, loss: str) -> jax.Array:
    if loss == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(outputs, y)
    onehot = jax.nn.one_hot(y, outputs.shape[-1], dtype=outputs.dtype)
    if loss == "hinge":  # Crammer & Singer: max(0, 1 + max_{j != y} s_j - s_y)
        true = jnp.sum(outputs * onehot, axis=-1)
        rival = jnp.max(jnp.where(onehot > 0, -jnp.inf, outputs), axis=-1)
        return jnp.maximum(0.0, 1.0 + rival - true)
    err = outputs - onehot  # "squared": mean over classes of (s_c - [c = y])^2
    return jnp.mean(err * err, axis=-1)


def example_losses(task: str, outputs: jax.Array, y: jax.Array,
                   class_weights: jax.Array | None = None,
                   loss: str | None = None) -> jax.Array:
    """Per-example loss [B] of outputs [B, C] and integer labels y [B] (classification), or
    squared error (regression: outputs [B] or [B, 1], y [B]).

    Args:
      class_weights: optional [C] weights of classification losses: example i's loss is
        multiplied by class_weights[y_i] (e.g. `balanced_class_weights`).
      loss: the classification loss, a name in `LOSSES` (None: "cross_entropy"):
        "cross_entropy": softmax cross-entropy −log softmax(s)_y;
        "hinge": the multiclass hinge of Crammer & Singer, max(0, 1 + max_{j≠y} s_j − s_y),
          which for 2 classes is the SVM hinge max(0, 1 − y±·(s_1 − s_0)), y± = 2y − 1;
        "squared": the mean over the C classes of (s_c − [c = y])², squared error on one-hot
          targets.
        A regression task takes None or "squared" (its squared error).

    Raises:
      ValueError: an unknown loss, a classification loss for regression, or class weights
        for regression.
    """
    check_loss(loss)
    if task == "classification":
        losses = _classification_losses(outputs, y, loss or "cross_entropy")
        if class_weights is not None:
            losses = losses * jnp.asarray(class_weights, losses.dtype)[y]
        return losses
    if class_weights is not None:
        raise ValueError("class weights apply to classification only")
    if loss not in (None, "squared"):
        raise ValueError(f"loss {loss!r} applies to classification only; a regression task "
                         f"trains on the squared error")
    pred = outputs.reshape(y.shape) if outputs.size == y.size else outputs
    err = (pred - y).reshape(y.shape[0], -1)
    return jnp.mean(err * err, axis=1)


def masked_mean_loss(task: str, outputs: jax.Array, y: jax.Array, mask: jax.Array,
                     class_weights: jax.Array | None = None,
                     loss: str | None = None) -> jax.Array:
    """Mean loss over the real (mask=True) examples of a batch; 0 when none is real.

    With `class_weights`, the mean of the weighted losses w[y_i] · l_i over the real examples
    (divided by their count, not by the weights' sum, so that balanced weights, whose mean
    over the training rows is 1, keep the loss's scale). `loss` names the per-example loss as
    in `example_losses` (None: cross-entropy for classification).
    """
    losses = example_losses(task, outputs, y, class_weights, loss)
    count = jnp.sum(mask).astype(losses.dtype)
    return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(count, 1.0)


def is_binary(task: str, outputs: jax.Array) -> bool:
    """Whether outputs [B, C] are those of a binary classification task (C == 2)."""
    return task == "classification" and outputs.ndim == 2 and outputs.shape[-1] == 2


def binary_scores(outputs: jax.Array) -> jax.Array:
    """Score [B] of the positive class 1: the logit difference s1 - s0 (monotone in p1)."""
    return outputs[:, 1] - outputs[:, 0]


def metric_sums(task: str, outputs: jax.Array, y: jax.Array, mask: jax.Array) -> dict:
    """Sums over real examples of one node: {"count", "loss" | "mse", "correct"} scalars, and
    for a binary task (outputs [B, 2]) per-class "class_count" [2] and "class_correct" [2]."""
    losses = jnp.where(mask, example_losses(task, outputs, y), 0.0)
    sums = {"count": jnp.sum(mask).astype(jnp.float32), "loss": jnp.sum(losses)}
    if task == "classification":
        correct = (jnp.argmax(outputs, axis=-1) == y) & mask
        sums["correct"] = jnp.sum(correct).astype(jnp.float32)
        if is_binary(task, outputs):
            onehot = jax.nn.one_hot(y, 2, dtype=jnp.float32) * mask[:, None].astype(jnp.float32)
            sums["class_count"] = jnp.sum(onehot, axis=0)
            sums["class_correct"] = jnp.sum(onehot * correct[:, None].astype(jnp.float32),
                                            axis=0)
    return sums


def finish_metrics(task: str, sums: dict) -> dict:
    """Per-node metrics from sums (any leading shape): accuracy & loss (and for binary tasks
    balanced accuracy: the mean recall over the classes the node's test set holds), or RMSE &
    MSE. ROC AUC is not a sum: `node_auc` computes it from the scores.

    A node without test examples has no metric: NaN, which reports leave out and name.
    """
    count = jnp.where(sums["count"] > 0, sums["count"], jnp.nan)
    mean_loss = sums["loss"] / count
    if task != "classification":
        return {"rmse": jnp.sqrt(mean_loss), "mse": mean_loss}
    out = {"accuracy": sums["correct"] / count}
    if "class_count" in sums:
        present = sums["class_count"] > 0
        recall = sums["class_correct"] / jnp.where(present, sums["class_count"], 1.0)
        classes = jnp.sum(present, axis=-1).astype(recall.dtype)
        out["balanced_accuracy"] = (jnp.sum(jnp.where(present, recall, 0.0), axis=-1)
                                    / jnp.where(classes > 0, classes, jnp.nan))
    out["loss"] = mean_loss
    return out


def node_auc(scores, labels, counts) -> np.ndarray:
    """Exact ROC AUC of every node [N] float64, vectorized over nodes (no loop).

    The Mann-Whitney statistic with ties counted 1/2: the share of (positive, negative) pairs
    of a node whose positive scores higher. Rows are stored node after node.

    Args:
      scores: [T] score of each row (higher: more likely class 1).
      labels: [T] 0/1 labels.
      counts: [N] rows per node (summing to T).

    Returns:
      [N]: NaN where the AUC is undefined (a node whose rows hold only one class, or none)
      and where a node has a non-finite score.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    counts = np.asarray(counts, np.int64)
    n = len(counts)
    segment = np.repeat(np.arange(n), counts)
    if len(scores) != len(segment) or len(labels) != len(segment):
        raise ValueError(f"{len(scores)} scores and {len(labels)} labels for "
                         f"{len(segment)} rows (the sum of counts)")
    positive = labels == 1
    n1 = np.bincount(segment, weights=positive, minlength=n)
    n0 = counts - n1
    finite = np.bincount(segment, weights=~np.isfinite(scores), minlength=n) == 0
    safe = np.where(np.isfinite(scores), scores, 0.0)
    order = np.lexsort((safe, segment))  # by node, then score
    s, seg = safe[order], segment[order]
    t = len(s)
    # tie groups: runs of equal (node, score); each row's midrank within its node, 1-based
    new = np.ones(t, bool)
    new[1:] = (s[1:] != s[:-1]) | (seg[1:] != seg[:-1])
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], t) - 1
    offsets = np.concatenate([[0], np.cumsum(counts)])[:-1]
    midrank = (starts[group] + ends[group]) / 2.0 - offsets[seg] + 1.0
    rank_sum = np.bincount(seg, weights=midrank * positive[order], minlength=n)
    pairs = n1 * n0
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n1 * (n1 + 1) / 2.0) / pairs
    return np.where((pairs > 0) & finite, auc, np.nan)
