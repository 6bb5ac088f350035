"""The lane loop on one device: a cohort's nodes trained side by side, each lane taking a
`vmap`-ed minibatch step of its current node (`fedmtl.lanes` deals them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedmtl import lanes as lanes_lib
from fedmtl.devices import AXIS, Blocks
from fedmtl.engine import trees
from fedmtl.engine.state import Layout
from fedmtl.training import (
    Batch,
    batch_rows,
    epoch_orders,
    step_position,
    steps_per_epoch,
)


class LaneTraining:
    """The lane loop of `Engine` (a mixin: it reads the engine's federation, placement,
    schedule and keys)."""

    def _here(self, layout: Layout):
        """On one device (inside `_spmd`): its first place d·B and its places' nodes [B]."""
        if self.devices == 1:  # no mesh axis: `_spmd` runs the function as it is
            return 0, layout.placed
        block = self.placement.block
        first = jax.lax.axis_index(AXIS) * block
        return first, jax.lax.dynamic_slice(layout.placed, (first,), (block,))

    def _train_lanes(self, tr: Blocks, placed, nodes, places, steps, num_lanes, start, step,
                     finish, out, key, epochs, prologue=0):
        """On one device (inside `_spmd`): trains slots [C] for `steps` [C] steps each on
        `num_lanes` lanes; slot c is data-order node nodes[c] at this device's place
        places[c] (a slot of another device has 0 steps).

        Args:
          tr: this device's block of the training split; placed: [B] its places' nodes.
          start: (node, place) -> training state; step: the algorithm's step function.
          finish: (out, nodes [L], places [L], slots [L], states [L, ...], done [L]) -> out.
          out: what `finish` accumulates into.
          key: stream of this pass; node k's orders and step keys derive from fold_in(key, k),
            so a node trains alike on any device and lane.
          epochs, prologue: E training epochs after P prologue epochs, each shuffled; where a
            node's step falls is `training.step_position`.

        Returns:
          (out, loss sum [C] over each slot's real examples, examples seen [C]).
        """
        b = self.federation.batch_size
        count = steps.shape[0]
        k_order = jax.vmap(lambda k: jax.random.split(k)[0])(self._per_node(key, placed))
        k_step = jax.vmap(lambda k: jax.random.split(k)[1])(self._per_node(key, nodes))
        orders = epoch_orders(k_order, tr.segment, tr.local, epochs + prologue,
                              host_sort=self.devices == 1).reshape(-1)
        rows_total = tr.segment.shape[0]
        pad = lambda a: jnp.concatenate([a, a[:1]])  # slot C (no node) reads a real one, unused
        nodes, places, k_step = pad(nodes), pad(places), pad(k_step)
        lane0 = jnp.zeros(num_lanes, jnp.int32)
        states = jax.vmap(start)(nodes[lane0], places[lane0])

        def body(carry, pos: lanes_lib.Position):
            states, out, lane_loss, lane_seen, slot_loss, slot_seen = carry
            node, place = nodes[pos.slot], places[pos.slot]
            states = jax.lax.cond(  # a lane picks up its next node
                jnp.any(pos.first),
                lambda: trees.select(pos.first, jax.vmap(start)(node, place), states),
                lambda: states,
            )
            n = tr.counts[place]
            per_epoch = jnp.maximum(steps_per_epoch(n, b), 1)
            epoch, index, rotated = step_position(pos.step, per_epoch, epochs, prologue)
            shuffle = jnp.minimum(rotated // per_epoch, epochs + prologue - 1)
            rows, mask = jax.vmap(batch_rows, in_axes=(None, 0, 0, 0, None))(
                orders, shuffle * rows_total + tr.offsets[place], n, index, b
            )
            mask = mask & pos.active[:, None]
            keys = jax.vmap(jax.random.fold_in)(k_step[pos.slot], rotated)
            new, loss = jax.vmap(step, in_axes=(0, 0, 0, None))(
                states, Batch(*tr.take(rows), mask, epoch), keys, self.schedule.task
            )
            states = trees.select(pos.active, new, states)
            seen = jnp.sum(mask, axis=1).astype(loss.dtype)
            lane_loss = jnp.where(pos.first, 0.0, lane_loss) + jnp.where(seen > 0, loss * seen,
                                                                         0.0)
            lane_seen = jnp.where(pos.first, 0.0, lane_seen) + seen
            done = pos.active & pos.last
            out = jax.lax.cond(
                jnp.any(done), lambda: finish(out, node, place, pos.slot, states, done),
                lambda: out,
            )
            written = jnp.where(done, pos.slot, count)
            slot_loss = slot_loss.at[written].set(lane_loss, mode="drop")
            slot_seen = slot_seen.at[written].set(lane_seen, mode="drop")
            return states, out, lane_loss, lane_seen, slot_loss, slot_seen

        zero = jnp.zeros(num_lanes)
        slots = jnp.zeros(count)
        lanes = lanes_lib.deal(steps, num_lanes)
        _, out, _, _, slot_loss, slot_seen = lanes_lib.run(
            lanes, body, (states, out, zero, zero, slots, slots))
        return out, slot_loss, slot_seen

    # ----- one round -----
