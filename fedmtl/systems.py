"""The systems model: who is available, who is sampled, how much of its work each node does,
who reports, and how long a round takes on a simulated clock.

A `Systems` value (a small, pure configuration passed in `Federation.systems`) becomes, each
round, a `Plan`: the cohort's node ids [C], the local steps each one takes [C] (fewer for a
straggler, none for a node that dropped out) and the weights its upload gets [C] (0: not
reported). The engine trains exactly those steps in its lanes and hands the weights to the
algorithm's `server_update`; algorithms never see the systems model. `plan` is a pure function
of (seed, round, the nodes' sizes), so the participation trace is the same whatever the lane
or device count, and nothing is recompiled when who participates changes.

Neutral values (the defaults) reproduce a plain federation: a fixed-size uniform cohort (or
every node) doing all its work, every upload weighted by its example count.

    sampling   uniform: C of the available nodes, uniformly without replacement;
               poisson: each available node independently with probability q (what DP
                 accountants assume), so the cohort size varies;
               weighted: C of the available nodes, drawn one after another with probability
                 ∝ n_k (numpy's choice(replace=False, p=n/Σn), by Gumbel top-k); their
                 uploads are then averaged with equal weights, the size being in the sampling
                 already (Li et al., ICLR 2020, scheme I, which draws with replacement).
    stragglers round(p · #sampled with data) of the cohort, chosen uniformly (FedProx's
               protocol), complete k of their U units of work (U = local epochs, prologue
               included, or U = steps), k uniform over the integers in
               [max(1, ⌈a·U⌉), max(lo, min(⌊b·U⌋, U - 1))]: a straggler does less than all
               its work unless U = 1. FedProx's rule (1..E-1 epochs) is a = 0, b = 1, unit
               "epoch". A deadline makes stragglers too (below).
    policy     drop: a straggler's update is discarded (FedAvg's practice: the node takes no
               step and keeps its state); keep: its partial work is aggregated (FedProx's).
    dropout    a sampled node fails to report with probability p (one number, or one per
               node: its unreliability); its work is lost and the weights renormalise over
               the nodes that reported.
    availability  node k can be sampled in rounds join_k <= r < leave_k and, with a
               `period`, when (r + phase_k) mod period < round(uptime · period) (a
               time-of-day pattern; phases drawn per node from the seed unless given).
    clock      node k's local step takes 1 / speed_k time units and its upload of S bytes
               S / bandwidth_k. A round lasts until its slowest reporting node has uploaded;
               with a `deadline`, a node that would finish later completes only the steps
               that fit (a straggler, then kept or dropped by the policy), a node that cannot
               even upload in time drops out, and a round in which any sampled node did not
               report in full lasts the whole deadline (the server waits for it).

Every draw comes from a key of (seed, round); the uniform cohort without availability limits
is drawn exactly as before this module existed, so neutral runs are bit-for-bit unchanged.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SAMPLINGS = ("uniform", "poisson", "weighted")
POLICIES = ("drop", "keep")
UNITS = ("step", "epoch")
NEVER = np.iinfo(np.int32).max  # a leave round that never comes


class SystemsError(ValueError):
    """A systems model that cannot run: the message names the option (and the node) and what
    was expected."""


class Systems(NamedTuple):
    """How nodes take part in rounds; the defaults are a plain federation.

    Attributes:
      sampling: "uniform" (C = `Federation.cohort_size` of the available nodes, all of them
        when None), "poisson" (each available node with probability `sample_rate`) or
        "weighted" (C nodes with probability ∝ their example count, equal upload weights).
      sample_rate: q in (0, 1] of Poisson sampling.
      stragglers: share p in [0, 1] of each cohort that straggles.
      straggler_work: (a, b), 0 <= a <= b <= 1: the range of the share of its work a straggler
        completes.
      straggler_unit: "step" (work counted in local steps) or "epoch" (whole epochs).
      straggler_policy: "drop" (discard a straggler's update) or "keep" (aggregate its
        partial work).
      dropout: probability in [0, 1] that a sampled node fails to report: a number, or one per
        node [N].
      join: the first round in which a node is available: a number or one per node [N].
      leave: the round from which a node is gone (None: never): a number or one per node [N].
      period: rounds of a periodic availability cycle (None: always available).
      uptime: share in (0, 1] of each period a node is available.
      phase: each node's offset into the period [N] (None: drawn from the seed).
      speed: local steps per time unit of each node: a number or one per node [N].
      bandwidth: upload bytes per time unit: a number (inf: instant) or one per node [N].
      deadline: time units after which the server stops waiting (None: no deadline).
      capacity: slots of a Poisson cohort (None: the expected size plus 6 standard
        deviations); a round that samples more stops the run with `SystemsError`.
    """

    sampling: str = "uniform"
    sample_rate: float | None = None
    stragglers: float = 0.0
    straggler_work: tuple[float, float] = (0.0, 1.0)
    straggler_unit: str = "step"
    straggler_policy: str = "drop"
    dropout: Any = 0.0
    join: Any = 0
    leave: Any = None
    period: int | None = None
    uptime: float = 1.0
    phase: Any = None
    speed: Any = 1.0
    bandwidth: Any = math.inf
    deadline: float | None = None
    capacity: int | None = None

    @property
    def is_neutral(self) -> bool:
        """Whether this is the plain federation of `Systems()` (every field at its default)."""
        same = lambda a, b: a is b if a is None or b is None else bool(
            np.all(np.asarray(a) == np.asarray(b)))
        return all(same(getattr(self, f), d) for f, d in Systems._field_defaults.items())

    @property
    def limits_availability(self) -> bool:
        return not (np.all(np.asarray(self.join) == 0) and self.leave is None
                    and self.period is None)


class Profile(NamedTuple):
    """The systems model's per-node values on the device, leaves [N] (padding nodes
    included: never available)."""

    dropout: jax.Array
    join: jax.Array
    leave: jax.Array
    phase: jax.Array
    speed: jax.Array
    bandwidth: jax.Array


class Plan(NamedTuple):
    """One round's participation: cohort slots [C] and the round's systems metrics.

    Attributes:
      ids: node of each slot [C], distinct (slots no node fills hold nodes that take no part).
      steps: local steps each slot's node takes [C] (0: not taking part).
      weights: weight of each slot's upload [C] (0: not reported).
      metrics: {name: []} sampled, participants, dropped, stragglers, work (completed share of
        the cohort's assigned steps), round_time, and overflow for a Poisson cohort.
    """

    ids: jax.Array
    steps: jax.Array
    weights: jax.Array
    metrics: dict


def _per_node(value, name: str, num_real: int, dtype) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return np.full(num_real, array, dtype)
    if array.shape != (num_real,):
        raise SystemsError(f"systems.{name}: expected one number or one per node "
                           f"[{num_real}], got shape {array.shape}")
    return array.astype(dtype)


def _check_range(values: np.ndarray, name: str, names, ok, expected: str) -> None:
    bad = np.flatnonzero(~ok(values))
    if bad.size:
        where = f" (node {names[bad[0]]!r})" if values.size > 1 else ""
        raise SystemsError(f"systems.{name} must be {expected}, got {values[bad[0]]}{where}")


def check(systems: Systems, names, cohort_size: int | None) -> None:
    """Raises SystemsError (naming the option, and the node where per-node) for a systems
    model that cannot run or that sets options nothing would use: unknown choices,
    probabilities outside [0, 1], a join at or after a leave, a deadline <= 0, per-node values
    of the wrong length, a capacity without Poisson sampling, an uptime without a period,
    straggler work without stragglers."""
    s, n = systems, len(names)
    for name, value, choices in (("sampling", s.sampling, SAMPLINGS),
                                 ("straggler_policy", s.straggler_policy, POLICIES),
                                 ("straggler_unit", s.straggler_unit, UNITS)):
        if value not in choices:
            raise SystemsError(f"systems.{name} must be one of {choices}, got {value!r}")
    if s.sampling == "poisson":
        if s.sample_rate is None or not 0 < s.sample_rate <= 1:
            raise SystemsError(f"systems.sample_rate must be in (0, 1] for Poisson sampling, "
                               f"got {s.sample_rate}")
        if cohort_size is not None:
            raise SystemsError(f"Federation.cohort_size ({cohort_size}) applies to uniform and "
                               "weighted sampling; a Poisson cohort's size varies with "
                               "systems.sample_rate: leave cohort_size None")
    elif s.sample_rate is not None:
        raise SystemsError(f"systems.sample_rate applies to Poisson sampling only (sampling is "
                           f"{s.sampling!r}; a fixed cohort is Federation.cohort_size)")
    if s.sampling == "weighted" and cohort_size is None:
        raise SystemsError("systems.sampling 'weighted' needs Federation.cohort_size (with "
                           "every node taking part there is nothing to weight)")
    unit = lambda v: (v >= 0) & (v <= 1)
    _check_range(np.asarray([s.stragglers], float), "stragglers", names, unit, "in [0, 1]")
    a, b = s.straggler_work
    if not 0 <= a <= b <= 1:
        raise SystemsError(f"systems.straggler_work must be (a, b) with 0 <= a <= b <= 1, got "
                           f"{s.straggler_work}")
    _check_range(_per_node(s.dropout, "dropout", n, float), "dropout", names, unit, "in [0, 1]")
    join = _per_node(s.join, "join", n, float)
    _check_range(join, "join", names, lambda v: (v >= 0) & (v == np.round(v)),
                 "a round number >= 0")
    if s.leave is not None:
        leave = _per_node(s.leave, "leave", n, float)
        _check_range(leave, "leave", names, lambda v: v == np.round(v), "a round number")
        bad = np.flatnonzero(leave <= join)
        if bad.size:
            k = bad[0]
            raise SystemsError(f"systems: node {names[k]!r} joins in round {int(join[k])} but "
                               f"leaves in round {int(leave[k])}: a join must come before the "
                               "leave")
    if s.period is not None and not (isinstance(s.period, int | np.integer) and s.period >= 1):
        raise SystemsError(f"systems.period must be a whole number of rounds >= 1, got "
                           f"{s.period}")
    if not 0 < s.uptime <= 1:
        raise SystemsError(f"systems.uptime must be in (0, 1], got {s.uptime}")
    if s.phase is not None:
        _check_range(_per_node(s.phase, "phase", n, float), "phase", names,
                     lambda v: (v >= 0) & (v == np.round(v)), "a whole number >= 0")
    _check_range(_per_node(s.speed, "speed", n, float), "speed", names,
                 lambda v: np.isfinite(v) & (v > 0), "finite and > 0")
    _check_range(_per_node(s.bandwidth, "bandwidth", n, float), "bandwidth", names,
                 lambda v: v > 0, "> 0 (inf: instant uploads)")
    if s.deadline is not None and not (math.isfinite(s.deadline) and s.deadline > 0):
        raise SystemsError(f"systems.deadline must be a finite time > 0, got {s.deadline}")
    if s.capacity is not None and s.capacity < 1:
        raise SystemsError(f"systems.capacity must be >= 1, got {s.capacity}")
    unused = [(s.capacity is not None and s.sampling != "poisson",
               "capacity sizes Poisson cohorts only"),
              (s.uptime != 1 and s.period is None, "uptime needs a period"),
              (s.stragglers == 0 and (tuple(s.straggler_work) != (0.0, 1.0)
                                      or s.straggler_unit != "step"),
               "straggler_work and straggler_unit need stragglers > 0")]
    for bad, why in unused:
        if bad:
            raise SystemsError(f"systems: {why} (it would be ignored)")


def check_reachable(systems: Systems, names, counts: np.ndarray, rounds: int, units: np.ndarray,
                    upload_bytes: int) -> None:
    """Raises SystemsError when no node with data could ever report within `rounds` rounds:
    an empty cohort every round (nobody available, every node drops out, every node
    straggles under the drop policy, or no upload fits the deadline).

    Args:
      counts: training examples per real node [N]; units: each node's straggler units [N].
    """
    if rounds == 0:
        return
    s, n = systems, len(names)
    join = _per_node(s.join, "join", n, float)
    leave = np.full(n, np.inf) if s.leave is None else _per_node(s.leave, "leave", n, float)
    candidates = (counts > 0) & (join < rounds) & (leave > 0)
    reasons = [(candidates, "no node with training data is available in rounds "
                            f"0..{rounds - 1} (join / leave)")]
    dropout = _per_node(s.dropout, "dropout", n, float)
    reasons.append((candidates & (dropout < 1), "every node that could take part drops out "
                                                "(dropout 1)"))
    if s.straggler_policy == "drop" and s.stragglers == 1:
        reasons.append((candidates & (units <= 1), "every node straggles (stragglers 1) and "
                                                   "the drop policy discards them all"))
    if s.deadline is not None:
        upload = upload_bytes / _per_node(s.bandwidth, "bandwidth", n, float)
        fits = (s.deadline - upload) * _per_node(s.speed, "speed", n, float) >= 1
        reasons.append((candidates & fits, f"no node can take a step and upload its "
                                           f"{upload_bytes} bytes within the deadline "
                                           f"{s.deadline}"))
    live = np.ones(n, bool)
    for ok, why in reasons:
        live &= ok
        if not live.any():
            raise SystemsError(f"systems: the cohort would be empty in every round: {why}")


def profile(systems: Systems, num_real: int, num_nodes: int, seed: int) -> Profile:
    """Per-node values [num_nodes] on the device; padding nodes never join."""
    s, pad = systems, num_nodes - num_real

    def node(value, name, dtype, padding):
        return jnp.asarray(np.concatenate([_per_node(value, name, num_real, dtype),
                                           np.full(pad, padding, dtype)]))

    if s.phase is None:  # one draw per node for the whole run, from the seed
        phase = np.random.default_rng([seed, 11]).integers(0, s.period or 1, num_real)
    else:
        phase = s.phase
    leave = NEVER if s.leave is None else s.leave
    return Profile(node(s.dropout, "dropout", np.float32, 1.0),
                   node(s.join, "join", np.int32, NEVER), node(leave, "leave", np.int32, NEVER),
                   node(phase, "phase", np.int32, 0), node(s.speed, "speed", np.float32, 1.0),
                   node(s.bandwidth, "bandwidth", np.float32, np.inf))


def slots(systems: Systems, cohort_size: int | None, num_real: int, num_nodes: int
          ) -> tuple[int, float]:
    """(cohort slots C, the cohort's expected size) of a round."""
    if systems.sampling == "poisson":
        mean = num_real * systems.sample_rate
        if systems.capacity is not None:
            return min(systems.capacity, num_real), mean
        spread = 6 * math.sqrt(mean * (1 - systems.sample_rate)) + 4
        return min(num_real, math.ceil(mean + spread)), mean
    if cohort_size is None or cohort_size >= num_real:
        return num_nodes, num_real
    return cohort_size, cohort_size


def _sampled(systems: Systems, prof: Profile, counts, round_, k_cohort, key, num_real: int,
             cohort: int):
    """(ids [C], sampled [C], overflow []) of the round."""
    nodes = counts.shape[0]
    available = jnp.arange(nodes) < num_real
    if systems.limits_availability:
        available &= (round_ >= prof.join) & (round_ < prof.leave)
        if systems.period is not None:
            on = max(1, round(systems.uptime * systems.period))
            available &= (round_ + prof.phase) % systems.period < on
    u = jax.random.uniform(key, (nodes,))
    overflow = jnp.zeros((), bool)
    if systems.sampling == "poisson":
        chosen = available & (u < systems.sample_rate)
        overflow = jnp.sum(chosen) > cohort
        ids = jnp.argsort(~chosen, stable=True)[:cohort]  # the sampled first, in node order
        return ids, chosen[ids], overflow
    if systems.sampling == "weighted":
        eligible = available & (counts > 0)
        score = jnp.log(jnp.maximum(counts, 1).astype(jnp.float32)) + jax.random.gumbel(
            key, (nodes,))
        ids = jnp.argsort(jnp.where(eligible, -score, jnp.inf), stable=True)[:cohort]
        return ids, eligible[ids], overflow
    if cohort >= nodes:  # every (available) node
        ids = jnp.arange(nodes)
        return ids, available, overflow
    if not systems.limits_availability:  # the cohort as drawn before the systems model
        ids = jax.random.permutation(k_cohort, num_real)[:cohort]
        return ids, jnp.ones(cohort, bool), overflow
    ids = jnp.argsort(jnp.where(available, u, 2.0 + u))[:cohort]
    return ids, available[ids], overflow


def _ranks(values):
    """Rank of each entry of `values` [C] in ascending order."""
    order = jnp.argsort(values)
    return jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))


def plan(systems: Systems, prof: Profile, counts, round_, k_cohort, key, *, num_real: int,
         cohort: int, epochs: int, batch_size: int, upload_bytes: int) -> Plan:
    """One round's `Plan` (pure: the same inputs give the same plan).

    Args:
      prof: the per-node `Profile`.
      counts: training examples per node [N] (padding nodes 0).
      round_: the round [] (traced).
      k_cohort: key of the plain uniform cohort; key: key of every other draw of the round.
      num_real: nodes before padding; cohort: slots C (`slots`).
      epochs: passes over a node's data per round (prologue included); batch_size: B.
      upload_bytes: bytes of one node's upload (for the clock).
    """
    s = systems
    k_sample, k_strag, k_work, k_drop = jax.random.split(key, 4)
    ids, sampled, overflow = _sampled(s, prof, counts, round_, k_cohort, k_sample, num_real,
                                      cohort)
    n = counts[ids]
    per_epoch = (n + batch_size - 1) // batch_size
    assigned = jnp.where(sampled, epochs * per_epoch, 0)
    working = assigned > 0
    done = assigned
    if s.stragglers > 0:
        count = jnp.round(s.stragglers * jnp.sum(working).astype(jnp.float32)).astype(jnp.int32)
        draw = jnp.where(working, jax.random.uniform(k_strag, ids.shape), 2.0)
        straggles = working & (_ranks(draw) < count)
        epoch_unit = s.straggler_unit == "epoch"
        units = (jnp.full(ids.shape, epochs) if epoch_unit else assigned).astype(jnp.float32)
        a, b = s.straggler_work
        lo = jnp.maximum(1.0, jnp.ceil(a * units))
        hi = jnp.maximum(lo, jnp.minimum(jnp.floor(b * units), units - 1.0))
        k = jnp.minimum(lo + jnp.floor(jax.random.uniform(k_work, ids.shape) * (hi - lo + 1.0)),
                        hi).astype(assigned.dtype)
        done = jnp.where(straggles, k * (per_epoch if epoch_unit else 1), done)
    upload_time = jnp.float32(upload_bytes) / prof.bandwidth[ids]
    speed = prof.speed[ids]
    if s.deadline is not None:
        fits = jnp.floor((jnp.float32(s.deadline) - upload_time) * speed)
        late = done.astype(jnp.float32) > fits
        done = jnp.where(late, jnp.maximum(fits, 0.0).astype(done.dtype), done)
    partial = working & (done < assigned)
    failed = working & (jax.random.uniform(k_drop, ids.shape) < prof.dropout[ids])
    reported = working & ~failed & (done > 0)
    if s.straggler_policy == "drop":
        reported &= ~partial
    steps = jnp.where(reported, done, 0)
    size = jnp.ones_like(n) if s.sampling == "weighted" else n
    weights = jnp.where(reported, size, 0).astype(jnp.float32)
    finish = jnp.where(reported, steps.astype(jnp.float32) / speed + upload_time, 0.0)
    round_time = jnp.max(finish, initial=0.0)
    if s.deadline is not None:
        waited = jnp.any(working & (~reported | (done < assigned)))
        round_time = jnp.where(waited, jnp.float32(s.deadline), round_time)
    metrics = {
        "sampled": jnp.sum(sampled),
        "participants": jnp.sum(weights > 0),
        "dropped": jnp.sum(working & ~reported),
        "stragglers": jnp.sum(partial & ~failed),
        "work": (jnp.sum(steps).astype(jnp.float32)
                 / jnp.maximum(jnp.sum(assigned), 1).astype(jnp.float32)),
        "round_time": round_time.astype(jnp.float32),
    }
    if s.sampling == "poisson":
        metrics["overflow"] = overflow
    return Plan(ids, steps, weights, metrics)


def churn(num_nodes: int, *, join_by: int = 0, stay: int | None = None, seed: int = 0):
    """Per-node (join [N], leave [N] or None): node k joins in a round drawn uniformly from
    [0, join_by] and stays `stay` rounds (None: to the end)."""
    rng = np.random.default_rng([seed, 13])
    join = rng.integers(0, join_by + 1, num_nodes)
    return join, None if stay is None else join + stay


def lognormal_speeds(num_nodes: int, spread: float, *, seed: int = 0) -> np.ndarray:
    """Per-node compute speeds [N]: lognormal with median 1 and log-standard deviation
    `spread` (0: all equal), a common model of device heterogeneity."""
    return np.exp(spread * np.random.default_rng([seed, 17]).standard_normal(num_nodes))
