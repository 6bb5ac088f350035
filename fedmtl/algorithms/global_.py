"""Algorithms with one global model: FedAvg, FedProx, SCAFFOLD, and FedAvg with a named server
optimizer (FedAvgM, FedAdagrad, FedAdam, FedYogi)."""

from __future__ import annotations

import numbers

import optax
from flax import nnx

from fedmtl.algorithms import server_optimizers
from fedmtl.algorithms.base import (
    Algorithm,
    AlgorithmError,
    delta,
    delta_server,
    federated_parts,
    loss_name,
    number,
    optimizer,
    split,
    split_trainer,
    squared_distance,
    traced,
)


def fedavg(
    module: nnx.Module,
    *,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
    name: str = "fedavg",
) -> Algorithm:
    """FedAvg (McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data", AISTATS 2017): E local epochs of
    minibatch training on each node, then the server averages the parameter deltas weighted
    by node example counts.

    Node k receives w^t and takes E·ceil(n_k/B) minibatch steps w ← w − η ∇F_k(w; D) from
    w = w^t; the server sets

        w^{t+1} = w^t + Σ_k n_k (w_k − w^t) / Σ_k n_k

    over the nodes that reported (through `server_optimizer`: SGD(1.0) is exactly this).

    Args:
      module: the model, all of it shared.
      local_optimizer: node optimizer (a float means SGD with that learning rate); its state
        restarts every round.
      server_optimizer: applied to the averaged delta as a pseudo-gradient; SGD(1.0) is plain
        FedAvg, `optax.adam(...)` an Adam server (see `fedadam` for Reddi et al.'s own).
      class_weights: optional [C] per-class weights of the training loss for rare classes
        (e.g. `objectives.balanced_class_weights(data.train.y, C)`); fine-tuning uses them too.
      loss: the training loss of a classification task, a name in `objectives.LOSSES`:
        "cross_entropy" (None, the default), "hinge" (multiclass SVM hinge of Crammer &
        Singer) or "squared" (on one-hot targets); fine-tuning uses it too. Test metrics
        (accuracy, the reported cross-entropy "loss", ...) do not depend on it.
      name: the name in reports (the named server optimizers below reuse FedAvg).

    Raises:
      AlgorithmError: an optimizer that is neither an optax transformation nor a finite
        learning rate > 0, or an unknown loss.

    Example:
      >>> algo = fedavg(MLP(60, [64], 10, rngs=nnx.Rngs(0)), local_optimizer=0.05)
    """
    model, init, server_update, train = federated_parts(
        name, module, None, local_optimizer, server_optimizer, class_weights, loss)

    return Algorithm(
        name=name,
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


def fedprox(
    module: nnx.Module,
    *,
    mu: float = 0.01,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
    Heterogeneous Networks", MLSys 2020): FedAvg whose nodes minimise the proximal objective

        h_k(w; w^t) = F_k(w) + (μ/2) ‖w − w^t‖²,

    w^t the global model received this round, by E epochs of minibatch steps from w = w^t;
    the server averages the deltas w − w^t weighted by example counts (as `fedavg`). μ = 0 is
    FedAvg exactly.

    Args:
      module: the model, all of it shared.
      mu: μ >= 0, the proximal weight (0.01 by default, from the candidates the paper
        tunes μ over, {0.001, 0.01, 0.1, 1}; its best μ depends on the data set).
      local_optimizer: as in `fedavg`; fine-tuning before testing takes plain local
        steps with it (no proximal term).
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: μ negative or not a finite number, a bad optimizer or an unknown loss.

    Stragglers that stop early (the paper's γ-inexact solutions) come from the systems model,
    not from the algorithm: `Systems(stragglers=p, straggler_unit="epoch",
    straggler_policy="keep")` is the paper's experiment (benchmarks/systems). Where we differ
    from the paper: the deltas are weighted by example counts over a uniform cohort (the
    paper's experiments; its Algorithm 2 samples ∝ n_k and averages, `Systems(sampling=
    "weighted")`).

    Example:
      >>> algo = fedprox(MLP(60, [64], 10, rngs=nnx.Rngs(0)), mu=0.01)
    """
    mu = number("fedprox", "mu", mu)
    loss = loss_name(loss, "fedprox")
    model = split("fedprox", module, None)
    init, server_update = delta_server(model, optimizer(server_optimizer, "fedprox",
                                                        "server_optimizer"))
    local = optimizer(local_optimizer, "fedprox", "local_optimizer")
    proximal = lambda params, anchor: 0.5 * mu * squared_distance(params[0], anchor)
    train = split_trainer(model, local, proximal if traced(mu) or mu > 0 else None,
                          class_weights, loss)
    tune = split_trainer(model, local, class_weights=class_weights, loss=loss)

    return Algorithm(
        name="fedprox",
        model=model,
        init=init,
        init_node=lambda key: (),
        broadcast=lambda server: server.params,
        start=lambda shared, node: train.init((shared, model.personal), anchor=shared),
        step=train.step,
        finish=lambda shared, node, state: (delta(state.params[0], shared), node),
        server_update=server_update,
        models=lambda shared, node: {"global": (shared, model.personal)},
        finetune=tune,
    )


def _server_rate(name: str, value) -> float:
    """The server learning rate η (`server_optimizer` of the named server optimizers)."""
    if not (isinstance(value, numbers.Real) or traced(value)) or isinstance(value, bool):
        raise AlgorithmError(
            f"{name}: server_optimizer is the server learning rate here, a number > 0, got "
            f"{value!r} ({type(value).__name__}); for another optax optimizer use "
            f"fedavg(server_optimizer=...)")
    return number(name, "server_optimizer", value, positive=True)


def _decay(name: str, argument: str, value) -> float:
    """A decay rate in [0, 1) (β₁, β₂, momentum)."""
    value = number(name, argument, value)
    if not traced(value) and value >= 1:
        raise AlgorithmError(f"{name}: {argument} must be in [0, 1), got {value!r}")
    return value


def fedavgm(
    module: nnx.Module,
    *,
    server_optimizer: float = 1.0,
    momentum: float = 0.9,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedAvgM (Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", arXiv 2019): FedAvg whose server takes SGD steps with
    momentum β on the pseudo-gradient g_t = −Δ_t (Δ_t the weighted mean node delta):

        v_t = β v_{t−1} + g_t,    x_{t+1} = x_t − η v_t        (`optax.sgd(η, β)`).

    Args:
      module: the model, all of it shared.
      server_optimizer: the server learning rate η > 0 (1.0: the first round is FedAvg's;
        the paper varies β and η through the effective rate η / (1 − β)).
      momentum: β in [0, 1) (0.9; 0 is FedAvg).
      local_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: η not a finite number > 0, β outside [0, 1), a bad local optimizer or
        an unknown loss.

    Example:
      >>> algo = fedavgm(MLP(60, [64], 10, rngs=nnx.Rngs(0)), momentum=0.9)
    """
    lr = _server_rate("fedavgm", server_optimizer)
    beta = _decay("fedavgm", "momentum", momentum)
    return fedavg(module, local_optimizer=local_optimizer,
                  server_optimizer=optax.sgd(lr, momentum=beta), class_weights=class_weights,
                  loss=loss, name="fedavgm")


def fedadagrad(
    module: nnx.Module,
    *,
    server_optimizer: float = 0.1,
    b1: float = 0.0,
    tau: float = 1e-3,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedAdagrad (Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive
    Federated Optimization", ICLR 2021): FedAvg whose server runs Adagrad on the weighted mean
    node delta Δ_t (Algorithm 2, `server_optimizers.fedadagrad`):

        m_t = β₁ m_{t−1} + (1 − β₁) Δ_t,   v_t = v_{t−1} + Δ_t²,
        x_{t+1} = x_t + η m_t / (√v_t + τ),   m_{−1} = 0, v_{−1} = τ².

    Args:
      module: the model, all of it shared.
      server_optimizer: the server learning rate η > 0.
      b1: β₁ in [0, 1); 0 is plain Adagrad (the paper's analysis of FedAdagrad takes β₁ = 0).
      tau: τ > 0, the adaptivity.
      local_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Defaults (η = 0.1, τ = 1e-3): the paper tunes η and τ over powers of 10 per task; these
    are in the range of its tuned FedAdagrad values. Tune η for your task.

    Raises:
      AlgorithmError: η or τ not a finite number > 0, β₁ outside [0, 1), a bad local
        optimizer or an unknown loss.

    Where we differ from the paper: Δ_t weights node deltas by example counts (as `fedavg`),
    where the paper averages over the sampled nodes.

    Example:
      >>> algo = fedadagrad(MLP(60, [64], 10, rngs=nnx.Rngs(0)), server_optimizer=0.1)
    """
    lr = _server_rate("fedadagrad", server_optimizer)
    b1 = _decay("fedadagrad", "b1", b1)
    tau = number("fedadagrad", "tau", tau, positive=True)
    return fedavg(module, local_optimizer=local_optimizer,
                  server_optimizer=server_optimizers.fedadagrad(lr, tau, b1),
                  class_weights=class_weights, loss=loss, name="fedadagrad")


def fedadam(
    module: nnx.Module,
    *,
    server_optimizer: float = 1e-2,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021; see `fedadagrad`):
    FedAvg whose server runs Adam without bias correction on the weighted mean node delta Δ_t
    (Algorithm 2, `server_optimizers.fedadam`):

        m_t = β₁ m_{t−1} + (1 − β₁) Δ_t,   v_t = β₂ v_{t−1} + (1 − β₂) Δ_t²,
        x_{t+1} = x_t + η m_t / (√v_t + τ),   m_{−1} = 0, v_{−1} = τ².

    Args:
      module: the model, all of it shared.
      server_optimizer: the server learning rate η > 0.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      tau: τ > 0, the adaptivity.
      local_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Defaults (η = 1e-2, β₁ = 0.9, β₂ = 0.99, τ = 1e-3): the paper fixes β₁ = 0.9, β₂ = 0.99
    and tunes η and τ over powers of 10 per task; η and τ are in the range of its tuned
    FedAdam values. Tune η for your task.

    Raises:
      AlgorithmError: η or τ not a finite number > 0, β₁ or β₂ outside [0, 1), a bad local
        optimizer or an unknown loss.

    Where we differ from the paper: Δ_t weights node deltas by example counts (as `fedavg`),
    where the paper averages over the sampled nodes.

    Example:
      >>> algo = fedadam(MLP(60, [64], 10, rngs=nnx.Rngs(0)), server_optimizer=1e-2)
    """
    lr = _server_rate("fedadam", server_optimizer)
    b1, b2 = _decay("fedadam", "b1", b1), _decay("fedadam", "b2", b2)
    tau = number("fedadam", "tau", tau, positive=True)
    return fedavg(module, local_optimizer=local_optimizer,
                  server_optimizer=server_optimizers.fedadam(lr, b1, b2, tau),
                  class_weights=class_weights, loss=loss, name="fedadam")


def fedyogi(
    module: nnx.Module,
    *,
    server_optimizer: float = 1e-2,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021; see `fedadagrad`):
    FedAvg whose server runs Yogi on the weighted mean node delta Δ_t (Algorithm 2,
    `server_optimizers.fedyogi`):

        m_t = β₁ m_{t−1} + (1 − β₁) Δ_t,   v_t = v_{t−1} − (1 − β₂) Δ_t² sign(v_{t−1} − Δ_t²),
        x_{t+1} = x_t + η m_t / (√v_t + τ),   m_{−1} = 0, v_{−1} = τ².

    Args, defaults, Raises and where we differ from the paper: as in `fedadam` (the paper
    fixes β₁ = 0.9, β₂ = 0.99 for FedYogi too; η = 1e-2 and τ = 1e-3 are in the range of its
    tuned FedYogi values).

    Example:
      >>> algo = fedyogi(MLP(60, [64], 10, rngs=nnx.Rngs(0)), server_optimizer=1e-2)
    """
    lr = _server_rate("fedyogi", server_optimizer)
    b1, b2 = _decay("fedyogi", "b1", b1), _decay("fedyogi", "b2", b2)
    tau = number("fedyogi", "tau", tau, positive=True)
    return fedavg(module, local_optimizer=local_optimizer,
                  server_optimizer=server_optimizers.fedyogi(lr, b1, b2, tau),
                  class_weights=class_weights, loss=loss, name="fedyogi")
