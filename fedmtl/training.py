"""Local training of ONE node, one minibatch step at a time.

Node k takes ceil(n_k / B) steps per epoch; each epoch visits its n_k rows in a fresh random
order that depends only on the node's key and n_k (`epoch_orders`), so results never depend on
where the engine placed the node. An algorithm's `step` sees one fixed-shape batch; the engine
(fedmtl.engine) decides which node each step belongs to. `node_round` runs one node's round on
its own, the plain reference the engine is tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedmtl.objectives import check_loss, masked_mean_loss


class Batch(NamedTuple):
    """One minibatch of one node: x [B, *F], y [B, ...], mask [B] (False: padding row), and
    `epoch` [] int32, the epoch of the round it belongs to: 0..E-1 for the E training epochs,
    -P..-1 for an algorithm's P prologue epochs (`Algorithm.prologue_epochs`), which come
    first."""

    x: jax.Array
    y: jax.Array
    mask: jax.Array
    epoch: jax.Array | int = 0


class Schedule(NamedTuple):
    """Static shape of local training: the task's loss, batch size B, E local epochs and P
    prologue epochs before them (`Algorithm.prologue_epochs`: e.g. IFCA's cluster choice)."""

    task: str = "classification"
    batch_size: int = 10
    epochs: int = 1
    prologue: int = 0


def step_position(step, per_epoch, epochs: int, prologue: int):
    """Where a node's local step `step` falls in a round of P prologue and E training epochs of
    `per_epoch` steps each: (epoch, batch within it, rotated step).

    epoch is -P..-1 in the prologue, 0..E-1 after. The rotated step numbers the training
    steps 0.. and the prologue's after them, so a step's shuffle order (`epoch_orders` index
    rotated // per_epoch) and key (fold_in(step key, rotated)) are those it would have
    without a prologue: training is the same whatever P.
    """
    total = (epochs + prologue) * per_epoch
    rotated = (step - prologue * per_epoch) % total
    return step // per_epoch - prologue, step % per_epoch, rotated


class TrainState(NamedTuple):
    """Parameters being trained on a node, their optimizer state, and the round's constants a
    penalty refers to (`anchor`: e.g. the global model of a proximal term; () when none)."""

    params: Any
    opt_state: Any
    anchor: Any = ()


class Trainer(NamedTuple):
    """Minibatch training of a parameter pytree, one step at a time.

    Attributes:
      init: (params, anchor=()) -> TrainState (the optimizer state starts fresh).
      step: (TrainState, Batch, key, task) -> (TrainState, mean loss over the batch's real rows).
    """

    init: Callable[..., TrainState]
    step: Callable[[TrainState, Batch, jax.Array, str], tuple[TrainState, jax.Array]]


def trainer(
    apply: Callable[[Any, jax.Array], jax.Array], optimizer: optax.GradientTransformation,
    penalty: Callable[[Any, Any], jax.Array] | None = None,
    class_weights=None,
    loss: str | None = None,
) -> Trainer:
    """A `Trainer` taking optax steps on the task's masked mean loss of `apply(params, x)`.

    Args:
      penalty: (params, anchor) -> scalar added to every step's mean batch loss (a proximal
        or multi-task term; `anchor` is the TrainState's constants for the round). The loss a
        step reports is the data loss alone, comparable across algorithms.
      class_weights: optional [C] weights of a classification loss: steps minimise the mean of
        class_weights[y_i] · loss_i over the batch's real rows (e.g.
        `objectives.balanced_class_weights(data.train.y, C)` for rare classes). The loss a step
        reports stays the unweighted one.
      loss: the per-example classification loss by name, one of `objectives.LOSSES`
        ("cross_entropy", "hinge", "squared"); None is cross-entropy (regression: squared
        error). Steps minimise it, and it is the loss a step reports; the evaluation's
        metrics do not change.

    Raises:
      ValueError: an unknown loss name.
    """
    check_loss(loss)
    weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def init(params, anchor=()):
        return TrainState(params, optimizer.init(params), anchor)

    def step(state: TrainState, batch: Batch, key, task: str):
        del key  # plain minibatch steps draw nothing

        def loss_fn(params):
            outputs = apply(params, batch.x)
            data_loss = masked_mean_loss(task, outputs, batch.y, batch.mask, loss=loss)
            fit = data_loss if weights is None else masked_mean_loss(
                task, outputs, batch.y, batch.mask, weights, loss=loss)
            total = fit if penalty is None else fit + penalty(params, state.anchor)
            return total, data_loss

        (_, data_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.anchor), data_loss

    return Trainer(init, step)


def steps_per_epoch(n, batch_size: int):
    """ceil(n / B): steps a node with n rows takes per epoch (0 for an empty node)."""
    return (n + batch_size - 1) // batch_size


_HOST_SORT_ROWS = 2048  # shorter sorts stay in XLA: a host callback has a fixed cost per call


def _sort_on_host(segment: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Row indices sorted by (segment, bits), ties in row order: one stable 64-bit sort."""
    keys = (np.asarray(segment).astype(np.uint64) << np.uint64(32)) | np.asarray(bits)
    return np.argsort(keys, kind="stable").astype(np.int32)


def sort_within_nodes(segment: jax.Array, bits: jax.Array, host: bool = True) -> jax.Array:
    """Row indices [R] sorted by (segment, bits), ties in row order.

    XLA's CPU sort with a payload costs ~0.5 us per row (a quarter of a FedAvg round at
    1,000 nodes), so on a CPU a long sort runs in NumPy through `pure_callback` (10x faster);
    short ones, accelerators, and `host=False` sort with `lax.sort`. Both give the same
    result (tested). The engine passes host=False for programs over several devices: a host
    callback inside a program that spans several CPU devices can deadlock (seen with
    jax 0.10.2 at 1,000 nodes on 2 devices).
    """
    if host and jax.default_backend() == "cpu" and segment.shape[0] >= _HOST_SORT_ROWS:
        shape = jax.ShapeDtypeStruct(segment.shape, jnp.int32)
        return jax.pure_callback(_sort_on_host, shape, segment, bits, vmap_method="sequential")
    rows = jnp.arange(segment.shape[0], dtype=jnp.int32)
    return jax.lax.sort((segment, bits, rows), num_keys=2, is_stable=True)[2]


def epoch_orders(keys: jax.Array, segment: jax.Array, local: jax.Array, epochs: int,
                 host_sort: bool = True) -> jax.Array:
    """Random visiting orders of every node's rows, one per epoch.

    Row i of node k draws bits(fold_in(fold_in(key_k, epoch), i)); sorting by (node, bits)
    shuffles each node's rows in place, so a node's order depends only on (key_k, n_k).

    Args:
      keys: [K] node keys.
      segment: [R] node of each row (non-decreasing: rows are stored node after node).
      local: [R] the row's position within its node.
      epochs: E.
      host_sort: whether a long sort may run on the host (`sort_within_nodes`).

    Returns:
      [E, R] int32: entry offsets[k] + j of epoch e is the row node k visits j-th.
    """

    def one(epoch):
        row_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, epoch)[segment]
        bits = jax.vmap(lambda k, i: jax.random.bits(jax.random.fold_in(k, i)))(row_keys, local)
        return sort_within_nodes(segment, bits, host_sort)

    return jnp.stack([one(epoch) for epoch in range(epochs)])


def batch_rows(order: jax.Array, offset, n, step, batch_size: int):
    """Rows [B] of a node's `step`-th batch within one epoch's `order`, and their mask [B]."""
    position = step * batch_size + jnp.arange(batch_size)
    mask = position < n
    rows = order[offset + jnp.minimum(position, jnp.maximum(n - 1, 0))]
    return rows, mask


def node_steps(step, state, x, y, key, schedule: Schedule, steps: int | None = None, n=None,
               limit=None):
    """One node's local steps on its own rows x [S, *F], y [S, ...], as the engine takes them.

    Without `steps`: (P + E) * ceil(n / B) steps over P prologue then E training epochs, each
    freshly shuffled (`step_position`). With `steps`: exactly that many training steps,
    cycling through one shuffled pass (fine-tuning before evaluation). Node key `key` splits
    into (order key, step key); a step gets fold_in(step key, its rotated step).

    Args:
      n: real rows if rows n.. of x, y are padding (may be traced; default S). The scan then
        runs for S rows and the steps beyond the node's own are exact no-ops, so one
        compilation serves every n <= S.
      limit: take only the first `limit` of those steps (may be traced): a straggler's
        partial work (`fedmtl.systems`).

    Returns:
      (state, loss sum over real examples, examples seen).
    """
    length, b = x.shape[0], schedule.batch_size
    n = length if n is None else n
    epochs, prologue = (schedule.epochs, schedule.prologue) if steps is None else (1, 0)
    rounds = epochs + prologue
    total = int(steps_per_epoch(length, b)) * rounds if steps is None else steps
    real = steps_per_epoch(n, b) * rounds if steps is None else jnp.where(n > 0, steps, 0)
    if limit is not None:
        real = jnp.minimum(real, limit)
    per_epoch = jnp.maximum(steps_per_epoch(n, b), 1)
    k_order, k_step = jax.random.split(key)
    padding = (jnp.arange(length) >= n).astype(jnp.int32)  # sorts padding rows last
    orders = epoch_orders(k_order[None], padding, jnp.arange(length), rounds)

    def one(state, s):
        epoch, index, rotated = step_position(s, per_epoch, epochs, prologue)
        rows, mask = batch_rows(orders[jnp.minimum(rotated // per_epoch, rounds - 1)], 0, n,
                                index, b)
        batch = Batch(x[rows], y[rows], mask, jnp.asarray(epoch, jnp.int32))
        new, loss = step(state, batch, jax.random.fold_in(k_step, rotated), schedule.task)
        active = s < real
        state = jax.tree.map(lambda a, o: jnp.where(active, a, o), new, state)
        seen = jnp.where(active, jnp.sum(mask), 0).astype(loss.dtype)
        return state, (loss * seen, seen)

    if length == 0 or total == 0:
        return state, jnp.zeros(()), jnp.zeros(())
    state, (losses, seen) = jax.lax.scan(one, state, np.arange(total))
    return state, jnp.sum(losses), jnp.sum(seen)


def node_round(algorithm, broadcast, node_state, x, y, key, schedule: Schedule, n=None,
               work=None):
    """One node's round on its own rows: `start`, `node_steps` (`n` as there; `work` its
    `limit`: a straggler's first `work` steps), `finish`: the per-node reference the engine is
    tested against, and what a 100-line prototype loops.

    Returns:
      (upload, new node state, (loss sum over real examples, examples seen)).
    """
    schedule = schedule._replace(prologue=algorithm.prologue_epochs)
    state = algorithm.start(broadcast, node_state)
    state, loss, seen = node_steps(algorithm.step, state, x, y, key, schedule, n=n, limit=work)
    upload, node_state = algorithm.finish(broadcast, node_state, state)
    return upload, node_state, (loss, seen)
