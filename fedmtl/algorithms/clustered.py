"""Clustered federated learning: IFCA (k cluster models; each node trains the one that fits
its data best)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fedmtl.aggregation import weighted_mean
from fedmtl.algorithms.base import (
    Algorithm,
    AlgorithmError,
    delta,
    loss_name,
    optimizer,
    split,
    split_trainer,
)
from fedmtl.objectives import example_losses
from fedmtl.training import Batch, TrainState


class IfcaServer(NamedTuple):
    """params: the k cluster models (leaves [k, ...]); opt_state: one server optimizer state
    per cluster (leaves [k, ...]); cluster: [N] int32, the cluster each node chose when it
    last trained (-1: never)."""

    params: Any
    opt_state: Any
    cluster: jax.Array


class IfcaTrain(NamedTuple):
    """One round's training state: the received cluster models (leaves [k, ...]), each one's
    loss summed over the node's rows [k] (the prologue), the chosen cluster [] (-1 until the
    first training step) and the chosen model's `TrainState`."""

    models: Any
    losses: jax.Array
    cluster: jax.Array
    train: TrainState


def cluster_inits(params, key: jax.Array, clusters: int):
    """k initial models from one (leaves [k, ...]): model 0 is `params`; model c > 0 permutes
    the entries of each leaf at random (key fold_in(fold_in(key, c), leaf index)), so every
    leaf keeps the values an i.i.d. initializer drew, hence their distribution."""
    leaves, treedef = jax.tree.flatten(params)
    stacked = []
    for i, leaf in enumerate(leaves):
        copies = [leaf] + [
            jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, c), i),
                                   leaf.reshape(-1)).reshape(leaf.shape)
            for c in range(1, clusters)]
        stacked.append(jnp.stack(copies))
    return jax.tree.unflatten(treedef, stacked)


def ifca(
    module: nnx.Module,
    *,
    clusters: int = 2,
    local_optimizer: optax.GradientTransformation | float = 0.05,
    server_optimizer: optax.GradientTransformation | float = 1.0,
    class_weights=None,
    loss: str | None = None,
) -> Algorithm:
    """IFCA (Ghosh, Chung, Yin, Ramchandran, "An Efficient Framework for Clustered Federated
    Learning", NeurIPS 2020), with model averaging (the paper's Algorithm 1, option II).

    The server keeps k cluster models θ_1..θ_k and sends all of them. Node i picks

        ĵ_i = argmin_j F_i(θ_j),   F_i the loss summed over the node's training rows,

    trains θ_ĵ for E local epochs as FedAvg does and uploads (θ̃_i − θ_ĵ, ĵ). The server moves
    each cluster model by the average of its members' deltas, weighted by example counts,

        θ_j ← θ_j + Σ_{i: ĵ_i = j} n_i (θ̃_i − θ_j) / Σ_{i: ĵ_i = j} n_i

    (through `server_optimizer`, one state per cluster); a cluster nobody chose stays as it
    was. A node remembers its cluster: its "personalized" model is that cluster's current
    model (a node that never trained takes cluster 0), and `extras(server)["cluster"]` [N]
    gives each node's cluster (-1: never trained). k = 1 is FedAvg.

    The choice is the round's prologue (`prologue_epochs=1`): one pass over the node's rows in
    minibatches (`Batch.epoch` < 0) sums every cluster model's training loss (class-weighted
    when `class_weights` is given) without training; the first training step takes the argmin
    (ties: the lowest j). A prologue step reports its batch's mean loss under the model that
    fits the batch best. Under the engine's lanes a step computes both kinds (k forward passes
    and a training step) and keeps one, and a lane holds the k models it received.

    Initialization: the paper starts the k models at random; we derive them from the module's
    parameters (`cluster_inits`): cluster 0 is the module as given, cluster c > 0 permutes the
    entries of every parameter leaf with a key from the engine's init key (so the clusters
    depend on the seed). A permutation keeps an i.i.d. initializer's distribution exactly, but
    leaves a constant leaf (e.g. zero biases) equal in every cluster; a module whose every leaf
    is constant gives k identical models, and IFCA then trains cluster 0 only (FedAvg).

    Args:
      module: the model (all of it is clustered; nothing is personal).
      clusters: k >= 1.
      local_optimizer: as in `fedavg`.
      server_optimizer: as in `fedavg`.
      class_weights: as in `fedavg`.
      loss: as in `fedavg`.

    Raises:
      AlgorithmError: k not an integer >= 1, a bad optimizer or an unknown loss.

    Example:
      >>> algo = ifca(MLP(60, [64], 10, rngs=nnx.Rngs(0)), clusters=4)
    """
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise AlgorithmError(f"ifca: clusters must be an integer >= 1, got {clusters!r}")
    loss = loss_name(loss, "ifca")
    model = split("ifca", module, None)
    local_opt = optimizer(local_optimizer, "ifca", "local_optimizer")
    server_opt = optimizer(server_optimizer, "ifca", "server_optimizer")
    train = split_trainer(model, local_opt, class_weights=class_weights, loss=loss)
    weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def init(key, num_nodes):
        params = cluster_inits(model.shared, key, clusters)
        return IfcaServer(params, jax.vmap(server_opt.init)(params),
                          jnp.full(num_nodes, -1, jnp.int32))

    def start(models, node):
        first = jax.tree.map(lambda m: m[0], models)  # a placeholder until the choice
        return IfcaTrain(models, jnp.zeros(clusters), jnp.asarray(-1, jnp.int32),
                         train.init((first, model.personal)))

    def choose(state: IfcaTrain, batch: Batch, key, task):
        del key

        def cluster_losses(params):  # [B] per-example losses of one cluster model
            outputs = model.apply(params, model.personal, batch.x)
            return example_losses(task, outputs, batch.y, weights, loss), example_losses(
                task, outputs, batch.y, loss=loss)

        fit, plain = jax.vmap(cluster_losses)(state.models)  # [k, B]
        sums = jnp.sum(jnp.where(batch.mask[None], fit, 0.0), axis=1)
        count = jnp.maximum(jnp.sum(batch.mask), 1).astype(plain.dtype)
        best = jnp.min(jnp.sum(jnp.where(batch.mask[None], plain, 0.0), axis=1)) / count
        return state._replace(losses=state.losses + sums), best

    def train_step(state: IfcaTrain, batch: Batch, key, task):
        chosen = state.cluster >= 0
        j = jnp.where(chosen, state.cluster, jnp.argmin(state.losses)).astype(jnp.int32)
        picked = jax.tree.map(lambda m: m[j], state.models)
        params = jax.tree.map(lambda cur, new: jnp.where(chosen, cur, new),
                              state.train.params[0], picked)
        opt_state = jax.tree.map(lambda cur, new: jnp.where(chosen, cur, new),
                                 state.train.opt_state, local_opt.init((params, model.personal)))
        current = state.train._replace(params=(params, model.personal), opt_state=opt_state)
        trained, data_loss = train.step(current, batch, key, task)
        return state._replace(cluster=j, train=trained), data_loss

    def step(state: IfcaTrain, batch: Batch, key, task):
        return jax.lax.cond(batch.epoch < 0, lambda: choose(state, batch, key, task),
                            lambda: train_step(state, batch, key, task))

    def finish(models, node, state: IfcaTrain):
        start_model = jax.tree.map(lambda m: m[state.cluster], models)
        return (delta(state.train.params[0], start_model), state.cluster), state.cluster

    def server_update(server: IfcaServer, uploads, weights_, ids, aggregate=None):
        aggregate = weighted_mean if aggregate is None else aggregate
        deltas, chosen = uploads
        member = (chosen[:, None] == jnp.arange(clusters)[None]) & (weights_[:, None] > 0)
        w = jnp.where(member, weights_[:, None], 0.0)  # [C, k]
        total = jnp.sum(w, axis=0)  # [k]
        # one weighted mean per cluster (as FedAvg's, so k = 1 is FedAvg bit for bit)
        means = [aggregate(deltas, w[:, j]) for j in range(clusters)]
        pseudo_grad = jax.tree.map(lambda *d: -jnp.stack(d), *means)  # [k, ...]
        updates, opt_state = jax.vmap(server_opt.update)(pseudo_grad, server.opt_state,
                                                         server.params)
        params = optax.apply_updates(server.params, updates)
        moved = total > 0

        def keep(new, old):  # clusters nobody chose stay as they were
            return jnp.where(moved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

        trained = weights_ > 0
        cluster = server.cluster.at[ids].set(jnp.where(trained, chosen, server.cluster[ids]))
        return IfcaServer(jax.tree.map(keep, params, server.params),
                          jax.tree.map(keep, opt_state, server.opt_state), cluster)

    def models(received, cluster):
        j = jnp.maximum(cluster, 0)
        return {"personalized": (jax.tree.map(lambda m: m[j], received), model.personal)}

    return Algorithm(
        name="ifca",
        model=model,
        init=init,
        init_node=lambda key: jnp.asarray(-1, jnp.int32),
        broadcast=lambda server: server.params,
        start=start,
        step=step,
        finish=finish,
        server_update=server_update,
        models=models,
        finetune=None,
        extras=lambda server: {"cluster": server.cluster},
        prologue_epochs=1,
    )
