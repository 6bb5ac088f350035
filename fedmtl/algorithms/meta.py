"""Regularized and meta-learning personalization: pFedMe (a personal model held near the
global one by a Moreau envelope) and Per-FedAvg (a global model trained to adapt well after
one local gradient step, MAML-style)."""

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
    delta_server,
    loss_name,
    number,
    optimizer,
    split,
    split_trainer,
    traced,
)
from fedmtl.models import Model
from fedmtl.objectives import masked_mean_loss
from fedmtl.training import Batch


def _objective(model: Model, class_weights, loss: str | None):
    """(params, Batch, task) -> (training loss, data loss) of the whole model `params`: the
    training loss weights classes by `class_weights` (if any), the data loss is the plain
    masked mean a step reports (as in `training.trainer`)."""
    weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def objective(params, batch: Batch, task: str):
        outputs = model.apply(params, model.personal, batch.x)
        data_loss = masked_mean_loss(task, outputs, batch.y, batch.mask, loss=loss)
        fit = data_loss if weights is None else masked_mean_loss(
            task, outputs, batch.y, batch.mask, weights, loss=loss)
        return fit, data_loss

    return objective


def _where(condition, new, old):
    """`new` where the traced scalar `condition` holds, else `old` (leaf by leaf)."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def _positive_int(algorithm: str, argument: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise AlgorithmError(f"{algorithm}: {argument} must be an integer >= 1, got {value!r}")
    return int(value)


# ----- pFedMe -----


class PFedMeState(NamedTuple):
    """A node's pFedMe round: w [params] its local copy of the global model, `opt_state` the
    local optimizer's state for w, theta [params] the personalized model of the last step."""

    w: Any
    opt_state: Any
    theta: Any


def pfedme(
    module: nnx.Module,
    *,
    lam: float = 15.0,
    inner_steps: int = 5,
    personal_lr: float = 0.1,
    local_optimizer: optax.GradientTransformation | float = 0.005,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """pFedMe (Dinh, Tran, Nguyen, "Personalized Federated Learning with Moreau Envelopes",
    NeurIPS 2020).

    Node i minimises the Moreau envelope of its loss f_i,

        F_i(w) = min_θ f_i(θ) + (λ/2)‖θ − w‖²,   ∇F_i(w) = λ (w − θ̂_i(w)),

    whose minimiser θ̂_i(w) is its personalized model. A round starts from θ = w = w_g, the
    global model. Each local step on a minibatch D solves the inner problem approximately
    with K = `inner_steps` gradient steps of rate ν = `personal_lr`,

        θ ← θ − ν (∇f_i(θ; D) + λ (θ − w))          (K times, on the same D),

    then moves w along the envelope's gradient, w ← w − η λ (w − θ). After the round node i
    uploads w_i − w_g and the server sets w_g ← (1 − β) w_g + β Σ_i p_i w_i (p_i ∝ example
    counts): the delta server with SGD of rate β on minus the mean delta. A node keeps its
    last θ as its personalized model; "global" is w_g.

    As in the authors' code (and PFLlib), the inner solve warm-starts from the previous
    step's θ (θ starts at w_g only at the start of the round), not from w.

    Defaults are the paper's MNIST setting as run in the authors' code (CharlieDinh/pFedMe:
    η = 0.005, β = 1, λ = 15, K = 5, ν = 0.1; its batches of 20 and R = 20 local steps are
    the `Federation`'s to set).

    Args:
      module: the model, all of it in w, θ and w_g.
      lam: λ > 0, the pull between θ and w.
      inner_steps: K >= 1 inner gradient steps per local step.
      personal_lr: ν > 0, the inner steps' rate; ν·λ < 2 (else the proximal term alone makes
        the inner steps diverge).
      local_optimizer: the optimizer of w on the pseudo-gradient λ (w − θ) (the envelope's
        gradient); a float is SGD's η; its state restarts every round.
      server_optimizer: the server's optimizer of w_g on minus the mean delta; a float is β
        (1.0: plain averaging; β > 1 the paper's extrapolation).
      class_weights: as in `fedavg`.
      loss: as in `fedavg` (the inner steps minimise it).

    Raises:
      AlgorithmError: λ <= 0, K not an integer >= 1, ν <= 0, ν·λ >= 2, a bad optimizer or
        an unknown loss.

    Where we differ from the reference code: the authors' and PFLlib's inner optimizers add a
    weight decay μθ (μ = 0.001 by default) to the inner gradient; we follow the paper's
    equations, without it. The paper
    samples a fresh minibatch per local step; ours are the engine's shuffled epochs.

    Example:
      >>> algo = pfedme(MLP(60, [64], 10, rngs=nnx.Rngs(0)), lam=15.0, personal_lr=0.1)
    """
    name = "pfedme"
    lam = number(name, "lam", lam, positive=True)
    inner_steps = _positive_int(name, "inner_steps", inner_steps)
    personal_lr = number(name, "personal_lr", personal_lr, positive=True)
    if not (traced(personal_lr) or traced(lam)) and personal_lr * lam >= 2:
        raise AlgorithmError(f"{name}: personal_lr * lam must be < 2 (the inner steps diverge "
                             f"otherwise), got {personal_lr} * {lam} = {personal_lr * lam}")
    local_opt = optimizer(local_optimizer, name, "local_optimizer")
    loss = loss_name(loss, name)
    model = split(name, module, None)
    init, server_update = delta_server(model, optimizer(server_optimizer, name,
                                                        "server_optimizer"))
    objective = _objective(model, class_weights, loss)

    def personalize(theta, w, batch, task):
        """K inner steps from θ on one batch: (θ, data loss of the batch at the first θ)."""

        def inner(theta, _):
            (_, data_loss), grads = jax.value_and_grad(objective, has_aux=True)(
                theta, batch, task)
            theta = jax.tree.map(lambda t, g, v: t - personal_lr * (g + lam * (t - v)),
                                 theta, grads, w)
            return theta, data_loss

        theta, losses = jax.lax.scan(inner, theta, None, length=inner_steps)
        return theta, losses[0]

    def step(state: PFedMeState, batch: Batch, key, task: str):
        del key  # the steps draw nothing
        theta, data_loss = personalize(state.theta, state.w, batch, task)
        envelope_grad = jax.tree.map(lambda v, t: lam * (v - t), state.w, theta)
        updates, opt_state = local_opt.update(envelope_grad, state.opt_state, state.w)
        return PFedMeState(optax.apply_updates(state.w, updates), opt_state, theta), data_loss

    return Algorithm(
        name=name,
        model=model,
        init=init,
        init_node=lambda key: model.shared,  # θ before a node's first round: the initial model
        broadcast=lambda server: server.params,
        start=lambda w_g, theta: PFedMeState(w_g, local_opt.init(w_g), w_g),
        step=step,
        finish=lambda w_g, theta, state: (delta(state.w, w_g), state.theta),
        server_update=server_update,
        models=lambda w_g, theta: {"global": (w_g, model.personal),
                                   "personalized": (theta, model.personal)},
        finetune=None,
    )


# ----- Per-FedAvg -----


class MetaState(NamedTuple):
    """A node's Per-FedAvg round: w [params] the meta-model, `opt_state` β's optimizer state,
    adapted [params] w − α∇f(w; D) of the current cycle, meta_grad [params] ∇f(adapted; D')
    awaiting its Hessian term (HF; zeros for FO), phase [] int32 the step's place in the
    cycle (0: adapt, 1: meta-gradient, 2: HF's Hessian term)."""

    w: Any
    opt_state: Any
    adapted: Any
    meta_grad: Any
    phase: jax.Array


def perfedavg(
    module: nnx.Module,
    *,
    variant: str = "fo",
    alpha: float = 0.005,
    local_optimizer: optax.GradientTransformation | float = 0.001,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """Per-FedAvg (Fallah, Mokhtari, Ozdaglar, "Personalized Federated Learning with
    Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS 2020).

    The global model w minimises Σ_i p_i f_i(w − α∇f_i(w)): the mean loss after each node
    adapts it with one gradient step of rate α. Each local meta-step uses independent
    minibatches D, D' (and D'' for HF):

        temp = w − α ∇f_i(w; D),
        FO:  w ← w − β ∇f_i(temp; D'),
        HF:  w ← w − β (I − α ∇²f_i(w; D'')) ∇f_i(temp; D').

    The engine gives a step one minibatch, so the meta-step spans consecutive steps of the
    round: FO cycles through 2 steps (step 2j computes temp on its batch, step 2j+1 updates
    w on the next), HF through 3 (the third batch is D''). A cycle left incomplete at the end
    of the round (the round's step count is not a multiple of the cycle) is dropped: its
    batches update nothing, and w is the one after the last complete meta-step. So a node
    with fewer steps per round than the cycle (e.g. one batch and one epoch) does not move w;
    use more epochs or a smaller batch. Nodes upload w_i − w_g and the server averages them
    (the delta server). The personalized model is w_g adapted on the node before testing:
    `finetune` takes SGD steps of rate α (the engine's `Federation.finetune_steps`; 1 in the
    paper's evaluation).

    Args:
      module: the model, all of it meta-learned.
      variant: "fo" (first order: the Hessian term dropped) or "hf" (Hessian-free: the
        Hessian-vector product kept); reports name them "perfedavg" and "perfedavg_hf".
      alpha: α >= 0, the adaptation step's rate (and fine-tuning's).
      local_optimizer: β's optimizer, applied to the meta-gradient; a float is SGD's β. (The
        CLI's `local_optimizer=<lr>` is therefore β; α stays a plain step size, as in MAML.)
        Its state restarts every round.
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: an unknown variant, α < 0, a bad optimizer or an unknown loss.

    Defaults: α = 0.005, β = 0.001, Per-FedAvg's setting on MNIST in the pFedMe paper's
    comparison as run in its authors' code (CharlieDinh/pFedMe); they train slowly over
    few rounds: raise β for short runs.

    Where we differ from the paper: HF uses the exact Hessian-vector product ∇²f(w; D'')·v
    (forward-over-reverse, `jax.jvp` of `jax.grad`) instead of the paper's finite difference
    (∇f(w + δv) − ∇f(w − δv)) / 2δ, so there is no δ. The three batches of a meta-step are
    consecutive minibatches of the node's shuffled epochs rather than independent draws.

    Example:
      >>> algo = perfedavg(MLP(60, [64], 10, rngs=nnx.Rngs(0)), variant="hf", alpha=0.01,
      ...                  local_optimizer=0.05)
    """
    if variant not in ("fo", "hf"):
        raise AlgorithmError(f"perfedavg: variant must be 'fo' or 'hf', got {variant!r}")
    hessian = variant == "hf"
    name = "perfedavg_hf" if hessian else "perfedavg"  # in reports and error messages
    cycle = 3 if hessian else 2
    alpha = number(name, "alpha", alpha)
    loss = loss_name(loss, name)
    model = split(name, module, None)
    meta_opt = optimizer(local_optimizer, name, "local_optimizer")
    init, server_update = delta_server(model, optimizer(server_optimizer, name,
                                                        "server_optimizer"))
    objective = _objective(model, class_weights, loss)
    gradient = jax.grad(objective, has_aux=True)  # (params, batch, task) -> (∇fit, data loss)
    zeros = jax.tree.map(jnp.zeros_like, model.shared)

    def start(w, node):
        del node
        return MetaState(w, meta_opt.init(w), w, zeros, jnp.zeros((), jnp.int32))

    def step(state: MetaState, batch: Batch, key, task: str):
        """One gradient (HF: with a Hessian-vector product) per step, whatever the phase, so
        lanes in different phases compute the same thing."""
        del key
        phase = state.phase
        point = _where(phase == 1, state.adapted, state.w)  # w at phases 0 and 2
        if hessian:  # ∇f(point) and ∇²f(point)·v, v = meta_grad at phase 2, else 0
            tangent = _where(phase == 2, state.meta_grad, zeros)
            grads, hvp, data_loss = jax.jvp(lambda p: gradient(p, batch, task), (point,),
                                            (tangent,), has_aux=True)
            meta = jax.tree.map(lambda g, h: g - alpha * h, state.meta_grad, hvp)
            meta_grad = _where(phase == 1, grads, state.meta_grad)
        else:
            grads, data_loss = gradient(point, batch, task)
            meta, meta_grad = grads, state.meta_grad
        adapted = _where(phase == 0, jax.tree.map(lambda v, g: v - alpha * g, state.w, grads),
                         state.adapted)
        updates, opt_state = meta_opt.update(meta, state.opt_state, state.w)
        last = phase == cycle - 1
        w = _where(last, optax.apply_updates(state.w, updates), state.w)
        opt_state = _where(last, opt_state, state.opt_state)
        return MetaState(w, opt_state, adapted, meta_grad, (phase + 1) % cycle), data_loss

    return Algorithm(
        name=name,
        model=model,
        init=init,
        init_node=lambda key: (),
        broadcast=lambda server: server.params,
        start=start,
        step=step,
        finish=lambda w_g, node, state: (delta(state.w, w_g), node),
        server_update=server_update,
        models=lambda w_g, node: {"global": (w_g, model.personal)},
        finetune=split_trainer(model, optax.sgd(alpha), class_weights=class_weights,
                               loss=loss),
    )


def perfedavg_hf(
    module: nnx.Module,
    *,
    alpha: float = 0.005,
    local_optimizer: optax.GradientTransformation | float = 0.001,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """Per-FedAvg's Hessian-free variant: `perfedavg(module, variant="hf", ...)`, whose
    meta-gradient keeps the Hessian-vector term (I − α ∇²f(w; D'')) ∇f(w − α∇f(w; D); D')."""
    return perfedavg(module, variant="hf", alpha=alpha, local_optimizer=local_optimizer,
                     server_optimizer=server_optimizer, class_weights=class_weights, loss=loss)
