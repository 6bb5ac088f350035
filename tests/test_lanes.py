"""Lanes: every step of every slot runs exactly once, in order, and the host's plan (the
makespan the engine reports and picks lane counts by) matches the device's deal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedmtl import lanes


def _walk(steps: np.ndarray, num_lanes: int):
    """All loop steps of a deal on the device: [(t, lane, slot, step, first, last)]."""
    deal = lanes.deal(jnp.asarray(steps, jnp.int32), num_lanes)
    span = int(jnp.max(lanes.lengths(deal)))
    out = []
    for t in range(span):
        p = jax.tree.map(np.asarray, lanes.position(deal, jnp.int32(t)))
        for lane in np.flatnonzero(p.active):
            out.append((t, lane, p.slot[lane], p.step[lane], p.first[lane], p.last[lane]))
    assert not np.any(np.asarray(lanes.position(deal, jnp.int32(span)).active))
    return out, span


CASES = [
    (np.array([1, 1, 3, 3, 3]), 2),
    (np.array([7]), 1),
    (np.array([0, 5, 0, 2, 9, 1, 1, 1, 4]), 3),
    (np.array([0, 0, 0]), 2),
    (np.random.default_rng(0).lognormal(2, 1.5, 60).astype(int), 7),
    (np.random.default_rng(1).integers(0, 5, 40), 40),
]


@pytest.mark.parametrize("steps, num_lanes", CASES)
def test_every_step_runs_once_in_order(steps, num_lanes):
    walk, span = _walk(steps, num_lanes)
    seen = {}
    for t, lane, slot, step, first, last in walk:
        seen.setdefault(int(slot), []).append((t, int(lane), int(step), bool(first), bool(last)))
    assert set(seen) == set(np.flatnonzero(steps).tolist())  # slots without steps never run
    for slot, runs in seen.items():
        assert [r[2] for r in runs] == list(range(steps[slot]))  # steps 0..n-1, in order
        assert len({r[1] for r in runs}) == 1  # on one lane
        assert [r[0] for r in runs] == list(range(runs[0][0], runs[0][0] + steps[slot]))
        assert [r[3] for r in runs] == [True] + [False] * (steps[slot] - 1)
        assert [r[4] for r in runs] == [False] * (steps[slot] - 1) + [True]
    assert span == lanes.makespan(steps, num_lanes)  # the host plans what the device runs


@pytest.mark.parametrize("steps, num_lanes", CASES)
def test_makespan_bounds(steps, num_lanes):
    span = lanes.makespan(steps, num_lanes)
    assert span >= max(steps.max(), -(-steps.sum() // num_lanes))  # no deal does better
    # the water-filling deal overshoots the level by at most one node that did not open a lane
    rest = np.sort(steps)[::-1][num_lanes:]
    level = -(-steps.sum() // num_lanes)
    assert span <= max(steps.max(), level + (rest.max() if rest.size else 0))


def test_choose_trades_width_for_length():
    steps = np.random.default_rng(2).lognormal(2, 1.5, 500).astype(int) + 1
    narrow, wide = lanes.choose(steps, 0.0), lanes.choose(steps, 1e6)
    assert narrow == 1  # no fixed cost per loop step: one lane wastes nothing
    assert lanes.makespan(steps, wide) == steps.max()  # free width: as short as possible
    middle = lanes.choose(steps, 4.0)
    assert 1 < middle <= wide
    cost = lambda n: lanes.makespan(steps, n) * (n + 4.0)
    assert all(cost(middle) <= cost(n) for n in (1, 2, 8, 32, 128, 500))
    assert lanes.choose(np.zeros(3, int), 4.0) == 1
