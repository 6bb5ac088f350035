"""Evaluation: every node's models of every kind (fine-tuned where asked) tested on its own
test rows, on the device that holds it, through the same lanes as training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from fedmtl import lanes as lanes_lib
from fedmtl.algorithms import for_node
from fedmtl.devices import AXIS, Blocks
from fedmtl.engine import trees
from fedmtl.engine.state import _FINETUNE, EVAL_BATCH, DivergenceError, EngineState, Layout, stream
from fedmtl.objectives import binary_scores, finish_metrics, metric_sums, metrics, node_auc
from fedmtl.training import (
    batch_rows,
    steps_per_epoch,
)


class Evaluation:
    """Evaluation of `Engine` (a mixin: it reads the engine's algorithm, data, placement and
    lanes)."""

    def _models_at(self, algo, broadcast, nodes, placed, places) -> dict:
        """{kind: (shared, personal)} of the nodes at this device's `places` [L] (leaves
        [L, ...]), computed by `algo` (`Engine._algo`) from the broadcast and their states
        when asked for: a broadcast model is never stored once per node."""
        return jax.vmap(lambda node, node_state: algo.models(for_node(broadcast, node),
                                                              node_state))(
            placed[places], trees.gather(nodes, places))

    def _finetuned(self, algo, broadcast, seed, nodes, tr: Blocks, placed):
        """On one device: each place's global model after `finetune_steps` local steps
        (leaves [B, ...]; zeros at places without training rows, which keep the global
        model: `_kinds_at`), or None when nothing is fine-tuned."""
        fed = self.federation
        kinds = jax.eval_shape(lambda: self._models_at(algo, broadcast, nodes, placed,
                                                       jnp.zeros(1, jnp.int32)))
        if not (fed.finetune_steps and algo.finetune and "global" in kinds):
            return None
        tune = algo.finetune
        block = self.placement.block
        steps = jnp.where(tr.counts > 0, fed.finetune_steps, 0)

        def finish(out, node, place, slot, states, done):
            return trees.scatter(out, jnp.where(done, place, block), states.params)

        def start(node, place):
            one = self._models_at(algo, broadcast, nodes, placed, place[None])["global"]
            return tune.init(jax.tree.map(lambda leaf: leaf[0], one))

        out = jax.tree.map(lambda s: jnp.zeros((block,) + s.shape[1:], s.dtype),
                           kinds["global"])
        tuned, _, _ = self._train_lanes(
            tr, placed, placed, jnp.arange(block), steps, self.finetune_lanes, start,
            tune.step, finish, out, stream(seed, _FINETUNE), 1,
        )
        return tuned

    def _kinds_at(self, algo, broadcast, nodes, placed, tuned, counts, places) -> dict:
        """Every kind's models of the nodes at `places` [L], "personalized" from `tuned`
        (`_finetuned`) where it is not None and the node has training rows."""
        kinds = self._models_at(algo, broadcast, nodes, placed, places)
        if tuned is not None:
            kinds["personalized"] = trees.select(counts[places] > 0,
                                                 trees.gather(tuned, places), kinds["global"])
        return kinds

    def _models_here(self, algo, broadcast, seed, nodes, tr: Blocks, layout: Layout) -> dict:
        """On one device (inside `_spmd`): {kind: (shared, personal)} of its places, leaves
        [B, ...]; a global model is also fine-tuned into "personalized" when
        `finetune_steps` > 0."""
        _, placed = self._here(layout)
        tuned = self._finetuned(algo, broadcast, seed, nodes, tr, placed)
        return self._kinds_at(algo, broadcast, nodes, placed, tuned, tr.counts,
                              jnp.arange(self.placement.block))

    def _models(self, state: EngineState, tr: Blocks, layout: Layout) -> dict:
        """{kind: (shared, personal)} of every node in data order, leaves [N, ...]."""
        algo = self._algo(state.seed, state.hyper)
        broadcast = algo.broadcast(state.server)
        nodes = self._to_places(state.nodes, layout)
        S, R = P(AXIS), P()
        kinds = self._spmd(functools.partial(self._models_here, algo),
                           (R, R, S, self.split_specs, R), S)(
            broadcast, state.seed, nodes, tr, layout)
        return self._replicated(self._from_places(kinds, layout))

    def _evaluate_all(self, state: EngineState, tr: Blocks, te: Blocks, layout: Layout):
        """Per-node test metric sums of every kind [N] (data order) and, for binary tasks,
        each test row's score in the [D·R] layout of `te`."""
        nodes = self._to_places(state.nodes, layout)
        return self._replicated(self._evaluate_placed(state._replace(nodes=nodes), tr, te,
                                                      layout))

    def _evaluate_placed(self, state: EngineState, tr: Blocks, te: Blocks, layout: Layout):
        """`_evaluate_all` of a state whose nodes are by place (inside the rounds' scan)."""
        algo = self._algo(state.seed, state.hyper)
        broadcast = algo.broadcast(state.server)
        S, R = P(AXIS), P()
        split = self.split_specs
        out, scores = self._spmd(functools.partial(self._evaluate_here, algo),
                                 (R, R, S, split, split, R), (S, S))(
            broadcast, state.seed, state.nodes, tr, te, layout)
        out = self._from_places(out, layout)
        return {kind: finish_metrics(self.data.task, sums) for kind, sums in out.items()}, scores

    def _curve_point(self, state: EngineState, tr: Blocks, te: Blocks, layout: Layout, done):
        """Inside the scan, after round `done` []: every node's test metrics of every kind
        {kind: {metric: [N]}} when `done` is a multiple of `eval_every`, zeros otherwise (the
        host keeps only the evaluated rounds: `curves`)."""
        evaluate = lambda: self._evaluate_placed(state, tr, te, layout)[0]
        shapes = jax.eval_shape(evaluate)
        due = done % self.federation.eval_every == 0
        return jax.lax.cond(due, evaluate, lambda: jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), shapes)), due

    def _evaluate_here(self, algo, broadcast, seed, nodes, tr: Blocks, te: Blocks,
                       layout: Layout):
        """On one device (inside `_spmd`): metric sums of its places [B] per kind, and its
        test rows' binary scores [R] per kind."""
        task, apply = self.data.task, algo.model.apply
        _, placed = self._here(layout)
        tuned = self._finetuned(algo, broadcast, seed, nodes, tr, placed)
        kinds_at = lambda places: self._kinds_at(algo, broadcast, nodes, placed, tuned,
                                                 tr.counts, places)
        block = self.placement.block
        rows = jnp.zeros(EVAL_BATCH, jnp.int32)
        def first_kind():  # one node's models and one batch's metric sums, for their shapes
            kinds = kinds_at(jnp.zeros(1, jnp.int32))
            x, y = te.take(rows)
            params = trees.gather(next(iter(kinds.values())), 0)
            return kinds, metric_sums(task, apply(*params, x), y, jnp.ones(EVAL_BATCH, bool))

        one, shapes = jax.eval_shape(first_kind)
        zeros = {kind: trees.zeros(shapes, self.eval_lanes) for kind in one}
        # binary tasks: each test row's score s1 - s0 [R] per kind, for the host's exact AUC
        binary = task == "classification" and self.data.num_classes == 2
        total = te.source.shape[0]  # this device's test rows

        def evaluate_batch(p, x, y, m):
            outputs = apply(*p, x)
            return metric_sums(task, outputs, y, m), binary_scores(outputs) if binary else None

        def body(carry, pos: lanes_lib.Position):
            sums, out, scores = carry
            place = pos.slot
            rows, mask = jax.vmap(batch_rows, in_axes=(None, 0, 0, 0, None))(
                jnp.arange(total), te.offsets[place], te.counts[place], pos.step, EVAL_BATCH,
            )
            mask = mask & pos.active[:, None]
            done = jnp.where(pos.active & pos.last, place, block)
            for kind, params in kinds_at(place).items():  # the lanes' models, [L, ...]
                new, score = jax.vmap(evaluate_batch)(params, *te.take(rows), mask)
                kept = trees.select(pos.first, zeros[kind], sums[kind])
                sums[kind] = jax.tree.map(jnp.add, kept, new)
                out[kind] = trees.scatter(out[kind], done, sums[kind])
                if binary:  # padding rows write nowhere (index `total` is dropped)
                    scores[kind] = scores[kind].at[jnp.where(mask, rows, total)].set(
                        score, mode="drop")
            return sums, out, scores

        steps = steps_per_epoch(te.counts, EVAL_BATCH)
        out = {kind: trees.zeros(shapes, block) for kind in one}
        scores = {kind: jnp.zeros(total) for kind in one} if binary else {}
        lanes = lanes_lib.deal(steps, self.eval_lanes)
        _, out, scores = lanes_lib.run(lanes, body, (dict(zeros), out, scores))
        return out, scores

    def node_models(self, state: EngineState) -> dict:
        """Each real node's model of every kind, as used by `evaluate` (fine-tuning included):
        {kind: (shared, personal)} with leaves [N, ...]."""
        models = self._node_models(state, self.train, self.layout)
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
        return self._node_metrics(jax.device_get(self._evaluate(state, self.train, self.test,
                                                            self.layout)))

    def _units(self) -> dict[str, float]:
        """Factors from the stored targets' units to the raw ones, by metric (regression: the
        models see (raw - y_mean) / y_scale)."""
        scale = self.data.y_scale
        return {"rmse": scale, "mse": scale * scale} if self.data.task == "regression" else {}

    def _node_metrics(self, evaluated) -> dict[str, dict[str, np.ndarray]]:
        """`evaluate`'s host half: (metrics by kind [N], binary scores) -> per-node metrics
        in raw units with the exact AUC, or DivergenceError."""
        result, scores = evaluated
        data = self.data
        tested = data.test.counts > 0
        units = self._units()
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
                found["auc"] = node_auc(np.asarray(scores[kind])[self.test_rows], labels, counts)
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
