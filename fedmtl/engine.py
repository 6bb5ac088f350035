"""The engine: runs an algorithm's per-node functions for all nodes inside one jitted round.

A round: plan who takes part and for how many steps (`fedmtl.systems`: sampling,
stragglers, dropouts, availability, the simulated clock) → deal the cohort's nodes to L lanes
(`fedmtl.lanes`) → one loop in which every lane takes a `vmap`-ed `step` of its current node,
starting (`start`) and finishing (`finish`) nodes as they come → uploads [C, ...] → local DP,
an attack, central DP (`fedmtl.privacy`) → `server_update`, whose averages go through the
round's `aggregate` (a robust rule, DP's noised mean or secure aggregation's masked sum).
Data stays ragged on the device (no per-node padding), so one compiled loop serves every node
size. Rounds are fused with `lax.scan`, so many rounds run with one device→host sync. This
module holds the only `jax.vmap` over nodes and the only `jax.jit` of the library.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedmtl import accounting, protection
from fedmtl import attacks as attacks_lib
from fedmtl import federation as federation_lib
from fedmtl import lanes as lanes_lib
from fedmtl import privacy as privacy_lib
from fedmtl import systems as systems_lib
from fedmtl.algorithms import Algorithm, for_node
from fedmtl.data import FederatedData, Split
from fedmtl.federation import Federation
from fedmtl.models import check_model
from fedmtl.objectives import (
    binary_scores,
    finish_metrics,
    metric_sums,
    metrics,
    node_auc,
)
from fedmtl.robust import Aggregator
from fedmtl.systems import SystemsError
from fedmtl.training import (
    Batch,
    Schedule,
    batch_rows,
    epoch_orders,
    step_position,
    steps_per_epoch,
)

_INIT, _ROUNDS, _FINETUNE, _SYSTEMS, _ATTACK, _AGGREGATE, _PRIVACY = 0, 1, 2, 3, 4, 5, 6
EVAL_BATCH = 64  # test rows per evaluation step


class DivergenceError(FloatingPointError):
    """Training or evaluation produced NaN or infinite values; the message names the algorithm,
    the round or the node. `state` and `history` hold the run up to the point it stopped."""

    def __init__(self, message: str, *, state=None, history=None):
        super().__init__(message)
        self.state, self.history = state, history


def _concat(history: list[dict]) -> dict[str, np.ndarray]:
    """Chunks of per-round metrics [n] -> one array [rounds] per metric."""
    return {k: np.concatenate([h[k] for h in history]) for k in history[0]} if history else {}


class EngineState(NamedTuple):
    """server: the algorithm's server state; nodes: node states, leaves [N, ...]; round: [];
    clock: [] simulated time elapsed (`fedmtl.systems`); clip_norm: [] the DP clip norm of the
    next round (adaptive clipping moves it; `fedmtl.privacy`)."""

    server: Any
    nodes: Any
    round: jax.Array
    clock: jax.Array
    clip_norm: jax.Array


class SplitArrays(NamedTuple):
    """One split on the device, ragged: rows x [R, *F], y [R, ...] node after node; per node
    offsets [N] and counts [N]; per row its node `segment` [R] and position `local` [R]."""

    x: jax.Array
    y: jax.Array
    offsets: jax.Array
    counts: jax.Array
    segment: jax.Array
    local: jax.Array


def _split_arrays(split: Split, empty_nodes: int, y=None) -> SplitArrays:
    counts = np.concatenate([split.counts, np.zeros(empty_nodes, np.int64)])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    segment = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(len(segment)) - offsets[segment]
    x, y = split.x, split.y if y is None else y
    if len(x) == 0:  # keep gathers well defined; counts are all 0, so the row is never used
        x, y = np.zeros((1,) + x.shape[1:], x.dtype), np.zeros((1,) + y.shape[1:], y.dtype)
    i32 = lambda a: jnp.asarray(a, jnp.int32)
    return SplitArrays(jnp.asarray(x), jnp.asarray(y), i32(offsets[:-1]), i32(counts),
                       i32(segment), i32(local))


def _lead(mask: jax.Array, like: jax.Array) -> jax.Array:
    """A lane mask [L] shaped to broadcast against `like` [L, ...]."""
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))


def _select(mask, new, old):
    return jax.tree.map(lambda a, b: jnp.where(_lead(mask, a), a, b), new, old)


def _gather(tree, ids):
    return jax.tree.map(lambda leaf: leaf[ids], tree)


def _scatter(tree, ids, values):
    """tree[ids] = values, skipping ids out of range (lanes with nothing to write)."""
    return jax.tree.map(lambda leaf, v: leaf.at[ids].set(v, mode="drop"), tree, values)


def _zeros(shapes, lead: int):
    return jax.tree.map(lambda s: jnp.zeros((lead,) + s.shape, s.dtype), shapes)


def _bind(aggregator: Aggregator, key: jax.Array):
    """aggregator.aggregate as (uploads, weights) -> one upload; each call in a round gets its
    own key (fold_in of the call's number, counted while tracing)."""
    calls = iter(range(1 << 30))
    return lambda uploads, weights: aggregator.aggregate(
        uploads, weights, jax.random.fold_in(key, next(calls)))


def _lane_count(fed: Federation, steps: np.ndarray, width: int | None = None) -> int:
    if fed.lanes is not None:
        return min(fed.lanes, max(len(steps), 1))
    cost = fed.lane_step_cost
    if cost is None:
        cost = 4.0 if jax.default_backend() == "cpu" else 2048.0
    if width is not None and width < len(steps):  # a cohort: evenly spaced sizes stand in
        steps = np.sort(steps)[np.linspace(0, len(steps) - 1, width).round().astype(int)]
    return lanes_lib.choose(steps, cost)


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
        multiple of the device count); they take no steps, weigh zero, are never sampled
        and are left out of `evaluate`.

    Attributes:
      lanes: nodes trained side by side in a round.
      real_share: with every node taking part, the share of the computed sample-steps
        (lanes × loop steps × B) that are real examples.
    """

    def __init__(
        self, algorithm: Algorithm, data: FederatedData, federation: Federation | None = None,
        *, empty_nodes: int = 0,
    ):
        fed = Federation() if federation is None else federation
        federation_lib.check(fed, data.num_nodes)
        systems_lib.check(fed.systems, data.names, fed.cohort_size)
        check_model(algorithm.model, data)  # a named error now, not a traceback mid-training
        self.algorithm, self.data, self.federation = algorithm, data, fed
        self.num_real = data.num_nodes
        self.num_nodes = data.num_nodes + empty_nodes
        self.schedule = Schedule(data.task, fed.batch_size, fed.local_epochs,
                                 algorithm.prologue_epochs)
        self.epochs = fed.local_epochs + algorithm.prologue_epochs  # passes per round
        attack = fed.attack
        attackers = (np.zeros(data.num_nodes, bool) if attack is None
                     else attacks_lib.attackers(attack.fraction, data.num_nodes, fed.seed))
        self.attackers = jnp.asarray(np.concatenate([attackers, np.zeros(empty_nodes, bool)]))
        labels = None
        if attack is not None and attack.labels is not None:
            if data.task != "classification":
                raise attacks_lib.AttackError(f"{attack.name}: flips class labels; the data's "
                                              f"task is {data.task}")
            rows = np.repeat(attackers, data.train.counts)
            labels = np.where(rows, attack.labels(data.train.y, data.num_classes),
                              data.train.y)
        # Passed to the jitted functions as arguments (never captured as constants).
        self.train = _split_arrays(data.train, empty_nodes, labels)
        self.test = _split_arrays(data.test, empty_nodes)
        self.cohort, expected = systems_lib.slots(fed.systems, fed.cohort_size, self.num_real,
                                                  self.num_nodes)
        steps = self.epochs * steps_per_epoch(data.train.counts, fed.batch_size)
        width = max(1, min(round(expected), self.cohort))
        self.lanes = min(_lane_count(fed, steps, width), self.cohort)
        self.makespan = lanes_lib.makespan(steps, self.lanes)
        computed = self.lanes * self.makespan * fed.batch_size
        self.real_share = float(self.epochs * data.train.counts.sum() / max(computed, 1))
        self.finetune_lanes = _lane_count(fed, np.full(self.num_nodes, fed.finetune_steps))
        self.eval_lanes = _lane_count(fed, steps_per_epoch(data.test.counts, EVAL_BATCH))
        self.mechanism = None  # DP: resolved below, once the upload's shapes are known
        self.upload_shapes = self._upload_shapes()  # one node's upload: the round's buffer
        self.upload_bytes = sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize
                                for leaf in jax.tree.leaves(self.upload_shapes))
        units = (self.epochs if fed.systems.straggler_unit == "epoch" else steps)
        systems_lib.check_reachable(fed.systems, data.names, data.train.counts, fed.rounds,
                                    np.broadcast_to(units, steps.shape), self.upload_bytes)
        self.profile = systems_lib.profile(fed.systems, self.num_real, self.num_nodes, fed.seed)
        if fed.aggregator is not None:
            fed.aggregator.check(max(1, round(expected)))
        self.mechanism = protection.mechanism(
            fed, algorithm.name, self.upload_shapes, data.train.counts, expected)
        self._epsilons = np.zeros(0)
        self.secure = protection.secure_rule(
            fed, algorithm, lambda: jax.eval_shape(lambda: self._init_state().server),
            self.upload_shapes, self.cohort, expected)
        if not fed.systems.is_neutral and fed.rounds:
            self._check_participation(fed.rounds)
        self._run = jax.jit(self._rounds, static_argnums=(4,), donate_argnums=(0,))
        self._participation = jax.jit(self._plans, static_argnums=(1,))
        self._evaluate = jax.jit(self._evaluate_all)
        self._node_models = jax.jit(self._models)
        self._init = jax.jit(self._init_state)  # fresh buffers: `run` donates the state

    # ----- state -----

    def _key(self, purpose: int) -> jax.Array:
        """Independent streams from one seed: node init, rounds, fine-tuning."""
        return jax.random.fold_in(jax.random.key(self.federation.seed), purpose)

    def _per_node(self, key: jax.Array) -> jax.Array:
        """Node k's key fold_in(key, k), for every node [N]."""
        return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(self.num_nodes))

    def init(self) -> EngineState:
        """Initial server state and stacked node states (leaves [N, ...])."""
        return self._init()

    def _init_state(self) -> EngineState:
        k_server, k_nodes = jax.random.split(self._key(_INIT))
        nodes = jax.vmap(self.algorithm.init_node)(self._per_node(k_nodes))  # leaves [N, ...]
        server = self.algorithm.init(k_server, self.num_nodes)
        clip = 0.0 if self.mechanism is None else self.mechanism.privacy.clip
        return EngineState(server, nodes, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32),
                           jnp.asarray(clip, jnp.float32))

    def epsilons(self, rounds: int) -> np.ndarray:
        """ε at the privacy setting's δ after each of rounds 1..rounds, by RDP [rounds]
        (empty without privacy)."""
        m = self.mechanism
        if m is None:
            return np.zeros(0)
        if len(self._epsilons) < rounds:
            self._epsilons = accounting.epsilons(m.round, m.noise_multiplier, rounds,
                                                 m.privacy.delta)
        return self._epsilons[:rounds]

    def privacy_report(self, rounds: int) -> dict:
        """The run's privacy guarantee after `rounds` rounds (`protection.report`)."""
        return protection.report(self.federation.privacy, self.mechanism, rounds)

    def _upload_shapes(self):
        """Shapes of one node's upload (the round's upload buffer; the clock's upload time)."""
        algo = self.algorithm

        def upload(state: EngineState):
            broadcast = algo.broadcast(state.server)
            node = jnp.zeros((), jnp.int32)
            node_state = _gather(state.nodes, node)
            train = algo.start(for_node(broadcast, node), node_state)
            return algo.finish(for_node(broadcast, node), node_state, train)[0]

        return jax.eval_shape(lambda: upload(self._init_state()))

    # ----- lanes -----

    def _train_lanes(self, tr: SplitArrays, ids, steps, num_lanes, start, step, finish, out, key,
                     epochs, prologue=0):
        """Trains the nodes `ids` [C] for `steps` [C] steps each on `num_lanes` lanes.

        Args:
          tr: the training split.
          start: (node id) -> training state; step: the algorithm's step function.
          finish: (out, node ids [L], slots [L], states [L, ...], done [L]) -> out.
          out: what `finish` accumulates into.
          key: stream of this pass; node k's orders and step keys derive from fold_in(key, k).
          epochs, prologue: E training epochs after P prologue epochs, each shuffled; where a
            node's step falls is `training.step_position`.

        Returns:
          (out, loss sum over real examples, examples seen).
        """
        b = self.federation.batch_size
        k_order, k_step = jnp.moveaxis(jax.vmap(jax.random.split)(self._per_node(key)), 1, 0)
        orders = epoch_orders(k_order, tr.segment, tr.local, epochs + prologue).reshape(-1)
        rows_total = tr.segment.shape[0]
        slot_ids = jnp.concatenate([ids, ids[:1]])  # slot C (no node) reads a real one, unused
        first_ids = slot_ids[jnp.zeros(num_lanes, jnp.int32)]
        states = jax.vmap(start)(first_ids)

        def body(carry, pos: lanes_lib.Position):
            states, out, loss_sum, seen = carry
            node = slot_ids[pos.slot]
            states = jax.lax.cond(  # a lane picks up its next node
                jnp.any(pos.first), lambda: _select(pos.first, jax.vmap(start)(node), states),
                lambda: states,
            )
            n = tr.counts[node]
            per_epoch = jnp.maximum(steps_per_epoch(n, b), 1)
            epoch, index, rotated = step_position(pos.step, per_epoch, epochs, prologue)
            shuffle = jnp.minimum(rotated // per_epoch, epochs + prologue - 1)
            rows, mask = jax.vmap(batch_rows, in_axes=(None, 0, 0, 0, None))(
                orders, shuffle * rows_total + tr.offsets[node], n, index, b
            )
            mask = mask & pos.active[:, None]
            keys = jax.vmap(jax.random.fold_in)(k_step[node], rotated)
            new, loss = jax.vmap(step, in_axes=(0, 0, 0, None))(
                states, Batch(tr.x[rows], tr.y[rows], mask, epoch), keys, self.schedule.task
            )
            states = _select(pos.active, new, states)
            count = jnp.sum(mask, axis=1).astype(loss.dtype)
            done = pos.active & pos.last
            out = jax.lax.cond(
                jnp.any(done), lambda: finish(out, node, pos.slot, states, done), lambda: out
            )
            return states, out, loss_sum + jnp.where(count > 0, loss * count, 0.0), seen + count

        zero = jnp.zeros(num_lanes)
        lanes = lanes_lib.deal(steps, num_lanes)
        _, out, loss_sum, seen = lanes_lib.run(lanes, body, (states, out, zero, zero))
        return out, jnp.sum(loss_sum), jnp.sum(seen)

    # ----- one round -----

    def _plan(self, round_, counts, profile) -> systems_lib.Plan:
        """Round `round_`'s participation (`fedmtl.systems.plan`)."""
        fed = self.federation
        k_cohort, _ = jax.random.split(jax.random.fold_in(self._key(_ROUNDS), round_))
        return systems_lib.plan(
            fed.systems, profile, counts, round_, k_cohort,
            jax.random.fold_in(self._key(_SYSTEMS), round_), num_real=self.num_real,
            cohort=self.cohort, epochs=self.epochs, batch_size=fed.batch_size,
            upload_bytes=self.upload_bytes,
        )

    def _plans(self, counts, rounds: int, profile):
        return jax.vmap(lambda r: self._plan(r, counts, profile))(jnp.arange(rounds))

    def _check_participation(self, rounds: int) -> None:
        """Plans every round before anything trains (one small compilation; memory O(N)):
        SystemsError if no node would report in any round, or a Poisson cohort would
        overflow its slots."""

        def planned(counts, profile):
            def one(round_):
                metrics = self._plan(round_, counts, profile).metrics
                return (metrics["participants"], metrics["sampled"], metrics["dropped"],
                        metrics.get("overflow", jnp.zeros((), bool)))

            return jax.lax.map(one, jnp.arange(rounds))

        reported, sampled, dropped, overflow = jax.device_get(
            jax.jit(planned)(self.train.counts, self.profile))
        if overflow.any():
            raise SystemsError(
                f"round {int(np.flatnonzero(overflow)[0]) + 1} would sample more nodes than "
                f"the Poisson cohort's {self.cohort} slots; raise Systems.capacity "
                "(CLI: --capacity)")
        if not reported.any():
            raise SystemsError(
                f"systems: the cohort would be empty in every round: no node reports in any of "
                f"the {rounds} rounds (per round {sampled.mean():.1f} sampled, "
                f"{dropped.mean():.1f} dropped; under straggler_policy 'drop' a cohort of "
                "stragglers reports nothing)")

    def participation(self, rounds: int | None = None) -> dict[str, np.ndarray]:
        """The participation trace of rounds 0 .. rounds-1 (default: the federation's), as
        training will follow it: ids, steps and weights [R, C] (node of each cohort slot, its
        local steps, its upload's weight; 0 = took no part / not reported) and each round's
        systems metrics [R]. A pure function of the seed and the nodes' sizes: the same
        whatever the lane count."""
        rounds = self.federation.rounds if rounds is None else rounds
        plans = jax.device_get(self._participation(self.train.counts, rounds, self.profile))
        return {"ids": plans.ids, "steps": plans.steps, "weights": plans.weights,
                **plans.metrics}

    def _round(self, state: EngineState, tr: SplitArrays, profile, attackers):
        algo, fed = self.algorithm, self.federation
        key = jax.random.fold_in(self._key(_ROUNDS), state.round)
        _, k_nodes = jax.random.split(key)
        broadcast = algo.broadcast(state.server)
        plan = self._plan(state.round, tr.counts, profile)
        ids, steps, weights = plan.ids, plan.steps, plan.weights

        start = lambda node: algo.start(for_node(broadcast, node), _gather(state.nodes, node))
        finish_node = lambda nodes, node, train_state: algo.finish(
            for_node(broadcast, node), _gather(nodes, node), train_state)
        def finish(out, node, slot, states, done):
            nodes, uploads = out
            upload, new = jax.vmap(finish_node, in_axes=(None, 0, 0))(nodes, node, states)
            nodes = _scatter(nodes, jnp.where(done, node, self.num_nodes), new)
            uploads = _scatter(uploads, jnp.where(done, slot, self.cohort), upload)
            return nodes, uploads

        out = (state.nodes, _zeros(self.upload_shapes, self.cohort))
        (nodes, uploads), loss, seen = self._train_lanes(
            tr, ids, steps, self.lanes, start, algo.step, finish, out, k_nodes, fed.local_epochs,
            algo.prologue_epochs,
        )
        metrics = {}
        mech = self.mechanism
        k_privacy = jax.random.fold_in(self._key(_PRIVACY), state.round)
        if mech is not None and mech.privacy.where == "local":  # noised before it leaves
            uploads = privacy_lib.on_nodes(mech, uploads, weights, k_privacy)
        attack = fed.attack
        if attack is not None and attack.corrupt is not None:
            attacking = attackers[ids] & (weights > 0)
            uploads = attack.corrupt(uploads, weights, attacking,
                                     jax.random.fold_in(self._key(_ATTACK), state.round))
            metrics["attackers"] = jnp.sum(attacking)
        clip = state.clip_norm
        if mech is not None and mech.privacy.where == "central":
            uploads, aggregate, clip, dp_metrics = privacy_lib.at_server(
                mech, uploads, weights, state.clip_norm, k_privacy)
            metrics.update(dp_metrics)
        elif fed.aggregator is not None or self.secure is not None:
            aggregate = _bind(fed.aggregator or self.secure,
                              jax.random.fold_in(self._key(_AGGREGATE), state.round))
        else:
            aggregate = None
        extra = {} if aggregate is None else {"aggregate": aggregate}
        updated = algo.server_update(state.server, uploads, weights, ids, **extra)
        reported = jnp.any(weights > 0)  # a round nobody reported leaves the server as it was
        server = jax.tree.map(lambda new, old: jnp.where(reported, new, old), updated,
                              state.server)
        clip = jnp.where(reported, clip, state.clip_norm)
        clock = state.clock + plan.metrics["round_time"]
        metrics = {"train_loss": loss / jnp.maximum(seen, 1.0), **plan.metrics, "time": clock,
                   **metrics}
        return EngineState(server, nodes, state.round + 1, clock, clip), metrics

    def _rounds(self, state: EngineState, tr: SplitArrays, profile, attackers, num_rounds: int):
        return jax.lax.scan(lambda s, _: self._round(s, tr, profile, attackers), state, None,
                            length=num_rounds)

    def run(self, state: EngineState, rounds: int | None = None, *, callback=None):
        """Runs `rounds` rounds (default: the federation's), `rounds_per_sync` per jitted scan.

        After each fused chunk (the only host sync) the chunk's training losses are checked:
        a non-finite one stops the run with `DivergenceError` naming the round, instead of
        training on for hours and failing at evaluation.

        Args:
          callback: called as callback(round_done, metrics) after each fused chunk, with the
            chunk's last round metrics as floats.

        Returns:
          (state, history): history maps each metric to a numpy array [rounds].

        Raises:
          DivergenceError: a round's training loss is NaN or infinite; the error carries the
            state and history up to the end of that chunk.
        """
        rounds = self.federation.rounds if rounds is None else rounds
        chunk = self.federation.rounds_per_sync
        first = int(state.round)
        history, done = [], 0
        while done < rounds:
            n = min(chunk, rounds - done)
            state, metrics = self._run(state, self.train, self.profile, self.attackers, n)
            done += n
            metrics = jax.device_get(metrics)
            overflow = metrics.pop("overflow", np.zeros(0, bool))
            if self.mechanism is not None:  # ε after each round (RDP), from host numbers
                upto = max(first + done, self.federation.rounds)
                metrics["epsilon"] = self.epsilons(upto)[first + done - n:first + done]
            history.append(metrics)
            if overflow.any():
                round_ = int(state.round) - n + int(np.flatnonzero(overflow)[0]) + 1
                raise SystemsError(
                    f"round {round_} sampled more nodes than the Poisson cohort's {self.cohort} "
                    "slots; raise Systems.capacity (CLI: --capacity)")
            bad = np.flatnonzero(~np.isfinite(metrics["train_loss"]))
            if bad.size:
                round_ = int(state.round) - n + int(bad[0]) + 1
                raise DivergenceError(self._divergence(state, round_), state=state,
                                      history=_concat(history))
            if callback is not None:
                callback(int(state.round), {k: float(v[-1]) for k, v in metrics.items()})
        return state, _concat(history)

    def _divergence(self, state: EngineState, round_: int) -> str:
        """What to tell a user whose training loss became non-finite in round `round_`."""
        leaves = jax.device_get(jax.tree.leaves(state.nodes))
        finite = [np.isfinite(leaf[: self.num_real].reshape(self.num_real, -1)).all(axis=1)
                  for leaf in leaves]
        broken = np.flatnonzero(~np.all(finite, axis=0)) if finite else np.array([], int)
        where = (f"; {broken.size} node(s) hold non-finite personal state, first node "
                 f"{self.data.names[broken[0]]!r}" if broken.size else "")
        return (f"{self.algorithm.name}: training diverged: non-finite training loss in round "
                f"{round_}{where}; lower the learning rate or scale the data")

    # ----- evaluation -----

    def _models(self, state: EngineState, tr: SplitArrays) -> dict:
        """{kind: (shared, personal)} of every node, leaves [N, ...]; a global model is also
        fine-tuned into "personalized" when `finetune_steps` > 0."""
        algo, fed = self.algorithm, self.federation
        broadcast = algo.broadcast(state.server)
        kinds = jax.vmap(lambda node, node_state: algo.models(for_node(broadcast, node),
                                                               node_state))(
            jnp.arange(self.num_nodes), state.nodes
        )
        if fed.finetune_steps and algo.finetune and "global" in kinds:
            tune = algo.finetune
            ids = jnp.arange(self.num_nodes)
            steps = jnp.where(tr.counts > 0, fed.finetune_steps, 0)

            def finish(out, node, slot, states, done):
                return _scatter(out, jnp.where(done, node, self.num_nodes), states.params)

            start = lambda node: tune.init(_gather(kinds["global"], node))
            kinds["personalized"], _, _ = self._train_lanes(
                tr, ids, steps, self.finetune_lanes, start, tune.step, finish, kinds["global"],
                self._key(_FINETUNE), 1,
            )
        return kinds

    def _evaluate_all(self, state: EngineState, tr: SplitArrays, te: SplitArrays):
        task, apply = self.data.task, self.algorithm.model.apply
        kinds = self._models(state, tr)
        rows = jnp.zeros(EVAL_BATCH, jnp.int32)
        shapes = jax.eval_shape(lambda: metric_sums(
            task, apply(*_gather(next(iter(kinds.values())), 0), te.x[rows]), te.y[rows],
            jnp.ones(EVAL_BATCH, bool),
        ))
        zeros = {kind: _zeros(shapes, self.eval_lanes) for kind in kinds}
        # binary tasks: each test row's score s1 - s0 [R] per kind, for the host's exact AUC
        binary = task == "classification" and self.data.num_classes == 2
        total = te.x.shape[0]

        def evaluate_batch(p, x, y, m):
            outputs = apply(*p, x)
            return metric_sums(task, outputs, y, m), binary_scores(outputs) if binary else None

        def body(carry, pos: lanes_lib.Position):
            sums, out, scores = carry
            node = pos.slot
            rows, mask = jax.vmap(batch_rows, in_axes=(None, 0, 0, 0, None))(
                jnp.arange(total), te.offsets[node], te.counts[node], pos.step, EVAL_BATCH,
            )
            mask = mask & pos.active[:, None]
            done = jnp.where(pos.active & pos.last, node, self.num_nodes)
            for kind, params in kinds.items():
                new, score = jax.vmap(evaluate_batch)(
                    _gather(params, node), te.x[rows], te.y[rows], mask
                )
                kept = _select(pos.first, zeros[kind], sums[kind])
                sums[kind] = jax.tree.map(jnp.add, kept, new)
                out[kind] = _scatter(out[kind], done, sums[kind])
                if binary:  # padding rows write nowhere (index `total` is dropped)
                    scores[kind] = scores[kind].at[jnp.where(mask, rows, total)].set(
                        score, mode="drop")
            return sums, out, scores

        steps = steps_per_epoch(te.counts, EVAL_BATCH)
        out = {kind: _zeros(shapes, self.num_nodes) for kind in kinds}
        scores = {kind: jnp.zeros(total) for kind in kinds} if binary else {}
        lanes = lanes_lib.deal(steps, self.eval_lanes)
        _, out, scores = lanes_lib.run(lanes, body, (dict(zeros), out, scores))
        return {kind: finish_metrics(task, sums) for kind, sums in out.items()}, scores

    def node_models(self, state: EngineState) -> dict:
        """Each real node's model of every kind, as used by `evaluate` (fine-tuning included):
        {kind: (shared, personal)} with leaves [N, ...]."""
        models = self._node_models(state, self.train)
        return jax.tree.map(lambda leaf: leaf[: self.num_real], models)

    def evaluate(self, state: EngineState) -> dict[str, dict[str, np.ndarray]]:
        """Test metrics of every real node for each model kind: {kind: {metric: [N]}}.

        Regression metrics are in the targets' raw units: models see the stored targets
        (raw - y_mean) / y_scale, so RMSE is multiplied by `data.y_scale` and MSE by its square.
        Binary tasks (num_classes == 2) also get balanced accuracy and the exact ROC AUC of each
        node's test scores s1 - s0 (`objectives.node_auc`), in the order of
        `objectives.metrics(task, num_classes)`.

        Nodes without test examples get NaN (no metric), and so does the AUC of a node whose
        test set holds one class only (undefined, not a failure); any other non-finite metric
        raises DivergenceError naming the node.
        """
        data = self.data
        tested = data.test.counts > 0
        result, scores = jax.device_get(self._evaluate(state, self.train, self.test))
        scale = data.y_scale
        units = {"rmse": scale, "mse": scale * scale} if data.task == "regression" else {}
        per_node = {
            kind: {k: np.asarray(v[: self.num_real]) * units.get(k, 1) for k, v in found.items()}
            for kind, found in result.items()
        }
        undefined = {}
        if scores:
            labels, counts = data.test.y, data.test.counts
            positives = np.bincount(np.repeat(np.arange(len(counts)), counts),
                                    weights=labels == 1, minlength=len(counts))
            undefined["auc"] = (positives == 0) | (positives == counts)
            names = metrics(data.task, data.num_classes)
            for kind, found in per_node.items():
                found["auc"] = node_auc(np.asarray(scores[kind])[: len(labels)], labels, counts)
                per_node[kind] = {k: found[k] for k in names}
        for kind, found in per_node.items():
            for name, values in found.items():
                bad = np.flatnonzero(tested & ~np.isfinite(values)
                                     & ~undefined.get(name, np.zeros_like(tested)))
                if bad.size:
                    raise DivergenceError(
                        f"{self.algorithm.name}: {kind} model has non-finite test {name} on "
                        f"{bad.size} node(s), first node {self.data.names[bad[0]]!r}; lower the "
                        "learning rate or check the data"
                    )
        return per_node
