"""The engine: vmaps an algorithm's per-node functions over all nodes inside one jitted round.

A round: sample a fixed-size cohort → per size bucket, `vmap(node_update)` over the cohort's
slots → concatenate uploads [C, ...] → `server_update`. Rounds are fused with `lax.scan`, so
many rounds run with one device→host sync. This module holds the only `jax.vmap` over nodes
and the only `jax.jit` of the library.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedmtl.algorithms import Algorithm
from fedmtl.data import FederatedData
from fedmtl.layout import Bucket, make_buckets, real_share
from fedmtl.objectives import finish_metrics, metric_sums
from fedmtl.training import NodeData, Schedule

_INIT, _ROUNDS, _FINETUNE = 0, 1, 2


class Federation(NamedTuple):
    """How the federation runs.

    Attributes:
      rounds: communication rounds.
      cohort_size: nodes sampled per round, uniformly without replacement (None: all).
      local_epochs: E passes over a node's data per round.
      batch_size: B; node k takes ceil(n_k / B) · E steps per round.
      finetune_steps: local steps that personalize a global model before testing (0: none).
      seed: seeds cohorts, shuffling and fine-tuning.
      max_buckets: at most this many node-size buckets (1 = one common padded length).
      min_real_share: least share of computed sample-steps that are real examples; nodes are
        bucketed by size until padding is at most 1 - this (unless `max_buckets` is reached).
      bucket_cost: beyond that, sample-steps one more bucket must save over the whole run to
        be worth its compilation (about a second on a CPU); 0 buckets as finely as allowed.
      rounds_per_sync: rounds fused into one jitted `lax.scan` between host syncs.
    """

    rounds: int = 50
    cohort_size: int | None = None
    local_epochs: int = 1
    batch_size: int = 10
    finetune_steps: int = 0
    seed: int = 0
    max_buckets: int = 24
    min_real_share: float = 0.75
    bucket_cost: float = 1e6
    rounds_per_sync: int = 10


class EngineState(NamedTuple):
    """server: the algorithm's server state; nodes: node states, leaves [N, ...]; round: []."""

    server: Any
    nodes: Any
    round: jax.Array


class BucketArrays(NamedTuple):
    """Device arrays of one bucket: train x [n_b, S, *F], y, n [n_b]; test xt [n_b, T, *F]..."""

    x: jax.Array
    y: jax.Array
    n: jax.Array
    xt: jax.Array
    yt: jax.Array
    nt: jax.Array


def _check_federation(fed: Federation, num_nodes: int) -> None:
    checks = [
        (fed.rounds >= 0, f"rounds must be >= 0, got {fed.rounds}"),
        (fed.local_epochs >= 1, f"local_epochs must be >= 1, got {fed.local_epochs}"),
        (fed.batch_size >= 1, f"batch_size must be >= 1, got {fed.batch_size}"),
        (fed.finetune_steps >= 0, f"finetune_steps must be >= 0, got {fed.finetune_steps}"),
        (fed.max_buckets >= 1, f"max_buckets must be >= 1, got {fed.max_buckets}"),
        (0 <= fed.min_real_share <= 1,
         f"min_real_share must be in [0, 1], got {fed.min_real_share}"),
        (fed.rounds_per_sync >= 1, f"rounds_per_sync must be >= 1, got {fed.rounds_per_sync}"),
        (
            fed.cohort_size is None or 1 <= fed.cohort_size <= num_nodes,
            f"cohort_size must be in [1, {num_nodes}] (the number of nodes), "
            f"got {fed.cohort_size}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _lead(mask: jax.Array, like: jax.Array) -> jax.Array:
    """A node mask [n] shaped to broadcast against `like` [n, ...]."""
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))


def _zeros_like_shapes(shapes):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


class Engine:
    """Runs an algorithm on federated data.

    Example:
      >>> engine = Engine(fedavg(model), data, Federation(rounds=20))
      >>> state, history = engine.run(engine.init())
      >>> per_node = engine.evaluate(state)   # {kind: {metric: [N]}}

    Args:
      algorithm: an `Algorithm`.
      data: the nodes' data.
      federation: the run's configuration.
      empty_nodes: nodes without data appended to the node axis (e.g. to round it to a
        multiple of the device count); they take no-op steps, weigh zero, are never sampled
        and are left out of `evaluate`.
    """

    def __init__(
        self, algorithm: Algorithm, data: FederatedData, federation: Federation | None = None,
        *, empty_nodes: int = 0,
    ):
        federation = Federation() if federation is None else federation
        _check_federation(federation, data.num_nodes)
        self.algorithm, self.data, self.federation = algorithm, data, federation
        self.num_real = data.num_nodes
        self.num_nodes = data.num_nodes + empty_nodes
        train_counts = np.concatenate([data.train.counts, np.zeros(empty_nodes, np.int64)])
        test_counts = np.concatenate([data.test.counts, np.zeros(empty_nodes, np.int64)])
        self.schedule = Schedule(data.task, federation.batch_size, federation.local_epochs)
        self.buckets = make_buckets(
            train_counts, test_counts, federation.batch_size, federation.max_buckets,
            min_real_share=federation.min_real_share,
            min_saving=federation.bucket_cost / (
                max(federation.rounds, 1) * federation.local_epochs * federation.batch_size
            ),
        )
        self.padding_real_share = real_share(self.buckets, data.train.counts)
        cohort = federation.cohort_size
        self.full_participation = cohort is None or cohort >= self.num_real
        # A bucket reserves one slot per node it could receive, so no sampled node is dropped.
        self.slots = [
            len(b.ids) if self.full_participation else min(len(b.ids), cohort)
            for b in self.buckets
        ]
        self.arrays = [self._bucket_arrays(b) for b in self.buckets]
        self._run = jax.jit(self._rounds, static_argnums=(2,), donate_argnums=(0,))
        self._evaluate = jax.jit(self._evaluate_all)
        self._node_models = jax.jit(self._node_models_all)
        self._init = jax.jit(self._init_state)  # fresh buffers: `run` donates the state

    def _bucket_arrays(self, bucket: Bucket) -> BucketArrays:
        real = bucket.ids[bucket.ids < self.num_real]
        empty = len(bucket.ids) - len(real)

        def padded(split, length):
            x, y, _ = split.padded(length, real)
            pad = lambda a: np.concatenate([a, np.zeros((empty,) + a.shape[1:], a.dtype)])
            return jnp.asarray(pad(x)), jnp.asarray(pad(y))

        counts = lambda split: jnp.asarray(
            np.concatenate([split.counts[real], np.zeros(empty, np.int64)]), jnp.int32
        )
        x, y = padded(self.data.train, bucket.length)
        xt, yt = padded(self.data.test, bucket.test_length)
        return BucketArrays(x, y, counts(self.data.train), xt, yt, counts(self.data.test))

    # ----- state -----

    def _key(self, purpose: int) -> jax.Array:
        """Independent streams from one seed: node init, rounds, fine-tuning."""
        return jax.random.fold_in(jax.random.key(self.federation.seed), purpose)

    def init(self) -> EngineState:
        """Initial server state and stacked node states (leaves [N, ...])."""
        return self._init()

    def _init_state(self) -> EngineState:
        k_server, k_nodes = jax.random.split(self._key(_INIT))
        node_keys = jax.vmap(lambda i: jax.random.fold_in(k_nodes, i))(jnp.arange(self.num_nodes))
        nodes = jax.vmap(self.algorithm.init_node)(node_keys)  # leaves [N, ...]
        return EngineState(self.algorithm.init(k_server), nodes, jnp.zeros((), jnp.int32))

    # ----- one round -----

    def _cohort_slots(self, bucket: Bucket, slots: int, selected: jax.Array):
        """Bucket-local indices [slots] of the bucket's selected nodes first, and their mask."""
        chosen = selected[bucket.ids]
        local = jnp.argsort(~chosen, stable=True)[:slots]
        return local, chosen[local]

    def _round(self, state: EngineState, arrays: list[BucketArrays]):
        algo, fed = self.algorithm, self.federation
        key = jax.random.fold_in(self._key(_ROUNDS), state.round)
        k_cohort, k_nodes = jax.random.split(key)
        broadcast = algo.broadcast(state.server)
        if not self.full_participation:
            chosen = jax.random.permutation(k_cohort, self.num_real)[: fed.cohort_size]
            selected = jnp.zeros(self.num_nodes, bool).at[chosen].set(True)
        nodes = state.nodes
        uploads, weights, losses, seens = [], [], [], []
        for bucket, slots, arr in zip(self.buckets, self.slots, arrays, strict=True):
            if self.full_participation:
                local, active = slice(None), jnp.ones(len(bucket.ids), bool)
                ids = jnp.asarray(bucket.ids)
            else:
                local, active = self._cohort_slots(bucket, slots, selected)
                ids = jnp.asarray(bucket.ids)[local]
            n = jnp.where(active, arr.n[local], 0)
            data = NodeData(arr.x[local], arr.y[local], n)
            node_states = jax.tree.map(lambda leaf, ids=ids: leaf[ids], nodes)
            keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_nodes, ids)

            def update(node_states, data, keys):
                return jax.vmap(algo.node_update, in_axes=(None, 0, 0, 0, None))(
                    broadcast, node_states, data, keys, self.schedule
                )

            if self.full_participation:
                upload, new_states, (loss, seen) = update(node_states, data, keys)
            else:  # skip buckets with no sampled node (e.g. the few largest nodes)
                shapes = jax.eval_shape(update, node_states, data, keys)
                upload, new_states, (loss, seen) = jax.lax.cond(
                    jnp.any(active), update, lambda *_, s=shapes: _zeros_like_shapes(s),
                    node_states, data, keys,
                )
            new_states = jax.tree.map(
                lambda new, old, a=active: jnp.where(_lead(a, new), new, old),
                new_states, node_states,
            )
            nodes = jax.tree.map(lambda leaf, v, ids=ids: leaf.at[ids].set(v), nodes, new_states)
            uploads.append(upload)
            weights.append(n.astype(jnp.float32))
            losses.append(loss)
            seens.append(seen)
        uploads = jax.tree.map(lambda *u: jnp.concatenate(u), *uploads)
        weights = jnp.concatenate(weights)
        server = algo.server_update(state.server, uploads, weights)
        seen = jnp.sum(jnp.concatenate(seens))
        metrics = {
            "train_loss": jnp.sum(jnp.concatenate(losses)) / jnp.maximum(seen, 1.0),
            "participants": jnp.sum(weights > 0),
        }
        return EngineState(server, nodes, state.round + 1), metrics

    def _rounds(self, state: EngineState, arrays, num_rounds: int):
        return jax.lax.scan(lambda s, _: self._round(s, arrays), state, None, length=num_rounds)

    def run(self, state: EngineState, rounds: int | None = None, *, callback=None):
        """Runs `rounds` rounds (default: the federation's), `rounds_per_sync` per jitted scan.

        Args:
          callback: called as callback(round_done, metrics) after each fused chunk, with the
            chunk's last round metrics as floats (this is the only host sync).

        Returns:
          (state, history): history maps each metric to a numpy array [rounds].
        """
        rounds = self.federation.rounds if rounds is None else rounds
        chunk = self.federation.rounds_per_sync
        history, done = [], 0
        while done < rounds:
            n = min(chunk, rounds - done)
            state, metrics = self._run(state, self.arrays, n)
            done += n
            history.append(metrics)
            if callback is not None:
                callback(int(state.round), {k: float(v[-1]) for k, v in metrics.items()})
        if not history:
            return state, {}
        history = jax.device_get(history)
        return state, {k: np.concatenate([h[k] for h in history]) for k in history[0]}

    # ----- evaluation -----

    def _bucket_models(self, state: EngineState, bucket: Bucket, arr: BucketArrays) -> dict:
        """{kind: (shared, personal)} of a bucket's nodes, leaves [n_b, ...]; a global model
        is also fine-tuned into "personalized" when `finetune_steps` > 0."""
        algo, fed = self.algorithm, self.federation
        ids = jnp.asarray(bucket.ids)
        node_states = jax.tree.map(lambda leaf: leaf[ids], state.nodes)
        kinds = jax.vmap(algo.models, in_axes=(None, 0), axis_size=len(bucket.ids))(
            algo.broadcast(state.server), node_states
        )
        if fed.finetune_steps and algo.finetune and "global" in kinds:
            keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(self._key(_FINETUNE), ids)
            kinds["personalized"] = jax.vmap(algo.finetune, in_axes=(0, 0, 0, None, None))(
                kinds["global"], NodeData(arr.x, arr.y, arr.n), keys, self.schedule,
                fed.finetune_steps,
            )
        return kinds

    def _evaluate_all(self, state: EngineState, arrays: list[BucketArrays]):
        task, apply = self.data.task, self.algorithm.model.apply
        out = {}
        for bucket, arr in zip(self.buckets, arrays, strict=True):
            mask = jnp.arange(arr.xt.shape[1])[None, :] < arr.nt[:, None]
            for kind, (shared, personal) in self._bucket_models(state, bucket, arr).items():
                sums = jax.vmap(lambda s, p, x, y, m: metric_sums(task, apply(s, p, x), y, m))(
                    shared, personal, arr.xt, arr.yt, mask
                )
                acc = out.setdefault(kind, {k: jnp.zeros(self.num_nodes) for k in sums})
                for k, v in sums.items():
                    acc[k] = acc[k].at[bucket.ids].set(v)
        return {kind: finish_metrics(task, sums) for kind, sums in out.items()}

    def _node_models_all(self, state: EngineState, arrays: list[BucketArrays]):
        out = {}
        for bucket, arr in zip(self.buckets, arrays, strict=True):
            for kind, params in self._bucket_models(state, bucket, arr).items():
                acc = out.setdefault(kind, jax.tree.map(
                    lambda v: jnp.zeros((self.num_nodes,) + v.shape[1:], v.dtype), params
                ))
                out[kind] = jax.tree.map(lambda a, v, i=bucket.ids: a.at[i].set(v), acc, params)
        return out

    def node_models(self, state: EngineState) -> dict:
        """Each real node's model of every kind, as used by `evaluate` (fine-tuning included):
        {kind: (shared, personal)} with leaves [N, ...]."""
        models = self._node_models(state, self.arrays)
        return jax.tree.map(lambda leaf: leaf[: self.num_real], models)

    def evaluate(self, state: EngineState) -> dict[str, dict[str, np.ndarray]]:
        """Test metrics of every real node for each model kind: {kind: {metric: [N]}}.

        Nodes without test examples get NaN (no metric); any other non-finite metric raises
        FloatingPointError naming the node.
        """
        tested = self.data.test.counts > 0
        result = jax.device_get(self._evaluate(state, self.arrays))
        per_node = {
            kind: {k: np.asarray(v[: self.num_real]) for k, v in metrics.items()}
            for kind, metrics in result.items()
        }
        for kind, metrics in per_node.items():
            for name, values in metrics.items():
                bad = np.flatnonzero(tested & ~np.isfinite(values))
                if bad.size:
                    raise FloatingPointError(
                        f"{self.algorithm.name}: {kind} model has non-finite test {name} on "
                        f"{bad.size} node(s), first node {self.data.names[bad[0]]!r}; lower the "
                        "learning rate or check the data"
                    )
        return per_node
