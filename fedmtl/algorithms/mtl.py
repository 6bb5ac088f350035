"""Multi-task algorithms: MOCHA (a learned or given task relationship Ω couples the nodes'
personal parameters), graph-regularized MTL (Ω = a task graph's Laplacian) and Ditto (personal
models pulled toward the global one)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

from fedmtl import relationship
from fedmtl.algorithms.base import (
    Algorithm,
    AlgorithmError,
    PerNode,
    ServerState,
    delta,
    delta_server,
    loss_name,
    number,
    optimizer,
    release,
    split_trainer,
    squared_distance,
)
from fedmtl.models import Model
from fedmtl.training import trainer

SIGMA_MAX_NODES = 4096  # extras["sigma"] is a dense [N, N] matrix only up to this many nodes


class MochaServer(NamedTuple):
    """body: the shared parameters' `ServerState` (FedAvg); W: [N, d] every node's personal
    parameters as last uploaded; reported: [N] whether the node has uploaded (Σ is learned
    from those only); omega: Ω [N, N] in `relationship.Omega` form; round: []."""

    body: ServerState
    W: jax.Array
    reported: jax.Array
    omega: relationship.Omega
    round: jax.Array


def mocha(
    module: nnx.Module,
    *,
    personal: Any = "head",
    lam: float = 1e-2,
    lam2: float = 0.0,
    omega: Any = "learned",
    omega_every: int = 1,
    eps: float = 1e-3,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    name: str = "mocha",
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """MOCHA (Smith, Chiang, Sanjabi, Talwalkar, "Federated Multi-Task Learning", NeurIPS
    2017) with the task-relationship model of Zhang & Yeung (UAI 2010).

    Node t's personal parameters, flattened, are row t of W [N, d] (the paper's column w_t of
    its W [d, N]). The objective is

        Σ_t F_t(w_t) + (λ₁/2)·tr(Wᵀ Ω W) + (λ₂/2)·‖W‖²,

    F_t the mean loss on node t's data. Node t takes its local minibatch steps on
    F_t(w) + λ₁·(½ Ω_tt ‖w‖² + ⟨p_t, w⟩) + (λ₂/2)‖w‖², whose gradient is the objective's:
    λ₁ (W Ω)_t = λ₁ (Ω_tt w + p_t) with p_t = Σ_{s≠t} Ω_ts w_s taken from the server's copy
    of the other rows (the node's own term is exact). The server keeps W as last uploaded
    (absent nodes keep their stale rows) and every `omega_every` rounds sets, over the nodes
    that have reported at least once (nodes without data, or not yet sampled, are left out),

        Σ = N · (W Wᵀ + ε I)^{1/2} / tr((W Wᵀ + ε I)^{1/2}),   Ω = Σ⁻¹,

    with N the count of those nodes and ε = eps · ‖W‖²_F / min(N, d), eps times the mean
    nonzero eigenvalue of W Wᵀ (`relationship.learned`). Where we differ from the paper: it
    normalises tr Σ = 1 and floors Σ's eigenvalues; with N > d, W Wᵀ is singular and Ω's
    eigenvalues then grow like N, so we add ε I (relative to the spectrum) and scale tr Σ = N,
    which keeps Ω's spectrum O(1) at any N (λ₁ means the same at 30 or 100,000 nodes: the
    paper's λ₁ is ours divided by N). The thin SVD of W gives Σ, Ω and Ω W in O(N·d²) time
    and O(N·d) memory; N×N is never formed. The paper solves each node's subproblem in the
    dual (SDCA on a quadratic approximation, linear models); this is the primal, minibatch
    form, so it also trains deep models: a shared body by FedAvg beside MTL-coupled heads
    (`personal="head"`), or the whole model coupled (`personal=True`, the paper's setting for
    linear models).

    Args:
      module: the model.
      personal: which parameters are a node's w_t (a path filter such as "head", or True for
        all of them); the rest is a shared body trained by FedAvg.
      lam: λ₁ >= 0, the weight of the relationship term (0: independent tasks).
      lam2: λ₂ >= 0, ridge on every w_t.
      omega: "learned"; a fixed symmetric PSD [N, N] Ω; or a task graph's Laplacian
        (`fedmtl.relationship.laplacian(adjacency)`: graph-regularized MTL).
      omega_every: rounds between updates of a learned Ω (it starts as the identity).
      eps: ε's size relative to the mean nonzero eigenvalue of W Wᵀ, > 0. It bounds Ω's
        eigenvalues, and so Ω_tt, by sqrt(1 + 1/eps) (about 32 at the default): plain SGD
        steps stay stable while lr · (λ₁ · sqrt(1 + 1/eps) + λ₂) < 2, so a large λ₁ needs a
        smaller learning rate or a larger eps (a run that diverges stops with a named error).
      local_optimizer: as in `fedavg`.
      server_optimizer: as in `fedavg`; it moves the body.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.
      name: the name in reports.

    Raises:
      AlgorithmError: λ₁, λ₂ < 0, ε <= 0, omega_every < 1, no personal parameters, a bad
        optimizer or an unknown loss; `relationship.RelationshipError`: a fixed Ω that is
        not square, symmetric and PSD, or (at `init`) not [N, N].

    Example:
      >>> algo = mocha(MLP(60, [64], 10, rngs=nnx.Rngs(0)), personal="head", lam=1e-2)
    """
    lam, lam2 = number(name, "lam", lam), number(name, "lam2", lam2)
    eps = number(name, "eps", eps, positive=True)
    if isinstance(omega_every, bool) or not isinstance(omega_every, int) or omega_every < 1:
        raise AlgorithmError(f"{name}: omega_every must be an integer >= 1, got {omega_every!r}")
    model = Model.of(module, personal=personal)
    if not jax.tree.leaves(model.personal):
        raise AlgorithmError(f"{name}: personal={personal!r} matches no parameter of "
                             f"{type(module).__name__}; MOCHA couples the personal parameters")
    learned = isinstance(omega, str)
    if learned and omega != "learned":
        raise AlgorithmError(f"{name}: omega must be 'learned' or an [N, N] matrix, got {omega!r}")
    given = None if learned else relationship.fixed(omega)
    w0, unravel = ravel_pytree(model.personal)  # w_t = ravel(personal parameters) [d]
    d = w0.shape[0]
    init_body, update_body = delta_server(model, optimizer(server_optimizer, name,
                                                           "server_optimizer"))

    def penalty(params, anchor):
        w = ravel_pytree(params[1])[0]
        pull, self_weight = anchor
        coupled = 0.5 * self_weight * jnp.vdot(w, w) + jnp.vdot(pull, w)
        return lam * coupled + 0.5 * lam2 * jnp.vdot(w, w)

    train = split_trainer(model, optimizer(local_optimizer, name, "local_optimizer"), penalty,
                          class_weights, loss_name(loss, name))

    def init(key, num_nodes):
        if given is None:  # Ω = I (Σ = I: unrelated tasks) until the first update
            r = min(num_nodes, d)
            omega0 = relationship.Omega(jnp.zeros((num_nodes, r), w0.dtype),
                                        jnp.zeros(r, w0.dtype), jnp.ones((), w0.dtype))
        else:
            if given.basis.shape[0] != num_nodes:
                raise relationship.RelationshipError(
                    f"{name}: the fixed Ω is {given.basis.shape[0]} x {given.basis.shape[0]} "
                    f"but the federation has {num_nodes} nodes")
            omega0 = jax.tree.map(lambda a: jnp.asarray(a, w0.dtype), given)
        W = jnp.tile(w0, (num_nodes, 1))  # every node starts from the module's parameters
        return MochaServer(init_body(key, num_nodes), W, jnp.zeros(num_nodes, bool), omega0,
                           jnp.zeros((), jnp.int32))

    def broadcast(server: MochaServer):
        return server.body.params, PerNode(relationship.coupling(server.omega, server.W))

    def finish(received, head, state):
        body, _ = received
        return (delta(state.params[0], body), ravel_pytree(state.params[1])[0]), state.params[1]

    def server_update(server: MochaServer, uploads, weights, ids, aggregate=None):
        deltas, rows = uploads
        body = update_body(server.body, deltas, weights, ids, aggregate)
        rows = release(aggregate, rows, weights)  # kept per node: noised under central DP
        trained = weights > 0  # nodes without data took no step: keep their rows
        W = server.W.at[ids].set(jnp.where(trained[:, None], rows, server.W[ids]))
        reported = server.reported.at[ids].set(server.reported[ids] | trained)
        rnd = server.round + 1
        omega = server.omega
        if given is None:
            omega = jax.lax.cond(rnd % omega_every == 0,
                                 lambda: relationship.learned(W, eps, reported), lambda: omega)
        return MochaServer(body, W, reported, omega, rnd)

    def extras(server: MochaServer) -> dict:
        out = {"omega_diagonal": relationship.diagonal(server.omega)}
        if server.W.shape[0] <= SIGMA_MAX_NODES:
            out["sigma"] = relationship.sigma(server.omega)
        return out

    return Algorithm(
        name=name,
        model=model,
        init=init,
        init_node=lambda key: model.personal,
        broadcast=broadcast,
        start=lambda received, head: train.init((received[0], head), anchor=received[1]),
        step=train.step,
        finish=finish,
        server_update=server_update,
        models=lambda received, head: {"personalized": (received[0], head)},
        finetune=None,
        extras=extras,
    )


def graph_mtl(module: nnx.Module, adjacency, *, lam: float = 1e-2, **kwargs) -> Algorithm:
    """Graph-regularized federated MTL (as in FedU, Dinh et al. 2021, and SFL, Chen et al.
    2022): MOCHA's update with the fixed Ω = L, the Laplacian of a task graph, so the penalty
    (λ₁/2)·tr(Wᵀ L W) = (λ₁/4)·Σ_{s,t} a_st ‖w_s − w_t‖² pulls related nodes together.

    Args:
      adjacency: [N, N] symmetric, non-negative edge weights with a zero diagonal.
      lam: λ₁; other keyword arguments as in `mocha`.
    """
    return mocha(module, lam=lam, omega=relationship.laplacian(adjacency),
                 name=kwargs.pop("name", "graph_mtl"), **kwargs)


def ditto(
    module: nnx.Module,
    *,
    lam: float = 0.1,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    personal_optimizer: optax.GradientTransformation | float | None = None,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """Ditto (Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through
    Personalization", ICML 2021).

    The global model w is trained by FedAvg; each node also keeps a personal model v_t,
    trained on F_t(v) + (λ/2)‖v − w^r‖² with w^r the global model it received this round.
    Every local step takes one step of each on the same minibatch, so a node's s personal
    steps per round are its E·ceil(n/B) local steps (the paper's Algorithm 1 lets s differ).
    λ = 0 gives local training for v and FedAvg for w; λ → ∞ gives v = w.

    Args:
      module: the model (all of it is in both w and v).
      lam: λ >= 0.
      local_optimizer: the optimizer of w's local steps (a float: SGD's learning rate).
      personal_optimizer: the optimizer of v (default: the same as `local_optimizer`).
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Example:
      >>> algo = ditto(MLP(60, [64], 10, rngs=nnx.Rngs(0)), lam=0.1)
    """
    lam = number("ditto", "lam", lam)
    model = Model.of(module, personal=None)
    opt = optimizer(local_optimizer, "ditto", "local_optimizer")
    v_opt = opt if personal_optimizer is None else optimizer(
        personal_optimizer, "ditto", "personal_optimizer")
    init, server_update = delta_server(model, optimizer(server_optimizer, "ditto",
                                                        "server_optimizer"))
    loss = loss_name(loss, "ditto")
    glob = split_trainer(model, opt, class_weights=class_weights, loss=loss)

    def prox(v, w):
        return 0.5 * lam * squared_distance(v, w)

    pers = trainer(lambda v, x: model.apply(v, model.personal, x), v_opt, prox, class_weights,
                   loss)

    def step(state, batch, key, task):
        g, loss = glob.step(state[0], batch, key, task)
        p, _ = pers.step(state[1], batch, key, task)
        return (g, p), loss

    return Algorithm(
        name="ditto",
        model=model,
        init=init,
        init_node=lambda key: model.shared,  # v_t starts as the initial global model
        broadcast=lambda server: server.params,
        start=lambda w, v: (glob.init((w, model.personal)), pers.init(v, anchor=w)),
        step=step,
        finish=lambda w, v, state: (delta(state[0].params[0], w), state[1].params),
        server_update=server_update,
        models=lambda w, v: {"global": (w, model.personal), "personalized": (v, model.personal)},
        finetune=None,
    )
