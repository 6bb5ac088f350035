"""Split models: a shared body federated like FedAvg, a personal part that never leaves the
node (FedPer)."""

from __future__ import annotations

from typing import Any

import optax
from flax import nnx

from fedmtl.algorithms.base import (
    Algorithm,
    delta,
    federated_parts,
)


def fedper(
    module: nnx.Module,
    *,
    personal: Any = "head",
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedPer (Arivazhagan et al., 2019): the body is federated like FedAvg while each node
    keeps its own head, trained jointly with the body and never sent to the server.

    Args:
      module: the model.
      personal: path filter of the personal parameters (default: those under "head").
      local_optimizer, server_optimizer, class_weights, loss: as in `fedavg`.

    Raises:
      AlgorithmError: `personal` leaves nothing shared (e.g. `LogisticRegression`, whose only
        layer is its head: that would be local training) or nothing personal; an unknown
        loss.
    """
    model, init, server_update, train = federated_parts(
        "fedper", module, personal, local_optimizer, server_optimizer, class_weights, loss)

    return Algorithm(
        name="fedper",
        model=model,
        init=init,
        init_node=lambda key: model.personal,
        broadcast=lambda server: server.params,
        start=lambda shared, head: train.init((shared, head)),
        step=train.step,
        finish=lambda shared, head, state: (delta(state.params[0], shared), state.params[1]),
        server_update=server_update,
        models=lambda shared, head: {"personalized": (shared, head)},
        finetune=None,
    )
