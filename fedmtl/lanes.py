"""Lanes: many nodes' sequential local steps interleaved in one loop.

Node c needs steps_c steps, one after another. L lanes advance side by side (the engine vmaps
across them); each lane works through its own run of nodes and picks up the next one the step
after the current one ends. Nothing is padded to a common length, one compiled loop serves
every node size, and a round lasts about max(largest node, total steps / L) loop steps.

Dealing (`deal`, the same rule on the device and, for planning, on the host): the L largest
nodes open one lane each; the rest, largest first, fill the lanes up to a common level
(water-filling), each lane taking a contiguous run of them. No lane ends later than
max(largest node, ceil(Σ steps / L) + the largest node that did not open a lane).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Lanes(NamedTuple):
    """A deal of C slots to L lanes.

    Attributes:
      order: [C] slots, largest first; lane l opens with order[l], then runs
        order[L + first[l]] .. order[L + first[l + 1] - 1].
      steps: [C] steps of each slot.
      first: [L + 1] start of each lane's run in order[L:].
      cumulative: [C - L + 1] steps of order[L:] before each entry.
    """

    order: Any
    steps: Any
    first: Any
    cumulative: Any


class Position(NamedTuple):
    """Where each lane [L] is at one loop step: its slot, the step within that slot's work,
    and whether the lane is working, on the slot's first step, on its last."""

    slot: jax.Array
    step: jax.Array
    active: jax.Array
    first: jax.Array
    last: jax.Array


def deal(steps, lanes: int, xp=jnp) -> Lanes:
    """Deals slots with `steps` [C] (C >= lanes) to `lanes` lanes; xp is jnp or np."""
    order = xp.argsort(-steps, stable=True)
    ordered = steps[order]
    head, rest = ordered[:lanes], ordered[lanes:]
    # Water level T, rounded up: Σ_l max(0, T - head_l) >= Σ rest, over the lanes by load.
    low = xp.sort(head)
    k = xp.arange(1, lanes + 1, dtype=steps.dtype)
    level = (xp.sum(rest) + xp.cumsum(low) + k - 1) // k
    below = xp.sum(low < level)
    level = level[xp.maximum(below - 1, 0)]
    room = xp.cumsum(xp.maximum(level - head, 0))
    cumulative = xp.concatenate([xp.zeros(1, steps.dtype), xp.cumsum(rest)])
    # Entry j goes to the lane whose room holds its midpoint (all in integers: doubled).
    lane = xp.searchsorted(2 * room, 2 * cumulative[:-1] + rest, side="right")
    lane = xp.minimum(lane, lanes - 1)
    first = xp.searchsorted(lane, xp.arange(lanes + 1), side="left")
    return Lanes(order, steps, first, cumulative)


def lengths(lanes: Lanes):
    """Steps of each lane [L]."""
    count = lanes.first.shape[0] - 1
    head = lanes.steps[lanes.order[:count]]
    return head + lanes.cumulative[lanes.first[1:]] - lanes.cumulative[lanes.first[:-1]]


def position(lanes: Lanes, t: jax.Array) -> Position:
    """Each lane's position at loop step t."""
    count = lanes.first.shape[0] - 1
    head_slot = lanes.order[:count]
    head = lanes.steps[head_slot]
    base = lanes.cumulative[lanes.first[:-1]]
    into = base + t - head  # position in the shared run of the rest
    j = jnp.maximum(jnp.searchsorted(lanes.cumulative, into, side="right") - 1, 0)
    rest = jnp.concatenate([lanes.order[count:], head_slot[:1]])  # [C - L + 1]: j stays valid
    in_head = t < head
    slot = jnp.where(in_head, head_slot, rest[j])
    step = jnp.where(in_head, t, into - lanes.cumulative[j])
    active = in_head | (into < lanes.cumulative[lanes.first[1:]])
    last = active & (step == lanes.steps[slot] - 1)
    return Position(slot, step, active, active & (step == 0), last)


def run(lanes: Lanes, body: Callable[[Any, Position], Any], carry: Any) -> Any:
    """carry = body(carry, position(lanes, t)) for t = 0 .. (longest lane) - 1."""
    makespan = jnp.max(lengths(lanes))

    def loop(state):
        t, carry = state
        return t + 1, body(carry, position(lanes, t))

    start = (jnp.zeros((), makespan.dtype), carry)
    return jax.lax.while_loop(lambda s: s[0] < makespan, loop, start)[1]


def makespan(steps: np.ndarray, lanes: int) -> int:
    """Loop steps a round takes for `steps` [C] on `lanes` lanes (computed on the host); for
    `steps` [D, C] (one row per device, each with its own lanes), the slowest device's."""
    steps = np.asarray(steps, np.int64)
    if steps.ndim == 2:
        return max((makespan(row, lanes) for row in steps), default=0)
    if len(steps) == 0:
        return 0
    return int(lengths(deal(steps, min(lanes, len(steps)), np)).max())


def choose(steps: np.ndarray, step_cost: float) -> int:
    """The lane count minimising makespan × (lanes + step_cost) for `steps` [C], or for
    `steps` [D, C] the lanes per device minimising the slowest device's cost.

    step_cost: fixed cost of one loop step in units of one lane's step; larger on devices
    where a wider step is nearly free (a GPU), small on a CPU where cost grows with lanes.
    """
    count = np.shape(steps)[-1]
    if count == 0 or not np.any(steps):
        return 1
    grid = np.unique(np.round(1.25 ** np.arange(np.log(count) / np.log(1.25) + 1)))
    candidates = sorted({count, *(int(g) for g in grid if g <= count)})
    return min(candidates, key=lambda lanes: makespan(steps, lanes) * (lanes + step_cost))
