"""Mixtures of a node's local model and the global one: APFL (a learned mixing weight α per
node) and FedALA (learned element-wise weights that aggregate the global model into the local
one before each round's training)."""

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
    delta,
    federated_parts,
    number,
    optimizer,
    traced,
)
from fedmtl.models import Model
from fedmtl.objectives import masked_mean_loss
from fedmtl.training import Batch, TrainState


def _objective(task, outputs, batch: Batch, class_weights, loss):
    """(the loss a step minimises, the unweighted data loss it reports), as in
    `training.trainer`: the masked mean loss, class-weighted when `class_weights` is given."""
    data_loss = masked_mean_loss(task, outputs, batch.y, batch.mask, loss=loss)
    if class_weights is None:
        return data_loss, data_loss
    return masked_mean_loss(task, outputs, batch.y, batch.mask, class_weights,
                            loss=loss), data_loss


def _class_weights(class_weights):
    return None if class_weights is None else jnp.asarray(class_weights, jnp.float32)


# ----- APFL -----


class ApflNode(NamedTuple):
    """A node's APFL state: its personal model v (the module's parameters) and α []."""

    v: Any
    alpha: jax.Array


class ApflTrain(NamedTuple):
    """One round's training state: the local copy w of the global model (a `TrainState`), v,
    v's optimizer state and α."""

    w: TrainState
    v: Any
    v_opt: Any
    alpha: jax.Array


def _mix(alpha, v, w):
    """α v + (1 − α) w, leaf by leaf."""
    return jax.tree.map(lambda a, b: alpha * a + (1 - alpha) * b, v, w)


def apfl(
    module: nnx.Module,
    *,
    alpha: float = 0.5,
    adapt_alpha: bool = True,
    alpha_lr: float | None = None,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """APFL (Deng, Kamani, Mahdavi, "Adaptive Personalized Federated Learning", arXiv
    2003.13461, 2020).

    Node i keeps a personal model v_i and a mixing weight α_i ∈ [0, 1]; its personalized model
    is the parameter mixture v̄_i = α_i v_i + (1 − α_i) w. Every local step on a minibatch ξ
    (Algorithm 1 of the paper), all from the values before the step:

        w   ← w − η ∇f_i(w; ξ)                                   (the local copy of w)
        v_i ← v_i − η ∇_v f_i(v̄_i; ξ)       = v_i − η α_i ∇f_i(v̄_i; ξ)
        α_i ← clip(α_i − η_α ∇_α f_i(v̄_i; ξ), 0, 1),  ∇_α f_i(v̄_i) = ⟨v_i − w, ∇f_i(v̄_i)⟩

    (α only when `adapt_alpha`). Nodes upload w's delta and the server averages them as in
    FedAvg; v_i and α_i never leave the node. Evaluated: "global" (w) and "personalized"
    (α_i v_i + (1 − α_i) w with the w the node receives). α = 1 without adaptation is local
    training of v (bit for bit `local`); w is always trained exactly as FedAvg trains it, and
    a step reports w's loss on its batch.

    Where we differ from the paper: nothing in the update rule. The authors' code (FedTorch)
    mixes the two models' outputs rather than their parameters and updates α once per round;
    we follow the paper's Algorithm 1 (parameters, every step). v's steps use
    `local_optimizer` (fresh state every round); α's are plain SGD.

    Args:
      module: the model (all of it is in both w and v).
      alpha: the initial α ∈ [0, 1] of every node.
      adapt_alpha: learn α (False: α stays `alpha`).
      alpha_lr: η_α > 0, the learning rate of α; default: `local_optimizer` when it is a
        learning rate (the paper's one η), required when it is an optax transformation.
      local_optimizer: as in `fedavg`; it trains both w and v.
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: α outside [0, 1], a bad `alpha_lr` (or none with an optax local
        optimizer), a bad optimizer or an unknown loss.

    Example:
      >>> algo = apfl(MLP(60, [64], 10, rngs=nnx.Rngs(0)), alpha=0.5, local_optimizer=0.05)
    """
    model, init, server_update, glob = federated_parts(
        "apfl", module, None, local_optimizer, server_optimizer, class_weights, loss)
    alpha0 = number("apfl", "alpha", alpha)
    if not traced(alpha0) and alpha0 > 1:
        raise AlgorithmError(f"apfl: alpha must be in [0, 1], got {alpha!r}")
    if not isinstance(adapt_alpha, bool):
        raise AlgorithmError(f"apfl: adapt_alpha must be True or False, got {adapt_alpha!r}")
    if alpha_lr is None:
        if not (isinstance(local_optimizer, numbers.Real) or traced(local_optimizer)
                ) or isinstance(local_optimizer, bool):
            raise AlgorithmError("apfl: alpha_lr must be given when local_optimizer is an optax "
                                 "transformation (its learning rate is not known)")
        alpha_lr = local_optimizer
    eta_alpha = number("apfl", "alpha_lr", alpha_lr, positive=True)
    v_opt = optimizer(local_optimizer, "apfl", "local_optimizer")
    weights = _class_weights(class_weights)

    def start(w, node: ApflNode):
        return ApflTrain(glob.init((w, model.personal)), node.v, v_opt.init(node.v), node.alpha)

    def step(state: ApflTrain, batch: Batch, key, task):
        w = state.w.params[0]

        def mixed_loss(v, a):
            outputs = model.apply(_mix(a, v, w), model.personal, batch.x)
            return _objective(task, outputs, batch, weights, loss)[0]

        grad_v, grad_alpha = jax.grad(mixed_loss, argnums=(0, 1))(state.v, state.alpha)
        updates, v_opt_state = v_opt.update(grad_v, state.v_opt, state.v)
        v = optax.apply_updates(state.v, updates)
        alpha_new = state.alpha
        if adapt_alpha:
            alpha_new = jnp.clip(state.alpha - eta_alpha * grad_alpha, 0.0, 1.0)
        w_state, data_loss = glob.step(state.w, batch, key, task)
        return ApflTrain(w_state, v, v_opt_state, alpha_new), data_loss

    def finish(w, node, state: ApflTrain):
        return delta(state.w.params[0], w), ApflNode(state.v, state.alpha)

    def models(w, node: ApflNode):
        return {"global": (w, model.personal),
                "personalized": (_mix(node.alpha, node.v, w), model.personal)}

    return Algorithm(
        name="apfl",
        model=model,
        init=init,
        init_node=lambda key: ApflNode(model.shared, jnp.asarray(alpha0, jnp.float32)),
        broadcast=lambda server: server.params,
        start=start,
        step=step,
        finish=finish,
        server_update=server_update,
        models=models,
        finetune=None,
    )


# ----- FedALA -----


class AlaNode(NamedTuple):
    """A node's FedALA state: its local model θ_i (all parameters) and the aggregation
    weights W, one array per mixed parameter leaf (in `jax.tree.leaves` order)."""

    theta: Any
    W: tuple


class AlaTrain(NamedTuple):
    """One round's training state: the model being trained (a `TrainState`, θ̂ after the
    prologue), the node's θ_i and the received g (constants of the round) and W."""

    train: TrainState
    theta: Any
    g: Any
    W: tuple


def _mixed_leaves(name: str, module: nnx.Module, model: Model, mix) -> tuple[bool, ...]:
    """Which leaves of `model.shared` (all parameters) the path filter `mix` selects."""
    if mix is None or mix is False:
        raise AlgorithmError(f"{name}: mix must select parameters (a path filter such as "
                             f"'head', or True for all), got {mix!r}")
    selected = Model.of(module, personal=mix).personal
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(selected)[0]}
    if not paths:
        raise AlgorithmError(f"{name}: mix={mix!r} matches no parameter of "
                             f"{type(module).__name__}; use a filter such as 'head'")
    flat = jax.tree_util.tree_flatten_with_path(model.shared)[0]
    return tuple(jax.tree_util.keystr(p) in paths for p, _ in flat)


def fedala(
    module: nnx.Module,
    *,
    mix: Any = "head",
    eta: float = 1.0,
    sample: float = 0.8,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedALA (Zhang, Hua, Wang, Song, Xue, Ma, Guan, "FedALA: Adaptive Local Aggregation for
    Personalized Federated Learning", AAAI 2023).

    Node i keeps its local model θ_i and element-wise weights W_i ∈ [0, 1] (initially 1) for
    the parameters selected by `mix` (the paper's top p layers). At the start of a round it
    aggregates the received global model g into its local one (Adaptive Local Aggregation):

        θ̂_i = θ_i + (g − θ_i) ⊙ W_i   on the mixed parameters,   θ̂_i = g   on the others,

    learning W_i first by gradient descent on the local loss L of θ̂_i(W_i) over a random
    share `sample` of its rows:

        W_i ← clip(W_i − η ∇_W L(θ̂_i(W_i)), 0, 1),   ∇_W L = ∇_θ L(θ̂_i) ⊙ (g − θ_i).

    Then it trains from θ̂_i for E epochs as FedAvg does; the trained model becomes θ_i and its
    delta from g is uploaded (the server averages them as in FedAvg). W_i never leaves the
    node. Evaluated: "global" (g) and "personalized" (θ̂_i of the node's θ_i and W_i with the
    received g, the model the paper evaluates at the start of a round, without that round's
    W update). In the first round θ_i = g, so θ̂_i = g and W stays 1: FedALA's first round is
    FedAvg's, bit for bit (the paper skips ALA then); η = 0 keeps W = 1 and θ̂_i ≈ g, FedAvg
    up to rounding.

    The W steps are the round's prologue (`prologue_epochs=1`: one pass over the node's data in
    minibatches, `Batch.epoch` < 0); each row of a minibatch is kept with probability `sample`
    (drawn from the step's key), so the pass sees about that share of the rows; such a step
    reports θ̂'s loss on the rows it kept. Under the engine's lanes a step computes both kinds
    (a W step and a training step) and keeps one, so FedALA's steps cost about twice FedAvg's.

    Where we differ from the paper and the authors' code (TsingZ0/FedALA): W gets one pass of
    minibatch steps per round; the authors train W until the loss settles (its standard
    deviation over the last 10 passes < 0.1) in the first round ALA runs, and one pass in each
    later round. Their random share is one contiguous block of s% of the rows per round; ours
    is a Bernoulli draw per row. Their p counts parameter tensors from the top (p = 2: the last
    layer's kernel and bias), ours is a path filter ("head" is the last layer of the built-in
    models). Nodes outside the round's cohort do not run ALA (the authors' server runs it on
    every node each round).

    Args:
      module: the model (all of it is federated).
      mix: path filter of the parameters W weighs (a substring such as "head", an NNX filter,
        or True for all); the others take g at the start of a round.
      eta: η >= 0, the learning rate of W (the paper's default 1.0; 0 fixes W = 1).
      sample: the share s ∈ (0, 1] of the rows that W's pass sees (the paper's s = 80%).
      local_optimizer: as in `fedavg`.
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: `mix` selects nothing, η < 0, `sample` outside (0, 1], a bad optimizer or
        an unknown loss.

    Example:
      >>> algo = fedala(MLP(60, [64], 10, rngs=nnx.Rngs(0)), mix="head", eta=1.0, sample=0.8)
    """
    eta = number("fedala", "eta", eta)
    sample = number("fedala", "sample", sample, positive=True)
    if sample > 1:
        raise AlgorithmError(f"fedala: sample must be in (0, 1], got {sample!r}")
    model, init, server_update, train = federated_parts(
        "fedala", module, None, local_optimizer, server_optimizer, class_weights, loss)
    mixed = _mixed_leaves("fedala", module, model, mix)
    weights = _class_weights(class_weights)

    def aggregate(theta, g, W):
        """θ̂: θ + (g − θ) ⊙ W on the mixed leaves, g on the others."""
        thetas, treedef = jax.tree.flatten(theta)
        out, w_iter = [], iter(W)
        for t, g_leaf, m in zip(thetas, jax.tree.leaves(g), mixed, strict=True):
            out.append(t + (g_leaf - t) * next(w_iter) if m else g_leaf)
        return jax.tree.unflatten(treedef, out)

    def init_node(key):
        del key
        W = tuple(jnp.ones_like(leaf) for leaf, m in
                  zip(jax.tree.leaves(model.shared), mixed, strict=True) if m)
        return AlaNode(model.shared, W)

    def start(g, node: AlaNode):
        params = aggregate(node.theta, g, node.W)
        return AlaTrain(train.init((params, model.personal)), node.theta, g, node.W)

    def learn_weights(state: AlaTrain, batch: Batch, key, task):
        kept = batch._replace(mask=batch.mask & (jax.random.uniform(key, batch.mask.shape)
                                                 < sample))

        def ala_loss(W):
            outputs = model.apply(aggregate(state.theta, state.g, W), model.personal, kept.x)
            return _objective(task, outputs, kept, weights, loss)

        (_, data_loss), grads = jax.value_and_grad(ala_loss, has_aux=True)(state.W)
        W = tuple(jnp.clip(w - eta * gw, 0.0, 1.0) for w, gw in zip(state.W, grads, strict=True))
        params = aggregate(state.theta, state.g, W)
        return state._replace(train=state.train._replace(params=(params, model.personal)),
                              W=W), data_loss

    def train_step(state: AlaTrain, batch: Batch, key, task):
        trained, data_loss = train.step(state.train, batch, key, task)
        return state._replace(train=trained), data_loss

    def step(state: AlaTrain, batch: Batch, key, task):
        return jax.lax.cond(batch.epoch < 0, lambda: learn_weights(state, batch, key, task),
                            lambda: train_step(state, batch, key, task))

    def finish(g, node, state: AlaTrain):
        theta = state.train.params[0]
        return delta(theta, g), AlaNode(theta, state.W)

    def models(g, node: AlaNode):
        return {"global": (g, model.personal),
                "personalized": (aggregate(node.theta, g, node.W), model.personal)}

    return Algorithm(
        name="fedala",
        model=model,
        init=init,
        init_node=init_node,
        broadcast=lambda server: server.params,
        start=start,
        step=step,
        finish=finish,
        server_update=server_update,
        models=models,
        finetune=None,
        prologue_epochs=1,
    )
