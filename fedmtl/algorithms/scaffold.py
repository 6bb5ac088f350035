"""SCAFFOLD (Karimireddy et al., ICML 2020): FedAvg whose local steps are corrected by
control variates, c − c_i, that estimate the drift of each node's gradients from the mean."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fedmtl.algorithms.base import (
    Algorithm,
    AlgorithmError,
    ServerState,
    delta,
    delta_server,
    loss_name,
    optimizer,
    release,
    split,
    split_trainer,
    traced,
)
from fedmtl.training import TrainState


class ScaffoldServer(NamedTuple):
    """params: the global model x; opt_state: the server optimizer's; control_sum: Σ_i c_i
    over the nodes (shaped like x); known: [N] bool, nodes that have reported with data."""

    params: Any
    opt_state: Any
    control_sum: Any
    known: jax.Array


class ScaffoldBroadcast(NamedTuple):
    """What every node receives: the global model x and the server control variate c."""

    params: Any
    control: Any


class ScaffoldUpload(NamedTuple):
    """delta: Δy_i = y_i − x; control: Δc_i = c_i⁺ − c_i (both shaped like x)."""

    delta: Any
    control: Any


class ScaffoldTrain(NamedTuple):
    """A node's round: its `TrainState` (anchor: the correction c − c_i) and the number of
    local steps taken so far (K at the end of the round)."""

    train: TrainState
    steps: jax.Array


def scaffold(
    module: nnx.Module,
    *,
    local_optimizer: float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic
    Controlled Averaging for Federated Learning", ICML 2020), option II control variates.

    Node i keeps its control variate c_i (shaped like the model, 0 at first); the server
    sends (x, c). From y = x the node takes its K = E·ceil(n_i/B) minibatch steps

        y ← y − η_l (g_i(y) − c_i + c),

    then sets c_i⁺ = c_i − c + (x − y) / (K η_l) and uploads (Δy_i, Δc_i) = (y − x, c_i⁺ − c_i).
    The server moves x with its optimizer on the example-weighted mean Δy as a
    pseudo-gradient (SGD(η_g): x ← x + η_g Σ_i n_i Δy_i / Σ_i n_i) and keeps Σ_i c_i and the
    set of nodes that have reported with data, so that c = Σ_i c_i / max(#known, 1).
    Round 1 (all control variates 0) is FedAvg's round 1.

    Args:
      module: the model, all of it shared.
      local_optimizer: the local learning rate η_l > 0 (plain SGD: option II needs η_l, so
        no optax transformation).
      server_optimizer: the server's optimizer of x (a float: SGD with learning rate η_g).
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Fine-tuning before testing takes plain local SGD steps (no correction).

    Raises:
      AlgorithmError: a local optimizer that is not a finite learning rate > 0 (an optax
        transformation included), a bad server optimizer or an unknown loss.

    Where we differ from the paper: it updates c ← c + (1/N) Σ_{i∈S} Δc_i with N all nodes;
    here c is the mean c_i over the nodes that have reported with data (weight > 0), so
    nodes without data (padding nodes) never dilute c. Under full participation with every
    node holding data the two agree after every round; under partial participation ours
    averages over the nodes seen so far. x moves by the example-weighted mean Δy (as
    `fedavg`), where the paper averages over the sampled nodes; and K is each node's own
    step count in the round (E epochs of its data), not one K for all.

    Example:
      >>> algo = scaffold(MLP(60, [64], 10, rngs=nnx.Rngs(0)), local_optimizer=0.05)
    """
    if not (isinstance(local_optimizer, numbers.Real) or traced(local_optimizer)) or isinstance(
            local_optimizer, bool):
        raise AlgorithmError(
            f"scaffold: local_optimizer must be a learning rate (a number > 0): option II's "
            f"control variates need the local learning rate, got {local_optimizer!r} "
            f"({type(local_optimizer).__name__})")
    local = optimizer(local_optimizer, "scaffold", "local_optimizer")
    eta = local_optimizer if traced(local_optimizer) else float(local_optimizer)
    loss = loss_name(loss, "scaffold")
    model = split("scaffold", module, None)
    init_params, update_params = delta_server(model, optimizer(server_optimizer, "scaffold",
                                                               "server_optimizer"))
    zeros = jax.tree.map(jnp.zeros_like, model.shared)

    def corrected(params, correction):  # its gradient adds c − c_i to the data gradient
        return sum(jnp.vdot(c, p) for c, p in zip(
            jax.tree.leaves(correction), jax.tree.leaves(params[0]), strict=True))

    train = split_trainer(model, local, corrected, class_weights, loss)
    tune = split_trainer(model, local, class_weights=class_weights, loss=loss)

    def init(key, num_nodes):
        server = init_params(key, num_nodes)
        return ScaffoldServer(server.params, server.opt_state, zeros,
                              jnp.zeros(num_nodes, bool))

    def broadcast(server: ScaffoldServer):
        count = jnp.maximum(jnp.sum(server.known), 1)
        control = jax.tree.map(lambda s: s / count.astype(s.dtype), server.control_sum)
        return ScaffoldBroadcast(server.params, control)

    def start(received: ScaffoldBroadcast, c_i):
        correction = jax.tree.map(lambda c, ci: c - ci, received.control, c_i)
        return ScaffoldTrain(train.init((received.params, model.personal), anchor=correction),
                             jnp.zeros((), jnp.int32))

    def step(state: ScaffoldTrain, batch, key, task):
        new, batch_loss = train.step(state.train, batch, key, task)
        return ScaffoldTrain(new, state.steps + 1), batch_loss

    def finish(received: ScaffoldBroadcast, c_i, state: ScaffoldTrain):
        x, y = received.params, state.train.params[0]
        scale = 1.0 / (jnp.maximum(state.steps, 1).astype(jnp.float32) * eta)
        c_plus = jax.tree.map(lambda ci, c, a, b: ci - c + (a - b) * scale.astype(a.dtype),
                              c_i, received.control, x, y)
        return ScaffoldUpload(delta(y, x), delta(c_plus, c_i)), c_plus

    def server_update(server: ScaffoldServer, uploads: ScaffoldUpload, weights, ids,
                      aggregate=None):
        moved = update_params(ServerState(server.params, server.opt_state), uploads.delta,
                              weights, ids, aggregate)
        reported = weights > 0
        controls = release(aggregate, uploads.control, weights)  # noised under central DP

        def add(total, dc):  # rows of nodes without data carry junk: they add nothing
            keep = reported.reshape((-1,) + (1,) * (dc.ndim - 1))
            return total + jnp.sum(jnp.where(keep, dc, 0), axis=0)

        control_sum = jax.tree.map(add, server.control_sum, controls)
        known = server.known.at[ids].max(reported, mode="drop")
        return ScaffoldServer(moved.params, moved.opt_state, control_sum, known)

    return Algorithm(
        name="scaffold",
        model=model,
        init=init,
        init_node=lambda key: zeros,
        broadcast=broadcast,
        start=start,
        step=step,
        finish=finish,
        server_update=server_update,
        models=lambda received, c_i: {"global": (received.params, model.personal)},
        finetune=tune,
    )
