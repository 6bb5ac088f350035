"""Local training: every node alone, the baseline every report needs."""

from __future__ import annotations

import optax
from flax import nnx

from fedmtl.algorithms.base import (
    Algorithm,
    loss_name,
    optimizer,
    split_trainer,
)
from fedmtl.models import Model


def local(
    module: nnx.Module,
    *,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """Local training: each node trains its own copy of the model and nothing is exchanged.

    Node k takes E·ceil(n_k/B) minibatch steps w_k ← w_k − η ∇F_k(w_k; D) per round, from
    where it left off; the server does nothing.

    Every round trains E more local epochs from where the node left off (the optimizer state
    restarts, as in `fedavg`), so R rounds of `local` see the same data as R rounds of FedAvg.
    `local_optimizer`, `class_weights` and `loss` are as in `fedavg`.
    """
    loss = loss_name(loss, "local")
    model = Model.of(module, personal=True)
    train = split_trainer(model, optimizer(local_optimizer, "local", "local_optimizer"),
                          class_weights=class_weights, loss=loss)

    return Algorithm(
        name="local",
        model=model,
        init=lambda key, num_nodes: (),
        init_node=lambda key: model.personal,
        broadcast=lambda server: (),
        start=lambda broadcast, params: train.init((model.shared, params)),
        step=train.step,
        finish=lambda broadcast, params, state: ((), state.params[1]),
        server_update=lambda server, uploads, weights, ids, aggregate=None: server,
        models=lambda broadcast, params: {"local": (model.shared, params)},
        finetune=None,
    )
