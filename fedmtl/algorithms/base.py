"""Algorithms as small values of pure functions, built by factories (in the spirit of optax).

Per-node functions (`init_node`, `start`, `step`, `finish`, `models`) are written for ONE node;
`server_update` sees uploads with a leading node axis [C, ...]. Algorithms never loop over
nodes nor call `vmap`: the engine does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax
from flax import nnx

from fedmtl.aggregation import weighted_mean
from fedmtl.models import Model
from fedmtl.training import Trainer, trainer


class Algorithm(NamedTuple):
    """A federated algorithm.

    A node's round is `start`, then E * ceil(n / B) `step`s on its minibatches, then `finish`;
    the engine interleaves many nodes' steps in parallel lanes, so each function sees ONE node.

    Attributes:
      name: short name used in reports.
      model: the split model (shared / personal parameters).
      init: key -> server state.
      init_node: key -> state of ONE node (personal parameters, ...).
      broadcast: server state -> what every node receives this round.
      start: (broadcast, node state) -> the node's training state for this round.
      step: (training state, Batch, key, task) -> (training state, mean loss of the batch).
      finish: (broadcast, node state, training state) -> (upload, new node state).
      server_update: (server state, uploads [C, ...], weights [C]) -> server state.
      models: (broadcast, node state) -> {kind: (shared, personal)} parameters to evaluate on
        the node; kinds are "global", "personalized" or "local".
      finetune: a `Trainer` of (shared, personal) parameters that personalizes the global
        model with local steps before testing; or None.
    """

    name: str
    model: Model
    init: Callable[[jax.Array], Any]
    init_node: Callable[[jax.Array], Any]
    broadcast: Callable[[Any], Any]
    start: Callable[[Any, Any], Any]
    step: Callable[..., tuple[Any, jax.Array]]
    finish: Callable[[Any, Any, Any], tuple[Any, Any]]
    server_update: Callable[[Any, Any, jax.Array], Any]
    models: Callable[[Any, Any], dict]
    finetune: Trainer | None = None


class AlgorithmError(ValueError):
    """A bad algorithm argument or model split; the message names the algorithm and argument."""


class ServerState(NamedTuple):
    """Shared parameters and the server optimizer's state."""

    params: Any
    opt_state: Any


def _optimizer(
    opt: optax.GradientTransformation | float, algorithm: str, argument: str
) -> optax.GradientTransformation:
    """`opt` as an optax transformation: a number is the learning rate of plain SGD.

    Raises:
      AlgorithmError: `opt` is a number that is not finite and > 0 (a negative rate would
        ascend the loss), a bool, or neither a number nor a transformation.
    """
    if isinstance(opt, numbers.Real) and not isinstance(opt, bool):
        if not (math.isfinite(opt) and opt > 0):
            raise AlgorithmError(
                f"{algorithm}: {argument} learning rate must be a finite number > 0, got {opt}"
            )
        return optax.sgd(float(opt))
    if not (hasattr(opt, "init") and hasattr(opt, "update")):
        raise AlgorithmError(
            f"{algorithm}: {argument} must be a learning rate (a number > 0) or an optax "
            f"GradientTransformation, got {opt!r} ({type(opt).__name__})"
        )
    return opt


def _split(algorithm: str, module: nnx.Module, personal: Any) -> Model:
    """`Model.of(module, personal)` for an algorithm that federates the shared parameters.

    Raises:
      AlgorithmError: nothing is shared (the algorithm would be local training), or a
        `personal` filter matches nothing (it would be FedAvg).
    """
    model = Model.of(module, personal=personal)
    name = type(module).__name__
    if not jax.tree.leaves(model.shared):
        if personal is None:
            raise AlgorithmError(f"{algorithm}: {name} has no parameters, so nothing is shared")
        raise AlgorithmError(
            f"{algorithm}: personal={personal!r} matches every parameter of {name}, so nothing "
            f"is shared and {algorithm} would be local training; use a model with a body "
            f"(e.g. MLP) or a narrower filter"
        )
    if personal is not None and not jax.tree.leaves(model.personal):
        raise AlgorithmError(
            f"{algorithm}: personal={personal!r} matches no parameter of {name}, so nothing is "
            f"personal and {algorithm} would be FedAvg; use a filter such as 'head'"
        )
    return model


def _trainer(model: Model, optimizer) -> Trainer:
    """Minibatch training of (shared, personal) parameters on one node."""
    return trainer(lambda p, x: model.apply(p[0], p[1], x), optimizer)


def _delta_server(model: Model, server_optimizer):
    """init / server_update for algorithms whose nodes upload shared-parameter deltas.

    The server treats minus the weighted mean delta as a pseudo-gradient for its optax
    optimizer, so `optax.sgd(1.0)` is plain averaging and `optax.adam` gives FedAdam.
    """

    def init(key):
        del key
        return ServerState(model.shared, server_optimizer.init(model.shared))

    def server_update(server: ServerState, uploads, weights):
        pseudo_grad = jax.tree.map(lambda d: -d, weighted_mean(uploads, weights))
        updates, opt_state = server_optimizer.update(pseudo_grad, server.opt_state, server.params)
        return ServerState(optax.apply_updates(server.params, updates), opt_state)

    return init, server_update


def _delta(new, old):
    return jax.tree.map(lambda a, b: a - b, new, old)


def fedavg(
    module: nnx.Module,
    *,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
) -> Algorithm:
    """FedAvg (McMahan et al., AISTATS 2017): E local epochs of minibatch training on each
    node, then the server averages the parameter deltas weighted by node example counts.

    Args:
      module: the model, all of it shared.
      local_optimizer: node optimizer (a float means SGD with that learning rate); its state
        restarts every round.
      server_optimizer: applied to the averaged delta as a pseudo-gradient; SGD(1.0) is plain
        FedAvg, `optax.adam(...)` FedAdam (Reddi et al., 2021).

    Raises:
      AlgorithmError: an optimizer that is neither an optax transformation nor a finite
        learning rate > 0.

    Example:
      >>> algo = fedavg(MLP(60, [64], 10, rngs=nnx.Rngs(0)), local_optimizer=0.05)
    """
    model = _split("fedavg", module, None)
    opt = _optimizer(local_optimizer, "fedavg", "local_optimizer")
    server_opt = _optimizer(server_optimizer, "fedavg", "server_optimizer")
    init, server_update = _delta_server(model, server_opt)
    train = _trainer(model, opt)

    return Algorithm(
        name="fedavg",
        model=model,
        init=init,
        init_node=lambda key: (),
        broadcast=lambda server: server.params,
        start=lambda shared, node: train.init((shared, model.personal)),
        step=train.step,
        finish=lambda shared, node, state: (_delta(state.params[0], shared), node),
        server_update=server_update,
        models=lambda shared, node: {"global": (shared, model.personal)},
        finetune=train,
    )


def fedper(
    module: nnx.Module,
    *,
    personal: Any = "head",
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
) -> Algorithm:
    """FedPer (Arivazhagan et al., 2019): the body is federated like FedAvg while each node
    keeps its own head, trained jointly with the body and never sent to the server.

    Args:
      module: the model.
      personal: path filter of the personal parameters (default: those under "head").
      local_optimizer, server_optimizer: as in `fedavg`.

    Raises:
      AlgorithmError: `personal` leaves nothing shared (e.g. `LogisticRegression`, whose only
        layer is its head: that would be local training) or nothing personal.
    """
    model = _split("fedper", module, personal)
    opt = _optimizer(local_optimizer, "fedper", "local_optimizer")
    server_opt = _optimizer(server_optimizer, "fedper", "server_optimizer")
    init, server_update = _delta_server(model, server_opt)
    train = _trainer(model, opt)

    return Algorithm(
        name="fedper",
        model=model,
        init=init,
        init_node=lambda key: model.personal,
        broadcast=lambda server: server.params,
        start=lambda shared, head: train.init((shared, head)),
        step=train.step,
        finish=lambda shared, head, state: (_delta(state.params[0], shared), state.params[1]),
        server_update=server_update,
        models=lambda shared, head: {"personalized": (shared, head)},
        finetune=None,
    )


def local(
    module: nnx.Module,
    *,
    local_optimizer: optax.GradientTransformation | float = 0.05,
) -> Algorithm:
    """Local training: each node trains its own copy of the model and nothing is exchanged.

    Every round trains E more local epochs from where the node left off (the optimizer state
    restarts, as in `fedavg`), so R rounds of `local` see the same data as R rounds of FedAvg.
    """
    model = Model.of(module, personal=True)
    train = _trainer(model, _optimizer(local_optimizer, "local", "local_optimizer"))

    return Algorithm(
        name="local",
        model=model,
        init=lambda key: (),
        init_node=lambda key: model.personal,
        broadcast=lambda server: (),
        start=lambda broadcast, params: train.init((model.shared, params)),
        step=train.step,
        finish=lambda broadcast, params, state: ((), state.params[1]),
        server_update=lambda server, uploads, weights: server,
        models=lambda broadcast, params: {"local": (model.shared, params)},
        finetune=None,
    )


ALGORITHMS = {"fedavg": fedavg, "fedper": fedper, "local": local}
