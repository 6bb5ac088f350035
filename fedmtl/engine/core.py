"""`Engine`: construction (placement, data layout, lanes, privacy and systems checks), state,
and the jitted rounds."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from fedmtl import accounting, protection
from fedmtl import attacks as attacks_lib
from fedmtl import devices as devices_lib
from fedmtl import federation as federation_lib
from fedmtl import lanes as lanes_lib
from fedmtl import privacy as privacy_lib
from fedmtl import systems as systems_lib
from fedmtl.algorithms import Algorithm, AlgorithmError, for_node
from fedmtl.algorithms.recipes import Recipe
from fedmtl.data import FederatedData
from fedmtl.devices import AXIS, Blocks
from fedmtl.engine import trees
from fedmtl.engine.drive import Driving
from fedmtl.engine.evaluation import Evaluation
from fedmtl.engine.lane_training import LaneTraining
from fedmtl.engine.state import (
    _AGGREGATE,
    _ATTACK,
    _INIT,
    _PRIVACY,
    _ROUNDS,
    _SYSTEMS,
    EVAL_BATCH,
    EngineState,
    Layout,
    stream,
)
from fedmtl.engine.sweep import Sweep
from fedmtl.federation import Federation
from fedmtl.models import check_model
from fedmtl.robust import Aggregator
from fedmtl.systems import SystemsError
from fedmtl.training import (
    Schedule,
    steps_per_epoch,
)


def _bind(aggregator: Aggregator, key: jax.Array):
    """aggregator.aggregate as (uploads, weights) -> one upload; each call in a round gets its
    own key (fold_in of the call's number, counted while tracing)."""
    calls = iter(range(1 << 30))
    return lambda uploads, weights: aggregator.aggregate(
        uploads, weights, jax.random.fold_in(key, next(calls)))


def _lane_count(fed: Federation, steps: np.ndarray, width: int | None = None) -> int:
    """Lanes per device for per-device `steps` [D, B]; `width`: the cohort's expected size."""
    if fed.lanes is not None:
        return min(fed.lanes, max(steps.shape[-1], 1))
    cost = fed.lane_step_cost
    if cost is None:
        cost = 4.0 if jax.default_backend() == "cpu" else 2048.0
    devices, block = steps.shape
    share = None if width is None else -(-width // devices)
    if share is not None and share < block:  # a cohort: evenly spaced sizes stand in
        pick = np.linspace(0, block - 1, share).round().astype(int)
        steps = np.sort(steps, axis=1)[:, pick]
    return lanes_lib.choose(steps, cost)


class Engine(LaneTraining, Evaluation, Driving, Sweep):
    """Runs an algorithm on federated data.

    Example:
      >>> engine = Engine(fedavg(model), data, Federation(rounds=20))
      >>> state, history = engine.run(engine.init())
      >>> per_node = engine.evaluate(state)   # {kind: {metric: [N]}}

    Args:
      algorithm: an `Algorithm`, or a `Recipe` that the engine builds inside its compiled
        functions from each run's seed (the initial weights follow it) and traced
        hyperparameters (`init(seed, hyper)`; `sweep` runs a grid of them in one program).
      data: the nodes' data. On CPU devices the engine reads its arrays in place (no copy;
        `fedmtl.devices.Blocks`): do not modify them while the engine is in use.
      federation: the run's configuration.
      empty_nodes: nodes without data appended to the node axis (e.g. to round it to a
        multiple of the device count); they take no steps, weigh zero, are never sampled
        and are left out of `evaluate`.

    Attributes:
      mesh: the devices the nodes are spread over (`Federation.devices`; `fedmtl.devices`).
      devices: D, the mesh's size; placement: which device holds which node.
      lanes: nodes trained side by side on each device in a round.
      real_share: with every node taking part, the share of the computed sample-steps
        (D × lanes × loop steps × B) that are real examples.
      train, test: the splits laid out by place (`fedmtl.devices.Blocks`); train_rows,
        test_rows [T]: where each data row sits in that layout.
    """

    def __init__(
        self, algorithm: Algorithm | Recipe, data: FederatedData,
        federation: Federation | None = None, *, empty_nodes: int = 0,
    ):
        fed = Federation() if federation is None else federation
        self.recipe = algorithm if isinstance(algorithm, Recipe) else None
        self._checked: set = set()  # a recipe's settings its factory has accepted (`_hyper`)
        if self.recipe is not None:  # its algorithm for the federation's seed, checked
            algorithm = self.recipe.concrete(fed.seed)
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
        labels = None
        if attack is not None and attack.labels is not None:
            if data.task != "classification":
                raise attacks_lib.AttackError(f"{attack.name}: flips class labels; the data's "
                                              f"task is {data.task}")
            rows = np.repeat(attackers, data.train.counts)
            labels = np.where(rows, attack.labels(data.train.y, data.num_classes),
                              data.train.y)
        self.cohort, expected = systems_lib.slots(fed.systems, fed.cohort_size, self.num_real,
                                                  self.num_nodes)
        self.mesh = devices_lib.mesh(fed.devices)
        self.split_specs = devices_lib.split_specs(self.mesh)  # how Blocks are split
        self.devices = self.mesh.devices.size
        train_counts = np.concatenate([data.train.counts, np.zeros(empty_nodes, np.int64)])
        test_counts = np.concatenate([data.test.counts, np.zeros(empty_nodes, np.int64)])
        steps = self.epochs * steps_per_epoch(train_counts, fed.batch_size)
        self.placement = devices_lib.place(steps, self.devices)
        # Passed to the jitted functions as arguments (never captured as constants).
        replicate = lambda a: jax.device_put(a, devices_lib.replicated(self.mesh))
        self.attackers = replicate(np.concatenate([attackers, np.zeros(empty_nodes, bool)]))
        self.counts = replicate(train_counts.astype(np.int32))  # data order, for planning
        self.layout = Layout(replicate(self.placement.placed.astype(np.int32)),
                             replicate(self.placement.position.astype(np.int32)))
        self.train, self.train_rows = devices_lib.layout(
            self.mesh, self.placement, data.train.x,
            data.train.y if labels is None else labels, train_counts)
        self.test, self.test_rows = devices_lib.layout(
            self.mesh, self.placement, data.test.x, data.test.y, test_counts)
        width = max(1, min(round(expected), self.cohort))
        blocks = self.placement.blocks(steps)  # [D, B]
        self.lanes = min(_lane_count(fed, blocks, width), self.cohort)
        self.makespan = lanes_lib.makespan(blocks, self.lanes)
        computed = self.devices * self.lanes * self.makespan * fed.batch_size
        self.real_share = float(self.epochs * data.train.counts.sum() / max(computed, 1))
        self.finetune_lanes = _lane_count(
            fed, self.placement.blocks(np.where(train_counts > 0, fed.finetune_steps, 0)))
        self.eval_lanes = _lane_count(
            fed, self.placement.blocks(steps_per_epoch(test_counts, EVAL_BATCH)))
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
            fed, algorithm, lambda: jax.eval_shape(
                lambda h: self._init_state(self._seed(), h).server, self._hyper()),
            self.upload_shapes, self.cohort, expected)
        if not fed.systems.is_neutral and fed.rounds:
            self._check_participation(fed.rounds)
        self._run = jax.jit(self._rounds, static_argnums=(8,), donate_argnums=(0,))
        self._participation = jax.jit(self._plans, static_argnums=(2,))
        self._evaluate = jax.jit(self._evaluate_all)
        self._node_models = jax.jit(self._models)
        # fresh buffers (`run` donates the state), replicated over the mesh
        self._init = jax.jit(self._init_state,
                             out_shardings=devices_lib.replicated(self.mesh))
        self._sweep_jits()

    # ----- state -----

    def _seed(self, seed: int | None = None) -> jax.Array:
        """Key data [2] of a run seed (default: `Federation.seed`)."""
        seed = self.federation.seed if seed is None else seed
        return jax.random.key_data(jax.random.key(seed))

    def _per_node(self, key: jax.Array, nodes: jax.Array | None = None) -> jax.Array:
        """Node k's key fold_in(key, k) for each of `nodes` [K] (default: every node)."""
        nodes = jnp.arange(self.num_nodes) if nodes is None else nodes
        return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, nodes)

    def _replicated(self, tree):
        """`tree` replicated over the mesh (what every jitted function returns)."""
        return jax.lax.with_sharding_constraint(tree, devices_lib.replicated(self.mesh))

    def _spmd(self, fn, in_specs, out_specs):
        """fn run on every device of the mesh on its block of places (`jax.shard_map`):
        arguments and results with spec S are split by place, R replicated. On one device,
        fn itself (the same program without the SPMD wrapping, which compiles faster)."""
        if self.devices == 1:
            return fn
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=False)

    def _sum_devices(self, tree):
        """Sum over the mesh's devices inside `_spmd` (nothing to sum on one device)."""
        return tree if self.devices == 1 else trees.psum(tree)

    def _to_places(self, tree, layout: Layout):
        """Data-order leaves [N, ...] -> by place [D·B, ...] (on one device places are the
        data order: `devices.place`)."""
        return tree if self.devices == 1 else devices_lib.to_places(tree, layout.placed)

    def _from_places(self, tree, layout: Layout):
        return tree if self.devices == 1 else devices_lib.from_places(tree, layout.position)

    def _hyper(self, hyper: dict | None = None) -> dict[str, jax.Array]:
        """A recipe's hyperparameters {name: [] float32}: `hyper` over its defaults ({} for an
        algorithm).

        Raises:
          AlgorithmError: a name the recipe does not trace, a value that is not one number,
            or one the factory rejects (each setting is built once with plain values: the
            traced build skips the factory's checks).
        """
        if self.recipe is None:
            if hyper:
                raise AlgorithmError(f"{self.algorithm.name}: hyperparameters "
                                     f"{', '.join(hyper)} need an engine built from a Recipe")
            return {}
        values = {**self.recipe.hyper, **self.recipe.values(hyper)}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise AlgorithmError(f"{self.algorithm.name}: hyperparameter {name} must be "
                                     f"one number, got {value!r}")
        setting = tuple(sorted((k, float(v)) for k, v in values.items()))
        if setting not in self._checked:
            self.recipe.concrete(self.federation.seed, dict(setting))
            self._checked.add(setting)
        return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}

    def _algo(self, seed: jax.Array, hyper: dict) -> Algorithm:
        """The algorithm of the run with key data `seed` [2] and `hyper` (`EngineState`): the
        engine's own, or its recipe built from them (inside the jitted functions: traced)."""
        if self.recipe is None:
            return self.algorithm
        return self.recipe.build(jax.random.wrap_key_data(seed), **hyper)

    def init(self, seed: int | None = None, hyper: dict | None = None) -> EngineState:
        """Initial server state and stacked node states (leaves [N, ...]) of a run with `seed`
        (default: `Federation.seed`). The seed drives initialization, cohorts, shuffling,
        systems draws, noise and fine-tuning, and is an input of the compiled rounds: runs
        with other seeds reuse the compilation. The attacker set, availability phases and
        secure-aggregation keys are part of the federation and follow `Federation.seed`.

        An engine built from a `Recipe` draws the initial weights from the seed too, and takes
        `hyper` {name: value} over the recipe's defaults (also inputs, not constants)."""
        return self._init(self._seed(seed), self._hyper(hyper))

    def _init_state(self, seed: jax.Array, hyper: dict) -> EngineState:
        algo = self._algo(seed, hyper)
        k_server, k_nodes = jax.random.split(stream(seed, _INIT))
        nodes = jax.vmap(algo.init_node)(self._per_node(k_nodes))  # leaves [N, ...]
        server = algo.init(k_server, self.num_nodes)
        clip = 0.0 if self.mechanism is None else self.mechanism.privacy.clip
        return EngineState(server, nodes, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32),
                           jnp.asarray(clip, jnp.float32), seed, hyper)

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
        """Shapes of one node's upload (the round's upload buffer; the clock's upload time).
        For a recipe, the first trace of its build: a hyperparameter it cannot trace is an
        `AlgorithmError` here, before anything trains."""

        def upload(hyper):
            state = self._init_state(self._seed(), hyper)
            algo = self._algo(state.seed, state.hyper)
            broadcast = algo.broadcast(state.server)
            node = jnp.zeros((), jnp.int32)
            node_state = trees.gather(state.nodes, node)
            train = algo.start(for_node(broadcast, node), node_state)
            return algo.finish(for_node(broadcast, node), node_state, train)[0]

        try:
            return jax.eval_shape(upload, self._hyper())
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
                jax.errors.TracerArrayConversionError) as e:
            if self.recipe is None:
                raise
            raise AlgorithmError(
                f"{self.algorithm.name}: a tuned hyperparameter (one of "
                f"{', '.join(self.recipe.hyper)}) decides the program's structure while the "
                f"nodes start, train or finish, so it cannot be a traced input; tune only "
                f"numbers used in arithmetic (learning rates, penalty weights) and run other "
                f"values separately ({str(e).splitlines()[0]})") from None

    # ----- rounds -----

    def _plan(self, seed, round_, counts, profile) -> systems_lib.Plan:
        """Round `round_`'s participation (`fedmtl.systems.plan`)."""
        fed = self.federation
        k_cohort, _ = jax.random.split(jax.random.fold_in(stream(seed, _ROUNDS), round_))
        return systems_lib.plan(
            fed.systems, profile, counts, round_, k_cohort,
            jax.random.fold_in(stream(seed, _SYSTEMS), round_), num_real=self.num_real,
            cohort=self.cohort, epochs=self.epochs, batch_size=fed.batch_size,
            upload_bytes=self.upload_bytes,
        )

    def _plans(self, seed, counts, rounds: int, profile):
        return jax.vmap(lambda r: self._plan(seed, r, counts, profile))(jnp.arange(rounds))

    def _check_participation(self, rounds: int) -> None:
        """Plans every round before anything trains (one small compilation; memory O(N)):
        SystemsError if no node would report in any round, or a Poisson cohort would
        overflow its slots."""

        def planned(counts, profile):
            def one(round_):
                metrics = self._plan(self._seed(), round_, counts, profile).metrics
                return (metrics["participants"], metrics["sampled"], metrics["dropped"],
                        metrics.get("overflow", jnp.zeros((), bool)))

            return jax.lax.map(one, jnp.arange(rounds))

        reported, sampled, dropped, overflow = jax.device_get(
            jax.jit(planned)(self.counts, self.profile))
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

    def participation(self, rounds: int | None = None, seed: int | None = None
                      ) -> dict[str, np.ndarray]:
        """The participation trace of rounds 0 .. rounds-1 (default: the federation's), as
        training will follow it: ids, steps and weights [R, C] (node of each cohort slot, its
        local steps, its upload's weight; 0 = took no part / not reported) and each round's
        systems metrics [R]. A pure function of the seed and the nodes' sizes: the same
        whatever the lane count."""
        rounds = self.federation.rounds if rounds is None else rounds
        plans = jax.device_get(self._participation(self._seed(seed), self.counts, rounds,
                                                   self.profile))
        return {"ids": plans.ids, "steps": plans.steps, "weights": plans.weights,
                **plans.metrics}

    def _round(self, state: EngineState, tr: Blocks, counts, layout: Layout, profile,
               attackers):
        """One round; state.nodes by place (leaves [D·B, ...], split over the mesh)."""
        algo, fed = self._algo(state.seed, state.hyper), self.federation
        key = jax.random.fold_in(stream(state.seed, _ROUNDS), state.round)
        _, k_nodes = jax.random.split(key)
        broadcast = algo.broadcast(state.server)
        plan = self._plan(state.seed, state.round, counts, profile)
        ids, steps, weights = plan.ids, plan.steps, plan.weights
        block, cohort = self.placement.block, self.cohort

        def train(nodes, tr, layout, broadcast, ids, steps):  # on each device, its places
            first, placed = self._here(layout)
            places = layout.position[ids] - first
            mine = (places >= 0) & (places < block)
            places = jnp.where(mine, places, 0)
            start = lambda node, place: algo.start(for_node(broadcast, node),
                                                   trees.gather(nodes, place))
            finish_node = lambda nodes, node, place, train_state: algo.finish(
                for_node(broadcast, node), trees.gather(nodes, place), train_state)

            def finish(out, node, place, slot, states, done):
                nodes, uploads = out
                upload, new = jax.vmap(finish_node, in_axes=(None, 0, 0, 0))(
                    nodes, node, place, states)
                nodes = trees.scatter(nodes, jnp.where(done, place, block), new)
                uploads = trees.scatter(uploads, jnp.where(done, slot, cohort), upload)
                return nodes, uploads

            out = (nodes, trees.zeros(self.upload_shapes, cohort))
            (nodes, uploads), loss, seen = self._train_lanes(
                tr, placed, ids, places, jnp.where(mine, steps, 0), self.lanes, start, algo.step,
                finish, out, k_nodes, fed.local_epochs, algo.prologue_epochs,
            )
            # each slot was trained on one device, the others hold zeros: sums are exact
            return nodes, *self._sum_devices((uploads, loss, seen))

        S, R = P(AXIS), P()
        nodes, uploads, loss, seen = self._spmd(
            train, (S, self.split_specs, R, R, R, R), (S, R, R, R))(
                state.nodes, tr, layout, broadcast, ids, steps)
        loss, seen = jnp.sum(loss), jnp.sum(seen)
        metrics = {}
        mech = self.mechanism
        k_privacy = jax.random.fold_in(stream(state.seed, _PRIVACY), state.round)
        if mech is not None and mech.privacy.where == "local":  # noised before it leaves
            uploads = privacy_lib.on_nodes(mech, uploads, weights, k_privacy)
        attack = fed.attack
        if attack is not None and attack.corrupt is not None:
            attacking = attackers[ids] & (weights > 0)
            uploads = attack.corrupt(uploads, weights, attacking,
                                     jax.random.fold_in(stream(state.seed, _ATTACK), state.round))
            metrics["attackers"] = jnp.sum(attacking)
        clip = state.clip_norm
        if mech is not None and mech.privacy.where == "central":
            uploads, aggregate, clip, dp_metrics = privacy_lib.at_server(
                mech, uploads, weights, state.clip_norm, k_privacy)
            metrics.update(dp_metrics)
        elif fed.aggregator is not None or self.secure is not None:
            aggregate = _bind(fed.aggregator or self.secure,
                              jax.random.fold_in(stream(state.seed, _AGGREGATE), state.round))
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
        return EngineState(server, nodes, state.round + 1, clock, clip, state.seed,
                           state.hyper), metrics

    def _inputs(self) -> tuple:
        """What `_rounds` takes beside the state and the round count: the training split by
        place, the train counts [N] and the `Layout`, the systems profile, the attackers, the
        test split by place (learning curves)."""
        return self.train, self.counts, self.layout, self.profile, self.attackers, self.test

    def lower(self, state: EngineState, rounds: int = 1):
        """The jitted chunk of `rounds` rounds, lowered for `state` (`.compile()` compiles it;
        benchmarks time the two)."""
        return self._run.lower(state, *self._inputs(), jnp.int32(0), rounds)

    def _rounds(self, state: EngineState, tr: Blocks, counts, layout: Layout, profile,
                attackers, te: Blocks, start, num_rounds: int):
        """`num_rounds` rounds in one scan; node states move to their places for the chunk and
        come back in data order (replicated) at its end. With `eval_every`, each round's
        metrics also hold "curves" {kind: {metric: [N]}} and "evaluated" []; `start` [] is
        the round the chunk starts after (an input of its own, not read from the state, so
        that in a vmapped sweep whether a round is evaluated stays one decision)."""
        state = state._replace(nodes=self._to_places(state.nodes, layout))

        def one(s, done):
            s, metrics = self._round(s, tr, counts, layout, profile, attackers)
            if self.federation.eval_every:  # learning curves, in the scan
                metrics["curves"], metrics["evaluated"] = self._curve_point(s, tr, te, layout,
                                                                            done)
            return s, metrics

        state, metrics = jax.lax.scan(one, state, start + 1 + jnp.arange(num_rounds))
        state = state._replace(nodes=self._from_places(state.nodes, layout))
        return self._replicated(state), self._replicated(metrics)
