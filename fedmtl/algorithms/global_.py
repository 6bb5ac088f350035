"""Algorithms with one global model: FedAvg (and, through its server optimizer, FedAdam and
friends)."""

from __future__ import annotations

import optax
from flax import nnx

from fedmtl.algorithms.base import (
    Algorithm,
    delta,
    federated_parts,
)


def fedavg(
    module: nnx.Module,
    *,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedAvg (McMahan et al., AISTATS 2017): E local epochs of minibatch training on each
    node, then the server averages the parameter deltas weighted by node example counts.

    Args:
      module: the model, all of it shared.
      local_optimizer: node optimizer (a float means SGD with that learning rate); its state
        restarts every round.
      server_optimizer: applied to the averaged delta as a pseudo-gradient; SGD(1.0) is plain
        FedAvg, `optax.adam(...)` FedAdam (Reddi et al., 2021).
      class_weights: optional [C] per-class weights of the training loss for rare classes
        (e.g. `objectives.balanced_class_weights(data.train.y, C)`); fine-tuning uses them too.
      loss: the training loss of a classification task, a name in `objectives.LOSSES`:
        "cross_entropy" (None, the default), "hinge" (multiclass SVM hinge of Crammer &
        Singer) or "squared" (on one-hot targets); fine-tuning uses it too. Test metrics
        (accuracy, the reported cross-entropy "loss", ...) do not depend on it.

    Raises:
      AlgorithmError: an optimizer that is neither an optax transformation nor a finite
        learning rate > 0, or an unknown loss.

    Example:
      >>> algo = fedavg(MLP(60, [64], 10, rngs=nnx.Rngs(0)), local_optimizer=0.05)
    """
    model, init, server_update, train = federated_parts(
        "fedavg", module, None, local_optimizer, server_optimizer, class_weights, loss)

    return Algorithm(
        name="fedavg",
        model=model,
        init=init,
        init_node=lambda key: (),
        broadcast=lambda server: server.params,
        start=lambda shared, node: train.init((shared, model.personal)),
        step=train.step,
        finish=lambda shared, node, state: (delta(state.params[0], shared), node),
        server_update=server_update,
        models=lambda shared, node: {"global": (shared, model.personal)},
        finetune=train,
    )
