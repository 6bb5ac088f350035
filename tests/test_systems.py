"""The systems model (`fedmtl.systems`): sampling, stragglers, dropouts, availability and the
simulated clock, checked on the participation trace and through the engine. (That every
algorithm's engine run equals the per-node loop on the trace is in test_harness.py.)"""

import jax
import numpy as np
import pytest
from tiny import BASE, SIZES, assert_equal, data, host_copy, mlp

from fedmtl import fedavg, local
from fedmtl.engine import Engine
from fedmtl.systems import Systems, SystemsError, churn, lognormal_speeds

# 12 nodes of 4..26 training rows: steps per epoch 1..7 at B = 4
BIG = tuple(range(5, 33, 5)) + tuple(range(6, 33, 5))
E3 = BASE._replace(local_epochs=3, rounds=4, rounds_per_sync=2)
PLAIN = Systems()


def _engine(systems=PLAIN, fed=E3, sizes=BIG, algo=None, **replace):
    algo = algo or fedavg(mlp(), local_optimizer=0.1)
    return Engine(algo, data(sizes), fed._replace(systems=systems, **replace))


def _trace(systems=PLAIN, rounds=40, **kwargs):
    return _engine(systems, **kwargs).participation(rounds)


def _run(engine):
    state, history = engine.run(engine.init())
    return host_copy(state), history


# ----- neutral values change nothing -----


def test_neutral_values_equal_the_default_bit_for_bit():
    """Every option spelled out at its neutral value (per-node arrays included) trains
    exactly what the default does; the default is today's plain federation (the harness
    checks it against the per-node loop)."""
    n = len(BIG)
    neutral = Systems(sampling="uniform", stragglers=0.0, straggler_policy="keep",
                      dropout=np.zeros(n), join=np.zeros(n, int), leave=None,
                      speed=np.ones(n), bandwidth=np.full(n, np.inf), deadline=None)
    a, ha = _run(_engine(cohort_size=5))  # the cohort drawn as before the systems model
    b, hb = _run(_engine(neutral, cohort_size=5))
    assert_equal(a, b)
    assert_equal(ha, hb)
    assert (ha["work"] == 1).all() and (ha["dropped"] == 0).all()
    assert (ha["participants"] == 5).all() and (ha["sampled"] == 5).all()
    full = _trace(neutral, rounds=3, cohort_size=None)
    assert (full["ids"] == np.arange(n)).all() and (full["weights"] == data(BIG).train.counts).all()


# ----- sampling -----


def test_poisson_cohort_sizes_have_binomial_mean_and_variance():
    q, n, rounds = 0.3, len(BIG), 3000
    trace = _trace(Systems(sampling="poisson", sample_rate=q), rounds=rounds, cohort_size=None)
    size = trace["sampled"].astype(float)
    mean, var = n * q, n * q * (1 - q)
    assert abs(size.mean() - mean) < 5 * np.sqrt(var / rounds)
    assert abs(size.var() - var) < 5 * var * np.sqrt(2 / rounds)
    # each node is sampled with probability q, independently of the others
    taken = np.zeros((rounds, n))
    for r in range(rounds):
        ids = trace["ids"][r][trace["weights"][r] > 0]
        taken[r, ids] = 1
    np.testing.assert_allclose(taken.mean(0), q, atol=5 * np.sqrt(q * (1 - q) / rounds))
    assert abs(np.corrcoef(taken[:, 0], taken[:, 1])[0, 1]) < 5 / np.sqrt(rounds)
    assert not trace["overflow"].any()


def test_a_poisson_cohort_larger_than_its_capacity_is_refused():
    """Before training (every round of the federation is planned at construction) or, for
    rounds beyond the federation's, when the round comes."""
    tight = Systems(sampling="poisson", sample_rate=0.9, capacity=2)
    with pytest.raises(SystemsError, match="round 1 would sample more nodes .*capacity"):
        _engine(tight, cohort_size=None)
    engine = _engine(tight, cohort_size=None, rounds=0)
    with pytest.raises(SystemsError, match="round 1 sampled more nodes .*capacity"):
        engine.run(engine.init(), 2)


def test_weighted_sampling_favours_large_nodes_and_weighs_uploads_equally():
    trace = _trace(Systems(sampling="weighted"), rounds=2000, cohort_size=1)
    counts = data(BIG).train.counts
    chosen = trace["ids"][:, 0]
    frequency = np.bincount(chosen, minlength=len(counts)) / len(chosen)
    np.testing.assert_allclose(frequency, counts / counts.sum(), atol=0.03)
    assert set(np.unique(trace["weights"][:, 0])) == {1.0}


def test_uniform_cohorts_draw_only_available_nodes_and_fill_slots_with_distinct_ids():
    join = np.array([0] * 6 + [3] * 6)
    trace = _trace(Systems(join=join), rounds=6, cohort_size=8)
    for r in range(6):
        ids, steps = trace["ids"][r], trace["steps"][r]
        assert len(set(ids.tolist())) == len(ids)
        taking_part = ids[steps > 0]
        if r < 3:
            assert len(taking_part) == 6 and (taking_part < 6).all()  # fewer than 8 available
        else:
            assert len(taking_part) == 8


# ----- availability -----


def test_join_and_leave_windows_are_respected():
    n = len(BIG)
    join, leave = churn(n, join_by=5, stay=3, seed=1)
    trace = _trace(Systems(join=join, leave=leave), rounds=12, cohort_size=None)
    for r in range(12):
        ids = trace["ids"][r][trace["steps"][r] > 0]
        expected = np.flatnonzero((join <= r) & (r < leave))
        assert sorted(ids.tolist()) == expected.tolist(), r


def test_periodic_availability_follows_each_nodes_phase():
    n = len(BIG)
    phase = np.arange(n) % 4
    trace = _trace(Systems(period=4, uptime=0.5, phase=phase), rounds=8, cohort_size=None)
    for r in range(8):
        ids = trace["ids"][r][trace["steps"][r] > 0]
        assert sorted(ids.tolist()) == np.flatnonzero((r + phase) % 4 < 2).tolist()


# ----- stragglers, dropouts, the clock -----


def test_stragglers_are_an_exact_share_doing_fedprox_epochs():
    """round(p · cohort) stragglers per round, each completing 1..E-1 whole epochs (FedProx's
    randint(1, E)); under the drop policy they report nothing."""
    keep = Systems(stragglers=0.5, straggler_unit="epoch", straggler_policy="keep")
    trace = _trace(keep, rounds=200, cohort_size=5)
    counts = data(BIG).train.counts
    per_epoch = (counts + 3) // 4
    assert (trace["stragglers"] == 2).all()  # round(2.5) = 2, as Python's round
    epochs = trace["steps"] / per_epoch[trace["ids"]]
    done = epochs[epochs < 3]
    assert set(np.unique(done)) == {1.0, 2.0} and (epochs >= 1).all()
    drop = _trace(keep._replace(straggler_policy="drop"), rounds=200, cohort_size=5)
    assert (drop["participants"] == 3).all() and (drop["dropped"] == 2).all()
    np.testing.assert_array_equal(drop["ids"], trace["ids"])  # the same draws, policy apart


def test_straggler_work_range_in_steps():
    trace = _trace(Systems(stragglers=1.0, straggler_work=(0.5, 0.5), straggler_policy="keep"),
                   rounds=5, cohort_size=None, fed=BASE._replace(local_epochs=4, rounds=5))
    counts = data(BIG).train.counts
    assigned = 4 * ((counts + 3) // 4)
    steps = np.zeros_like(trace["steps"])
    for r in range(5):
        steps[r, trace["ids"][r]] = trace["steps"][r]
    np.testing.assert_array_equal(steps, np.broadcast_to(np.ceil(0.5 * assigned), steps.shape))


def test_dropout_rate_and_per_node_reliability():
    n = len(BIG)
    trace = _trace(Systems(dropout=0.3), rounds=1000, cohort_size=None)
    share = trace["dropped"].sum() / (1000 * n)
    assert abs(share - 0.3) < 5 * np.sqrt(0.3 * 0.7 / (1000 * n))
    unreliable = np.where(np.arange(n) < 3, 1.0, 0.0)
    trace = _trace(Systems(dropout=unreliable), rounds=20, cohort_size=None)
    reported = trace["ids"][trace["weights"] > 0]
    assert not np.isin(reported, [0, 1, 2]).any() and (trace["participants"] == n - 3).all()


def test_the_clock_and_the_deadline():
    """A round lasts until the slowest reporting node has uploaded; with a deadline, a node
    cut short keeps the steps that fit (policy keep) and the round lasts the deadline."""
    counts = data(BIG).train.counts
    steps = 3 * ((counts + 3) // 4)  # E3: 3 epochs, B = 4
    speed = np.where(np.arange(len(BIG)) % 2 == 0, 1.0, 0.5)
    free = _trace(Systems(speed=speed, bandwidth=100.0), rounds=1, cohort_size=None)
    engine = _engine(Systems(speed=speed, bandwidth=100.0), cohort_size=None)
    upload = engine.upload_bytes / 100.0
    np.testing.assert_allclose(free["round_time"], [np.max(steps / speed) + upload], rtol=1e-6)
    deadline = 10.0
    cut = _trace(Systems(speed=speed, bandwidth=100.0, deadline=deadline,
                         straggler_policy="keep"), rounds=1, cohort_size=None)
    fits = np.floor((deadline - upload) * speed)
    want = np.minimum(steps, fits)
    got = np.zeros_like(want)
    got[cut["ids"][0]] = cut["steps"][0]
    np.testing.assert_array_equal(got, want)
    assert cut["round_time"][0] == deadline and cut["stragglers"][0] == (steps > fits).sum()
    _, history = _run(_engine(Systems(speed=speed, deadline=deadline), cohort_size=None))
    np.testing.assert_allclose(history["time"], np.cumsum(history["round_time"]), rtol=1e-6)


def test_a_round_nobody_reports_in_leaves_the_server_unchanged():
    engine = _engine(Systems(join=np.full(len(BIG), 2)), cohort_size=None)
    state, history = engine.run(engine.init(), 2)
    assert (history["participants"] == 0).all()
    assert_equal(host_copy(state.server), host_copy(engine.init().server))


# ----- reproducibility -----


@pytest.mark.slow  # two engines trained; the harness checks lanes on the plain federation
def test_same_seed_same_trace_and_results_whatever_the_lanes():
    systems = Systems(sampling="poisson", sample_rate=0.5, stragglers=0.3,
                      straggler_policy="keep", dropout=0.2,
                      speed=lognormal_speeds(len(BIG), 0.5, seed=0))
    runs = [_engine(systems, cohort_size=None, lanes=lanes) for lanes in (1, 3)]
    assert runs[0].lanes != runs[1].lanes
    a, b = (e.participation() for e in runs)
    assert_equal(a, b)
    (sa, ha), (sb, hb) = (_run(e) for e in runs)
    for key in ("participants", "dropped", "stragglers", "work", "round_time", "time"):
        np.testing.assert_array_equal(ha[key], hb[key])
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 (sa.server, sa.nodes), (sb.server, sb.nodes))
    other = _engine(systems, cohort_size=None, seed=1).participation()
    assert not np.array_equal(other["steps"], a["steps"])


# ----- bad values -----


@pytest.mark.parametrize("systems, match", [
    (Systems(dropout=1.5), "dropout must be in"),
    (Systems(dropout=np.r_[np.zeros(len(BIG) - 1), -0.1]), "node '11'"),
    (Systems(stragglers=2.0), "stragglers must be in"),
    (Systems(straggler_work=(0.8, 0.2)), "straggler_work"),
    (Systems(sampling="poisson", sample_rate=0.0), "sample_rate"),
    (Systems(sampling="poisson"), "sample_rate"),
    (Systems(sample_rate=0.5), "Poisson sampling only"),
    (Systems(sampling="often"), "sampling must be one of"),
    (Systems(straggler_policy="ignore"), "straggler_policy"),
    (Systems(deadline=0.0), "deadline must be"),
    (Systems(deadline=-1.0), "deadline must be"),
    (Systems(join=3, leave=2), "joins in round 3 but leaves in round 2"),
    (Systems(join=np.zeros(3)), r"one per node \[12\]"),
    (Systems(speed=0.0), "speed must be"),
    (Systems(period=0), "period"),
    (Systems(uptime=0.0), "uptime"),
    (Systems(join=100), "empty in every round: no node"),
    (Systems(dropout=1.0), "empty in every round: every node .* drops out"),
    (Systems(deadline=1e-3, bandwidth=1.0), "empty in every round: no node can take a step"),
])
def test_bad_values_raise_a_named_error_before_training(systems, match):
    with pytest.raises(SystemsError, match=match):
        _engine(systems, cohort_size=None)


@pytest.mark.parametrize("systems, cohort, match", [
    (Systems(stragglers=0.6), 1, "empty in every round: no node reports"),  # round(0.6) = 1
    (Systems(capacity=3), None, "capacity sizes Poisson cohorts only"),
    (Systems(uptime=0.5), None, "uptime needs a period"),
    (Systems(straggler_unit="epoch"), None, "need stragglers > 0"),
])
def test_cohorts_empty_by_plan_and_unused_options_are_named(systems, cohort, match):
    with pytest.raises(SystemsError, match=match):
        _engine(systems, cohort_size=cohort)


def test_weighted_sampling_needs_a_cohort_size():
    with pytest.raises(SystemsError, match="cohort_size"):
        _engine(Systems(sampling="weighted"), cohort_size=None)
    with pytest.raises(SystemsError, match="Poisson cohort's size varies"):
        _engine(Systems(sampling="poisson", sample_rate=0.5), cohort_size=3)


def test_local_training_under_stragglers_keeps_dropped_nodes_as_they_were():
    """Nodes that dropped out in every round keep their initial state."""
    n = len(SIZES)
    unreliable = np.where(np.arange(n) == 1, 1.0, 0.0)
    engine = _engine(Systems(dropout=unreliable, stragglers=0.5, straggler_policy="keep"),
                     sizes=SIZES, algo=local(mlp(), local_optimizer=0.1), cohort_size=None)
    before = host_copy(engine.init().nodes)
    state, _ = engine.run(engine.init())
    after = host_copy(state.nodes)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[1], y[1]), before, after)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(
        jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
