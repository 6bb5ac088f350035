"""Split models: a shared part federated like FedAvg beside a personal part that never leaves
the node. FedPer and LG-FedAvg (a personal head or a personal body, trained jointly with the
shared part), FedBN (personal normalization layers), FedRep (head epochs, then body epochs)
and FedBABU (a frozen shared head, fine-tuned at the end)."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fedmtl.algorithms.base import (
    Algorithm,
    AlgorithmError,
    delta,
    federated_parts,
    loss_name,
    optimizer,
    split_trainer,
)
from fedmtl.training import TrainState, trainer

NORMALIZATION_LAYERS = (nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm, nnx.InstanceNorm,
                        nnx.BatchNorm)  # whose parameters FedBN keeps personal


@dataclasses.dataclass(frozen=True)
class PathFilter:
    """An NNX path filter with a readable name (it appears in error messages)."""

    name: str
    predicate: Callable[[tuple], bool]

    def __call__(self, path, value) -> bool:
        del value
        return self.predicate(tuple(path))

    def __repr__(self) -> str:
        return f"<{self.name}>"


# LG-FedAvg's local representation: every parameter outside the head (the body, and any
# normalization layers beside it, e.g. MLP(..., norm="layer")'s `norms`).
NOT_HEAD = PathFilter("all but 'head'", lambda path: "head" not in path)


def normalization_filter(module: nnx.Module) -> PathFilter | None:
    """A filter of the parameters of `module`'s normalization layers (`NORMALIZATION_LAYERS`,
    found by type whatever their names), or None if it has none."""
    paths = tuple(tuple(path) for path, layer in nnx.iter_modules(module)
                  if isinstance(layer, NORMALIZATION_LAYERS))
    if not paths:
        return None
    shown = ", ".join("/".join(map(str, p)) for p in paths)
    return PathFilter(f"normalization layers {shown}",
                      lambda path: any(path[:len(p)] == p for p in paths))


def _jointly_trained(name: str, module: nnx.Module, personal: Any, local_optimizer,
                     server_optimizer, class_weights, loss) -> Algorithm:
    """Shared and personal parameters trained together on the node; the shared part's delta
    is averaged by the server, the personal part stays (FedPer, LG-FedAvg, FedBN)."""
    model, init, server_update, train = federated_parts(
        name, module, personal, local_optimizer, server_optimizer, class_weights, loss)

    return Algorithm(
        name=name,
        model=model,
        init=init,
        init_node=lambda key: model.personal,
        broadcast=lambda server: server.params,
        start=lambda shared, mine: train.init((shared, mine)),
        step=train.step,
        finish=lambda shared, mine, state: (delta(state.params[0], shared), state.params[1]),
        server_update=server_update,
        models=lambda shared, mine: {"personalized": (shared, mine)},
        finetune=None,
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
    """FedPer (Arivazhagan, Aggarwal, Singh, Choudhary, "Federated Learning with
    Personalization Layers", arXiv 1912.00818, 2019): the body is federated like FedAvg while
    each node keeps its own head, trained jointly with the body and never sent to the server.

    Node t trains (φ, h_t) jointly for E epochs from (φ^r, h_t); the server sets
    φ^{r+1} = φ^r + Σ_t n_t (φ_t − φ^r) / Σ_t n_t (through `server_optimizer`); h_t never
    leaves the node. Node t's model is (φ, h_t).

    Args:
      module: the model.
      personal: path filter of the personal parameters (default: those under "head").
      local_optimizer: as in `fedavg`.
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: `personal` leaves nothing shared (e.g. `LogisticRegression`, whose only
        layer is its head: that would be local training) or nothing personal; an unknown
        loss.
    """
    return _jointly_trained("fedper", module, personal, local_optimizer, server_optimizer,
                            class_weights, loss)


def lg_fedavg(
    module: nnx.Module,
    *,
    personal: Any = NOT_HEAD,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """LG-FedAvg (Liang, Liu, Ziyin, Allen, Auerbach, Brent, Salakhutdinov, Morency, "Think
    Locally, Act Globally: Federated Learning with Local and Global Representations", 2020):
    each node keeps a local representation (the body) and the server federates the global
    head, FedPer's split the other way round.

    Node t trains (φ_t, h) jointly on its data for E epochs from (φ_t, h^r); the server sets
    h^{r+1} = h^r + Σ_t n_t (h_t − h^r) / Σ_t n_t (through `server_optimizer`); φ_t never
    leaves the node. Node t's model is (φ_t, h).

    Args:
      module: the model.
      personal: path filter of the local representation; default: every parameter outside
        "head" (the body and any normalization layers beside it).
      local_optimizer: as in `fedavg`.
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: nothing shared (a module without a "head": local training) or nothing
        personal (e.g. `LogisticRegression`, all head: FedAvg); a bad optimizer or an unknown
        loss.

    Example:
      >>> algo = lg_fedavg(MLP(60, [64], 10, rngs=nnx.Rngs(0)))

    Where we differ from the paper: the paper starts the nodes' local models from a FedAvg
    model trained beforehand and also studies unsupervised and fair local representations;
    this is the supervised method from the model's initialization (warm-start it by passing a
    module holding FedAvg's parameters).
    """
    return _jointly_trained("lg_fedavg", module, personal, local_optimizer, server_optimizer,
                            class_weights, loss)


def fedbn(
    module: nnx.Module,
    *,
    personal: Any = None,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedBN (Li, Jiang, Zhang, Kamp, Dou, "FedBN: Federated Learning on Non-IID Features via
    Local Batch Normalization", ICLR 2021): FedAvg, except that the normalization layers'
    parameters stay on each node, so each node normalizes features its own way.

    Node t trains all its parameters (w, β_t) jointly for E epochs from (w^r, β_t); the
    server sets w^{r+1} = w^r + Σ_t n_t (w_t − w^r) / Σ_t n_t (through `server_optimizer`);
    β_t, the scales and offsets of the normalization layers, never leave the node.

    Args:
      module: the model, with normalization layers (e.g. `MLP(..., norm="layer")`,
        `models.build(..., norm="layer")`).
      personal: path filter of the personal parameters; default (None): the parameters of
        every normalization layer of `module` (`NORMALIZATION_LAYERS`, found by type).
      local_optimizer: as in `fedavg`.
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: `module` has no normalization layers (fedbn would be FedAvg), or an
        explicit `personal` that leaves nothing shared or nothing personal; a bad optimizer
        or an unknown loss.
      models.UnsupportedModel: `module` keeps running statistics (`nnx.BatchNorm`).

    Example:
      >>> algo = fedbn(MLP(60, [64], 10, norm="layer", rngs=nnx.Rngs(0)))

    Where we differ from the paper: FedBN's paper uses BatchNorm and keeps its running
    statistics local too; here the normalization layers' parameters are personal, and
    running statistics are not supported (a `Model` trains parameters only, so BatchNorm's
    statistics would never update and padding rows would enter its batch statistics): use
    LayerNorm or GroupNorm. The server weights nodes by example counts as in FedAvg (the
    paper's experiments use nodes of equal sizes).
    """
    if personal is None:
        personal = normalization_filter(module)
        if personal is None:
            types = ", ".join(t.__name__ for t in NORMALIZATION_LAYERS if t is not nnx.BatchNorm)
            raise AlgorithmError(
                f"fedbn: {type(module).__name__} has no normalization layers ({types}), so "
                f"every parameter would be shared and fedbn would be FedAvg; use a model with "
                f"normalization layers, e.g. MLP(..., norm=\"layer\") (the CLI's --norm "
                f"layer)"
            )
    return _jointly_trained("fedbn", module, personal, local_optimizer, server_optimizer,
                            class_weights, loss)


def _per_part(opt: optax.GradientTransformation) -> optax.GradientTransformation:
    """`opt` on each part of a (shared, personal) pair with its own state, as two optimizers
    would be: a part's state (momentum, step count, ...) is its own."""

    def init(params):
        return tuple(opt.init(part) for part in params)

    def update(updates, state, params=None):
        params = (None,) * len(updates) if params is None else params
        out = [opt.update(u, s, p) for u, s, p in zip(updates, state, params, strict=True)]
        return tuple(u for u, _ in out), tuple(s for _, s in out)

    return optax.GradientTransformation(init, update)


def _keep(use_new, new, old):
    return jax.tree.map(lambda a, b: jnp.where(use_new, a, b), new, old)


def fedrep(
    module: nnx.Module,
    *,
    personal: Any = "head",
    head_epochs: int = 10,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedRep (Collins, Hassani, Mokhtari, Shakkottai, "Exploiting Shared Representations for
    Personalized Federated Learning", ICML 2021): each round a node first fits its own head
    to the received representation (the body), then updates the body with its head fixed;
    only the body is averaged.

    Node t receives φ^r and, from its head h_t, takes
      1. `head_epochs` epochs of steps h_t ← h_t − η ∇_h f_t(φ^r, h_t) (body frozen), then
      2. E epochs (the federation's `local_epochs`) of steps φ ← φ − η ∇_φ f_t(φ, h_t)
         (head frozen at its new value);
    the server sets φ^{r+1} = φ^r + Σ_t n_t (φ_t − φ^r) / Σ_t n_t (through
    `server_optimizer`). h_t never leaves the node; node t's model is (φ, h_t). The head and
    the body each keep their own optimizer state (as two optimizers would).

    Args:
      module: the model.
      personal: path filter of the head (default: the parameters under "head").
      head_epochs: passes over the node's data that train the head before the body's E
        epochs (an integer >= 0; the engine runs them as prologue epochs, so a round costs
        head_epochs + E epochs of steps). Default 10, the authors' code's schedule
        (lgcollins/FedRep: local_ep=11 with local_rep_ep=1, i.e. 10 head epochs, then 1 of
        the representation, which is our default E; PFLlib's plocal_steps defaults to 1,
        FL-bench trains the head for all but the last `train_body_epoch` epochs). 0 trains
        the body alone with each node's head at its initial value.
      local_optimizer: as in `fedavg`; one local optimizer for the head and the
        body, each part with its own state.
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: head_epochs not an integer >= 0; `personal` leaves nothing shared or
        nothing personal; a bad optimizer or an unknown loss.

    Example:
      >>> algo = fedrep(MLP(60, [64], 10, rngs=nnx.Rngs(0)), head_epochs=10)
    """
    if (isinstance(head_epochs, bool) or not isinstance(head_epochs, numbers.Integral)
            or head_epochs < 0):
        raise AlgorithmError(f"fedrep: head_epochs must be an integer >= 0, got {head_epochs!r}")
    model, init, server_update, _ = federated_parts(
        "fedrep", module, personal, local_optimizer, server_optimizer, class_weights, loss)
    train = split_trainer(model, _per_part(optimizer(local_optimizer, "fedrep",
                                                     "local_optimizer")),
                          class_weights=class_weights, loss=loss_name(loss, "fedrep"))

    def step(state: TrainState, batch, key, task):
        """One gradient of (body, head); the head's part is applied in the head epochs
        (epoch < 0), the body's in the training epochs."""
        new, batch_loss = train.step(state, batch, key, task)
        head_phase = jnp.asarray(batch.epoch) < 0
        body_phase = jnp.logical_not(head_phase)
        params = (_keep(body_phase, new.params[0], state.params[0]),
                  _keep(head_phase, new.params[1], state.params[1]))
        opt_state = (_keep(body_phase, new.opt_state[0], state.opt_state[0]),
                     _keep(head_phase, new.opt_state[1], state.opt_state[1]))
        return TrainState(params, opt_state, state.anchor), batch_loss

    return Algorithm(
        name="fedrep",
        model=model,
        init=init,
        init_node=lambda key: model.personal,
        broadcast=lambda server: server.params,
        start=lambda body, head: train.init((body, head)),
        step=step,
        finish=lambda body, head, state: (delta(state.params[0], body), state.params[1]),
        server_update=server_update,
        models=lambda body, head: {"personalized": (body, head)},
        finetune=None,
        prologue_epochs=int(head_epochs),
    )


def fedbabu(
    module: nnx.Module,
    *,
    personal: Any = "head",
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedBABU (Oh, Kim, Yun, "FedBABU: Toward Enhanced Representation for Federated Image
    Classification", ICLR 2022): FedAvg of the body only, with the head frozen at its random
    initialization h⁰ (the same on every node); before testing, each node fine-tunes the
    whole model.

    Node t takes E epochs of steps φ ← φ − η ∇_φ f_t(φ, h⁰) from φ^r; the server sets
    φ^{r+1} = φ^r + Σ_t n_t (φ_t − φ^r) / Σ_t n_t (through `server_optimizer`). The global
    model is (φ, h⁰); with `Federation.finetune_steps` > 0 the engine fine-tunes all of
    (φ, h⁰) on each node into its "personalized" model.

    Args:
      module: the model; its head's initial values are the frozen head.
      personal: path filter of the frozen head (default: the parameters under "head").
      local_optimizer: as in `fedavg`; fine-tuning uses it too.
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: `personal` leaves nothing shared or nothing frozen; a bad optimizer or
        an unknown loss.

    Example:
      >>> algo = fedbabu(MLP(60, [64], 10, rngs=nnx.Rngs(0)))

    Where we differ from the paper: it fine-tunes for a number of epochs; here fine-tuning
    is `Federation.finetune_steps` minibatch steps (0: the global model only).
    """
    model, init, server_update, finetune = federated_parts(
        "fedbabu", module, personal, local_optimizer, server_optimizer, class_weights, loss)
    head = model.personal
    train_body = trainer(lambda body, x: model.apply(body, head, x),
                         optimizer(local_optimizer, "fedbabu", "local_optimizer"),
                         class_weights=class_weights, loss=loss_name(loss, "fedbabu"))

    return Algorithm(
        name="fedbabu",
        model=model,
        init=init,
        init_node=lambda key: (),
        broadcast=lambda server: server.params,
        start=lambda body, node: train_body.init(body),
        step=train_body.step,
        finish=lambda body, node, state: (delta(state.params, body), node),
        server_update=server_update,
        models=lambda body, node: {"global": (body, head)},
        finetune=finetune,
    )
