"""The harness every algorithm of the registry passes (new ones are picked up automatically).

For each algorithm: the engine, on two lanes with three empty padding nodes, equals a plain
per-node loop of `node_round` (so the layout and empty nodes change nothing); jit equals no
jit; round 2 does not retrace and evaluation works; identical uploads aggregate to a no-op;
zero-weight uploads change nothing; no personal model reaches an upload; the same seed gives
identical results and another seed different ones. Op by op (jit = no jit) and another seed
recompile everything, so the default run checks them on two algorithms and the slow run on
all.

Compiling is the slow part: the problem is tiny (5 nodes of 5-16 examples, 4 features, 3
classes, an MLP with 8 hidden units, with LayerNorm for the algorithms that need it), each
engine is built once per configuration (`_engine`) and the per-node loop once per algorithm
(`_loop`, one compilation: nodes padded to the largest).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import (  # the shared tiny problem
    BASE,
    SIZES,
    assert_close,
    assert_equal,
    data,
    host_copy,
    mlp,
)

from fedmtl import algorithms, privacy, robust
from fedmtl.algorithms import for_node
from fedmtl.engine import Engine, Federation
from fedmtl.systems import Systems
from fedmtl.training import Schedule, node_round

# rounds_per_sync=1: every run compiles the same one-round scan, whatever the round count
ROUNDS = 2

NAMES = list(algorithms.ALGORITHMS)
# Couplings strong enough to bite on 2 rounds of a tiny problem.
KWARGS = {
    "mocha": {"lam": 0.5}, "ditto": {"lam": 0.5}, "fedprox": {"mu": 0.5},
    "ifca": {"clusters": 2}, "fedrep": {"head_epochs": 1},
}
NEEDS_NORM = {"fedbn"}  # algorithms whose personal part is a model's normalization layers
# Algorithms whose protocol sends a personal model to the server, and why.
UPLOADS_PERSONAL = {"mocha": "the server keeps every node's w_t to learn Ω (MOCHA's protocol)"}
# Op by op is slow: two algorithms by default, all of them in the slow pass.
QUICK = {"mocha"}  # per-node broadcasts: the engine's subtlest path
# Op by op, one algorithm's round takes 25-30 s (every primitive compiled on its own): only
# the slow pass runs it, for every algorithm.
JIT_QUICK = set()
TRACES = {}  # algorithm name -> times its step was traced


def _names(slow=frozenset(), skip=None) -> list:
    """Every algorithm as a test parameter; one algorithm's tests share a pytest-xdist group,
    so a parallel run compiles its engine once."""
    skip = skip or {}
    marks = lambda name: [pytest.mark.xdist_group(name)] + (
        [pytest.mark.slow] if name in slow else []) + (
        [pytest.mark.skip(reason=skip[name])] if name in skip else [])
    return [pytest.param(name, marks=marks(name)) for name in NAMES]


def _algorithm(name: str) -> algorithms.Algorithm:
    module = mlp("layer" if name in NEEDS_NORM else None)
    algo = algorithms.ALGORITHMS[name](module, local_optimizer=0.1, **KWARGS.get(name, {}))

    def counted(*args):  # runs at trace time only: counts traces, not executions
        TRACES[name] = TRACES.get(name, 0) + 1
        return algo.step(*args)

    return algo._replace(step=counted)


PADDING = 3  # empty padding nodes after the real ones
LAYOUT = BASE._replace(lanes=2)  # lanes pick up the next node mid-loop
# A federation of every kind of failure at once: Poisson cohorts, stragglers keeping partial
# work, dropouts, a late joiner; its rounds must follow the participation trace exactly.
UNRELIABLE = LAYOUT._replace(seed=2, systems=Systems(
    sampling="poisson", sample_rate=0.8, stragglers=0.5, straggler_policy="keep",
    dropout=0.25, join=(0, 0, 1, 0, 0)))
SYSTEMS_QUICK = {"scaffold", "mocha"}  # a step counter; per-node state and broadcasts
AGGREGATOR_QUICK = {"ifca", "mocha"}  # one average per cluster; a body beside personal rows


@functools.cache
def _engine(name: str, fed: Federation = LAYOUT, padding: int = PADDING) -> Engine:
    """One engine per configuration; by default two lanes and three padding nodes, so that
    the loop below also checks that the layout and empty nodes change nothing."""
    return Engine(_algorithm(name), data(), fed, empty_nodes=padding)


def _jnp(tree):
    return jax.tree.map(jnp.asarray, tree)


def _row_slice(tree, n: int):
    return jax.tree.map(lambda leaf: leaf[:n], tree)


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _row(tree, k: int):
    return jax.tree.map(lambda leaf: leaf[k], tree)


class LoopRound:
    """One round of the per-node loop: what went in and what came out."""

    def __init__(self, broadcast, uploads, nodes, server):
        self.broadcast, self.uploads, self.nodes, self.server = broadcast, uploads, nodes, server


@functools.cache
def _loop(name: str, fed: Federation = LAYOUT) -> tuple:
    """ROUNDS rounds as a plain Python loop over nodes of the unbatched `node_round`, from
    the engine's initial state, with the engine's documented key derivation. Every node is
    padded to the largest, so `node_round` compiles once; nodes without data take no step
    (their state stays, their upload is zeros, with weight 0), as the engine documents.
    Who takes part, for how many steps and with what weight follow the engine's
    participation trace (`Engine.participation`); a round nobody reported in leaves the
    server as it was."""
    engine = _engine(name, fed)
    trace = engine.participation(ROUNDS)
    algo, data = engine.algorithm, engine.data
    state = host_copy(engine.init())
    server, nodes = state.server, state.nodes
    schedule = Schedule(data.task, BASE.batch_size, BASE.local_epochs)
    longest = int(data.train.counts.max())
    one_node = jax.jit(lambda b, node, x, y, k, n, work: node_round(
        algo, b, node, x, y, k, schedule, n=n, work=work))
    num_nodes = engine.num_nodes
    rounds = []
    for round_ in range(ROUNDS):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(fed.seed), 1), round_)
        _, k_nodes = jax.random.split(key)
        broadcast = algo.broadcast(server)
        steps, weights = np.zeros(num_nodes, int), np.zeros(num_nodes, np.float32)
        steps[trace["ids"][round_]] = trace["steps"][round_]
        weights[trace["ids"][round_]] = trace["weights"][round_]
        uploads, new_nodes = [], []
        for k in range(num_nodes):
            if steps[k] == 0:
                uploads.append(None)
                new_nodes.append(_row(nodes, k))
                continue
            x, y = data.train.node(k)
            n, pad = len(x), longest - len(x)
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
            upload, node, _ = one_node(for_node(broadcast, k), _row(nodes, k), jnp.asarray(x),
                                       jnp.asarray(y), jax.random.fold_in(k_nodes, k),
                                       jnp.int32(n), jnp.int32(steps[k]))
            uploads.append(upload)
            new_nodes.append(node)
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), engine.upload_shapes)
        uploads = host_copy(_stack([zeros if u is None else u for u in uploads]))
        nodes = host_copy(_stack(new_nodes))
        if weights.any():
            server = host_copy(algo.server_update(_jnp(server), _jnp(uploads),
                                                  jnp.asarray(weights), jnp.arange(num_nodes)))
        rounds.append(LoopRound(broadcast, uploads, nodes, server))
    return tuple(rounds)


# ----- the engine is a per-node loop -----


@pytest.mark.parametrize("name", _names())
def test_engine_equals_per_node_loop(name):
    """On two lanes, with three padding nodes: the engine's layout changes nothing."""
    engine = _engine(name)
    assert engine.lanes == 2 and engine.num_nodes == len(SIZES) + PADDING
    got, history = engine.run(engine.init(), ROUNDS)
    want = _loop(name)[-1]
    assert int(got.round) == ROUNDS
    assert_close(got.server, want.server)
    assert_close(got.nodes, want.nodes)
    np.testing.assert_array_equal(history["participants"], [len(SIZES)] * ROUNDS)


@pytest.mark.parametrize("name", _names(slow=set(NAMES) - SYSTEMS_QUICK))
def test_engine_follows_the_participation_trace(name):
    """Under Poisson cohorts, stragglers keeping part of their work, dropouts and a late
    joiner, the engine equals the per-node loop run on its participation trace: a straggler's
    round is `node_round` cut after its steps, a dropped node keeps its state, and the
    weights renormalise over the nodes that reported."""
    engine = _engine(name, UNRELIABLE)
    trace = engine.participation(ROUNDS)
    sampled, steps = trace["ids"][trace["steps"] > 0], trace["steps"]
    assert (trace["stragglers"] > 0).any() and (trace["dropped"] > 0).any()
    assert 2 not in trace["ids"][0][trace["steps"][0] > 0]  # node 2 joins in round 1
    assert sampled.size and steps.max() > 0
    got, history = engine.run(engine.init(), ROUNDS)
    want = _loop(name, UNRELIABLE)[-1]
    assert_close(got.server, want.server)
    assert_close(got.nodes, want.nodes)
    np.testing.assert_array_equal(history["participants"], trace["participants"])


NOT_PRIVATE = {"local": "local training uploads nothing",
               "ifca": "IFCA uploads its cluster choice, which DP noise cannot cover"}
PRIVACY_QUICK = {"scaffold"}  # its control variates pass `release`, beside the mean


@pytest.mark.parametrize("name", _names(slow=set(NAMES) - PRIVACY_QUICK, skip=NOT_PRIVATE))
def test_central_dp_without_noise_or_clip_is_the_plain_run(name):
    """Central DP at z = 0, S = ∞ and weights capped at the largest node is FedAvg's
    weighted mean with a fixed denominator that every node reporting meets exactly: every
    algorithm trains what it trains without DP (its averages through DP's mean, its kept
    parts through `release`)."""
    cap = float(data().train.counts.max())
    fed = LAYOUT._replace(privacy=privacy.central(clip=math.inf, noise_multiplier=0.0,
                                                  weight_cap=cap))
    engine = _engine(name, fed)
    got, history = engine.run(engine.init(), ROUNDS)
    assert np.all(np.isinf(history["epsilon"]))
    want = _loop(name)[-1]
    assert_close(got.server, want.server)
    assert_close(got.nodes, want.nodes)


SPIED = {}  # algorithm name -> calls of the aggregator while tracing
NO_AVERAGE = {"local": "local training averages nothing"}


@pytest.mark.parametrize("name", _names(slow=set(NAMES) - AGGREGATOR_QUICK, skip=NO_AVERAGE))
def test_averaging_goes_through_the_configured_aggregator(name):
    """With an aggregator that is the weighted mean, every algorithm calls it wherever it
    averages (so a robust rule replaces all of its averaging) and trains what it trains
    without one."""

    def spy(uploads, weights, key):
        SPIED[name] = SPIED.get(name, 0) + 1
        return robust.mean().aggregate(uploads, weights, key)

    fed = LAYOUT._replace(aggregator=robust.Aggregator("spy", spy))
    engine = _engine(name, fed)
    got, _ = engine.run(engine.init(), ROUNDS)
    assert SPIED.get(name, 0) >= 1
    want = _loop(name)[-1]
    assert_close(got.server, want.server)
    assert_close(got.nodes, want.nodes)


@pytest.mark.parametrize("name", _names(slow=set(NAMES) - JIT_QUICK))
def test_jit_equals_no_jit(name):
    engine = _engine(name, BASE, 0)  # the automatic layout: fewer loop steps to run op by op
    jitted, hj = engine.run(engine.init(), 1)
    with jax.disable_jit():  # the same Python code, op by op
        eager, he = engine.run(engine.init(), 1)
    assert_close(jitted.server, eager.server)
    assert_close(jitted.nodes, eager.nodes)
    np.testing.assert_allclose(hj["train_loss"], he["train_loss"], rtol=1e-5)


@pytest.mark.parametrize("name", _names())
def test_second_round_does_not_retrace(name):
    engine = _engine(name)
    state, _ = engine.run(engine.init(), 1)
    traces = TRACES[name]
    assert traces >= 1 and engine._run._cache_size() == 1
    state, _ = engine.run(state, 1)
    state, _ = engine.run(state, 2)  # two more one-round chunks (rounds_per_sync=1)
    assert TRACES[name] == traces and engine._run._cache_size() == 1
    first = engine.evaluate(state)
    engine.evaluate(state)
    assert engine._evaluate._cache_size() == 1
    assert set(first) <= {"global", "personalized", "local"} and first
    for kind, found in first.items():  # every node has test rows: every metric is finite
        assert all(np.isfinite(v).all() for v in found.values()), kind


# ----- the server -----


def _models(algo, server, node, k):
    return algo.models(for_node(algo.broadcast(server), k), node)


@pytest.mark.parametrize("name", _names())
def test_identical_uploads_aggregate_to_a_no_op(name):
    """Four nodes sending node 2's upload (any weights) leave every model of node 2 as when
    it is the only node."""
    algo, first = _engine(name).algorithm, _loop(name)[0]
    upload, node = _row(first.uploads, 2), _row(first.nodes, 2)
    key = jax.random.key(3)
    alone = algo.server_update(algo.init(key, 1), _jnp(_stack([upload])), jnp.ones(1),
                               jnp.arange(1))
    four = algo.server_update(algo.init(key, 4), _jnp(_stack([upload] * 4)),
                              jnp.asarray([1.0, 2.0, 3.0, 10.0]), jnp.arange(4))
    assert_close(_models(algo, four, node, 0), _models(algo, alone, node, 0))


@pytest.mark.parametrize("name", _names())
def test_zero_weight_uploads_change_nothing(name):
    """An upload of finite junk with weight 0 (a node without data) leaves the server state
    as if it had not been sent."""
    algo, first = _engine(name).algorithm, _loop(name)[0]
    first = LoopRound(first.broadcast, _row_slice(first.uploads, len(SIZES)), None, None)
    key, n = jax.random.key(3), len(SIZES)
    weights = jnp.asarray(_engine(name).data.train.counts, jnp.float32)
    rng = np.random.default_rng(0)
    junk = jax.tree.map(
        lambda leaf: (rng.normal(size=leaf.shape[1:]) * 1e3).astype(leaf.dtype)
        if np.issubdtype(leaf.dtype, np.floating) else np.zeros(leaf.shape[1:], leaf.dtype),
        first.uploads)
    with_junk = jax.tree.map(lambda u, j: jnp.concatenate([u, j[None]]), first.uploads, junk)
    a = algo.server_update(algo.init(key, n + 1), with_junk,
                           jnp.concatenate([weights, jnp.zeros(1)]), jnp.arange(n + 1))
    b = algo.server_update(algo.init(key, n + 1), _jnp(first.uploads), weights, jnp.arange(n))
    assert_close(a, b)


def _vectors(tree) -> list[np.ndarray]:
    return [np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(tree)
            if np.issubdtype(np.asarray(leaf).dtype, np.floating) and np.size(leaf) > 1]


@pytest.mark.parametrize("name", _names(skip=UPLOADS_PERSONAL))
def test_no_personal_model_reaches_an_upload(name):
    """After round 2, no parameter array of a node's personalized or local model that the
    server did not send appears in what the node uploads. (Round 1 is left out: there, one
    step of a personal model and of the global one can coincide, e.g. Ditto's.)"""
    algo = _engine(name).algorithm
    for loop in _loop(name)[1:]:
        for k in range(len(SIZES)):
            kinds = algo.models(for_node(loop.broadcast, k), _row(loop.nodes, k))
            sent = _vectors(for_node(loop.broadcast, k))
            uploaded = _vectors(_row(loop.uploads, k))
            for kind in set(kinds) & {"personalized", "local"}:
                for p in _vectors(kinds[kind]):
                    if any(s.shape == p.shape and np.array_equal(s, p) for s in sent):
                        continue  # the server's own model (e.g. the shared body)
                    assert not any(u.shape == p.shape and np.allclose(u, p) for u in uploaded), (
                        f"node {k}'s {kind} parameters of size {p.size} are in its upload")


# ----- seeds -----


@pytest.mark.parametrize("name", _names())
def test_same_seed_gives_identical_results(name):
    engine = _engine(name)
    a, ha = engine.run(engine.init(), ROUNDS)
    a = host_copy(a)
    b, hb = engine.run(engine.init(), ROUNDS)
    assert_equal(a, host_copy(b))
    assert_equal(ha, hb)


@pytest.mark.parametrize("name", _names(slow=set(NAMES) - QUICK))
def test_another_seed_gives_different_results(name):
    engine, other = _engine(name), _engine(name, LAYOUT._replace(seed=1))
    a, _ = engine.run(engine.init(), ROUNDS)
    b, _ = other.run(other.init(), ROUNDS)
    a, b = host_copy((a.nodes, a.server)), host_copy((b.nodes, b.server))
    assert any(not np.allclose(x, y, rtol=1e-4, atol=1e-6)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
