"""The algorithm contract and the pieces algorithms share: optimizers from learning rates,
model splits, trainers, the delta server, per-node server messages.

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
import jax.numpy as jnp
import optax
from flax import nnx

from fedmtl.aggregation import weighted_mean
from fedmtl.models import Model
from fedmtl.objectives import check_loss
from fedmtl.training import Trainer, trainer


class Algorithm(NamedTuple):
    """A federated algorithm.

    A node's round is `start`, then E * ceil(n / B) `step`s on its minibatches, then `finish`;
    the engine interleaves many nodes' steps in parallel lanes, so each function sees ONE node.

    What the server sends may differ per node: any part of `broadcast`'s result wrapped in
    `PerNode(value)` (leaves [N, ...]) reaches node t as value[t] (the engine gathers it
    inside the jitted round). `for_node(broadcast, t)` does the same outside the engine.

    Attributes:
      name: short name used in reports.
      model: the split model (shared / personal parameters).
      init: (key, N) -> server state for N nodes.
      init_node: key -> state of ONE node (personal parameters, ...).
      broadcast: server state -> what the nodes receive this round (`PerNode` parts per node).
      start: (node's broadcast, node state) -> the node's training state for this round.
      step: (training state, Batch, key, task) -> (training state, mean loss of the batch).
      finish: (node's broadcast, node state, training state) -> (upload, new node state).
      server_update: (server state, uploads [C, ...], weights [C], node ids [C],
        aggregate=None) -> server state. ids say whose upload each row is (e.g. to keep a
        per-node copy [N, ...]). Where it averages uploads it calls `aggregate(uploads,
        weights)` when given (a robust rule, `fedmtl.robust`, or central DP's noised mean,
        `fedmtl.privacy`), else `weighted_mean`; parts it keeps per node or sums rather than
        averages pass through `release(aggregate, rows, weights)` first.
      models: (node's broadcast, node state) -> {kind: (shared, personal)} parameters to
        evaluate on the node; kinds are "global", "personalized" or "local".
      finetune: a `Trainer` of (shared, personal) parameters that personalizes the global
        model with local steps before testing; or None.
      extras: server state -> {name: array} to inspect after training (e.g. MOCHA's learned
        task covariance); or None.
      prologue_epochs: P passes over the node's data before its E training epochs, for
        algorithms that look at the data before training (IFCA's cluster choice, FedRep's
        head epochs, FedALA's mixing weights): their steps see `Batch.epoch` < 0, and the
        training epochs keep the shuffles and keys they would have without them.
    """

    name: str
    model: Model
    init: Callable[[jax.Array, int], Any]
    init_node: Callable[[jax.Array], Any]
    broadcast: Callable[[Any], Any]
    start: Callable[[Any, Any], Any]
    step: Callable[..., tuple[Any, jax.Array]]
    finish: Callable[[Any, Any, Any], tuple[Any, Any]]
    server_update: Callable[[Any, Any, jax.Array, jax.Array], Any]
    models: Callable[[Any, Any], dict]
    finetune: Trainer | None = None
    extras: Callable[[Any], dict] | None = None
    prologue_epochs: int = 0


class PerNode(NamedTuple):
    """Part of a broadcast that differs per node: `value` has leaves [N, ...]; node t gets
    value[t]."""

    value: Any


def _is_per_node(x) -> bool:
    return isinstance(x, PerNode)


def for_node(broadcast, node):
    """What node `node` (an int or a traced scalar) receives: `broadcast` with every
    `PerNode(value)` replaced by value[node]."""
    return jax.tree.map(
        lambda b: jax.tree.map(lambda leaf: leaf[node], b.value) if _is_per_node(b) else b,
        broadcast, is_leaf=_is_per_node,
    )


class AlgorithmError(ValueError):
    """A bad algorithm argument or model split; the message names the algorithm and argument."""


class ServerState(NamedTuple):
    """Shared parameters and the server optimizer's state."""

    params: Any
    opt_state: Any


def traced(value) -> bool:
    """Whether `value` is a traced array: a hyperparameter an `Engine` feeds a `Recipe` inside
    its compiled program (its concrete values were checked when the engine built the recipe
    with them)."""
    return isinstance(value, jax.core.Tracer)


def number(algorithm: str, argument: str, value, *, positive: bool = False) -> float:
    """`value` as a float that is finite and >= 0 (> 0 if `positive`); a `traced` value as it
    is.

    Raises:
      AlgorithmError: anything else (a bool, a string, NaN, ...), naming the algorithm and
        argument.
    """
    if traced(value):
        return value
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(
        value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise AlgorithmError(f"{algorithm}: {argument} must be a finite number "
                             f"{'>' if positive else '>='} 0, got {value!r}")
    return float(value)


def squared_distance(a, b) -> jax.Array:
    """‖a − b‖² summed over the leaves of two pytrees of one structure (proximal terms)."""
    return sum(jnp.vdot(x - y, x - y) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def optimizer(
    opt: optax.GradientTransformation | float, algorithm: str, argument: str
) -> optax.GradientTransformation:
    """`opt` as an optax transformation: a number (or a `traced` one) is the learning rate of
    plain SGD.

    Raises:
      AlgorithmError: `opt` is a number that is not finite and > 0 (a negative rate would
        ascend the loss), a bool, or neither a number nor a transformation.
    """
    if traced(opt):
        return optax.sgd(opt)
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


def split(algorithm: str, module: nnx.Module, personal: Any) -> Model:
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


def loss_name(loss: Any, algorithm: str) -> str | None:
    """`loss` if it is None (cross-entropy) or a training loss in `objectives.LOSSES`.

    Raises:
      AlgorithmError: any other value; the message names the algorithm and the losses.
    """
    try:
        return check_loss(loss)
    except ValueError as e:
        raise AlgorithmError(f"{algorithm}: {e}") from None


def split_trainer(model: Model, optimizer, penalty=None, class_weights=None,
                  loss=None) -> Trainer:
    """Minibatch training of (shared, personal) parameters on one node (`penalty`,
    `class_weights` and `loss` as in `training.trainer`)."""
    return trainer(lambda p, x: model.apply(p[0], p[1], x), optimizer, penalty, class_weights,
                   loss)


def delta_server(model: Model, server_optimizer):
    """init / server_update for algorithms whose nodes upload shared-parameter deltas.

    The server treats minus the weighted mean delta as a pseudo-gradient for its optax
    optimizer, so `optax.sgd(1.0)` is plain averaging and `optax.adam` gives FedAdam.
    """

    def init(key, num_nodes):
        del key, num_nodes
        return ServerState(model.shared, server_optimizer.init(model.shared))

    def server_update(server: ServerState, uploads, weights, ids, aggregate=None):
        del ids
        mean = weighted_mean(uploads, weights) if aggregate is None else aggregate(uploads,
                                                                                   weights)
        pseudo_grad = jax.tree.map(lambda d: -d, mean)
        updates, opt_state = server_optimizer.update(pseudo_grad, server.opt_state, server.params)
        return ServerState(optax.apply_updates(server.params, updates), opt_state)

    return init, server_update


def federated_parts(name: str, module: nnx.Module, personal: Any, local_optimizer,
                    server_optimizer, class_weights=None, loss=None):
    """What an algorithm that federates a model's shared part by averaged deltas builds from
    its arguments, each checked with a named error: (model, init, server_update, trainer)."""
    loss = loss_name(loss, name)
    model = split(name, module, personal)
    init, server_update = delta_server(model, optimizer(server_optimizer, name,
                                                        "server_optimizer"))
    train = split_trainer(model, optimizer(local_optimizer, name, "local_optimizer"),
                          class_weights=class_weights, loss=loss)
    return model, init, server_update, train


def release(aggregate, rows, weights):
    """What the server may keep per node of `rows` [C, ...] (parts of the uploads it stores or
    sums rather than averages): the rows themselves, or what `aggregate.release` makes of them
    when the engine's aggregate has one (central DP noises them, `fedmtl.privacy`)."""
    keep = getattr(aggregate, "release", None)
    return rows if keep is None else keep(rows, weights)


def delta(new, old):
    return jax.tree.map(lambda a, b: a - b, new, old)
