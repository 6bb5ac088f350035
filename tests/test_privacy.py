"""Differential privacy (fedmtl.privacy, fedmtl.accounting): clipping bounds every node's
contribution, the noise has the standard deviation the formulas say, ε equals dp-accounting
called directly and grows with rounds, calibration meets its target, adaptive clipping moves
towards its quantile, z = 0 without clipping is FedAvg bit for bit, and every bad setting is
a named error before training.
"""

import math

import dp_accounting as dpa
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import pld, rdp
from tiny import BASE, assert_equal, data, host_copy, mlp

from fedmtl import accounting, algorithms, privacy, robust
from fedmtl.accounting import Round
from fedmtl.engine import Engine
from fedmtl.privacy import PrivacyError
from fedmtl.systems import Systems

KEY = jax.random.key(0)


def _uploads(c=6, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(scale * rng.normal(size=(c, 4, 3)), jnp.float32),
            "b": jnp.asarray(scale * rng.normal(size=(c, 3)), jnp.float32)}


def _norms(tree):
    return np.sqrt(sum(np.sum(np.asarray(x).reshape(x.shape[0], -1) ** 2, axis=1)
                       for x in jax.tree.leaves(tree)))


def _mechanism(z=1.0, clip=1.0, cap=None, denominator=4.0, **kw):
    p = privacy.central(clip=clip, noise_multiplier=z, weight_cap=cap, **kw)
    return privacy.Mechanism(p, Round("every_round", 10), z, z, 0.0,
                             1.0 if cap is None else cap, denominator, 4.0)


# ----- clipping -----

@pytest.mark.parametrize("per_layer", [False, True])
def test_clipping_bounds_every_upload(per_layer):
    u = _uploads()
    clipped, norms = jax.jit(privacy.clip_uploads, static_argnums=2)(u, 1.5, per_layer)
    np.testing.assert_allclose(norms, _norms(u), rtol=1e-5)
    assert np.all(_norms(clipped) <= 1.5 * (1 + 1e-5))
    if per_layer:  # each of the L = 2 leaves to 1.5 / √2
        for leaf in jax.tree.leaves(clipped):
            assert np.all(_norms([leaf]) <= 1.5 / math.sqrt(2) * (1 + 1e-5))
    else:  # a whole upload keeps its direction
        ratio = np.asarray(clipped["b"]) / np.asarray(u["b"])
        np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=1e-5)
    small = jax.tree.map(lambda x: x * 1e-3, u)
    assert_equal(privacy.clip_uploads(small, 1.5, per_layer)[0], small)


def test_one_node_moves_the_noiseless_mean_by_at_most_s_over_d():
    m = _mechanism(z=0.0, clip=1.0, denominator=4.0)
    weights = jnp.asarray([3.0, 1.0, 0.0, 7.0, 2.0, 5.0])
    mean = lambda u: jax.tree.map(np.asarray, privacy.NoisedMean(m, 1.0, KEY)(
        privacy.clip_uploads(u, 1.0, False)[0], weights))
    u = _uploads()
    base = mean(u)
    for k in (0, 3):
        moved = jax.tree.map(lambda x, k=k: x.at[k].multiply(-50.0), u)
        change = _norms(jax.tree.map(lambda a, b: (a - b)[None], mean(moved), base))[0]
        assert 0 < change <= 2 * 1.0 / 4.0 * (1 + 1e-5)  # replacing: at most 2S / D
    garbage = jax.tree.map(lambda x: x.at[2].set(jnp.nan), u)  # did not report
    assert_equal(mean(garbage), base)


# ----- noise -----

def test_noise_standard_deviations_are_the_formulas():
    d = 40_000
    zeros = {"v": jnp.zeros((3, d), jnp.float32)}
    w = jnp.asarray([1.0, 1.0, 0.0])
    m = _mechanism(z=1.3, clip=2.0, cap=5.0, denominator=8.0)
    agg = privacy.NoisedMean(m, jnp.float32(2.0), KEY)
    mean = np.asarray(agg(zeros, w)["v"])
    rows = np.asarray(agg.release(zeros, w)["v"])
    local = np.asarray(privacy.on_nodes(m._replace(noise_multiplier=0.7), zeros, w, KEY)["v"])
    tol = 4 / math.sqrt(2 * d)  # 4 standard errors of a sample standard deviation
    assert abs(mean.std() / (1.3 * 2.0 * 5.0 / 8.0) - 1) < tol
    assert abs(rows[:2].std() / (1.3 * 2.0) - 1) < tol
    assert abs(local[:2].std() / (0.7 * 2.0) - 1) < tol
    assert abs(mean.mean()) < 4 * mean.std() / math.sqrt(d)
    assert np.all(rows[2] == 0) and np.all(local[2] == 0)  # non-reporters get no noise
    again = np.asarray(agg(zeros, w)["v"])  # each call its own noise
    assert not np.allclose(again, mean)


# ----- accounting -----

ROUNDS = [
    Round("poisson", 1000, rate=0.05),
    Round("without_replacement", 1000, 50),
    Round("every_round", 100),
    Round("local", 100),
]


def _direct(round_: Round, z, rounds, delta, name="rdp"):
    """ε from dp-accounting, the event written out by hand."""
    if round_.kind == "poisson":
        ev = dpa.PoissonSampledDpEvent(round_.rate, dpa.GaussianDpEvent(z))
    elif round_.kind == "without_replacement":
        ev = dpa.SampledWithoutReplacementDpEvent(round_.nodes, round_.cohort,
                                                  dpa.GaussianDpEvent(z / 2))
    else:
        ev = dpa.GaussianDpEvent(z / 2 if round_.kind == "local" else z)
    rel = (dpa.NeighboringRelation.REPLACE_ONE
           if round_.kind in ("without_replacement", "local")
           else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    acc = (rdp.RdpAccountant(accounting.ORDERS, rel) if name == "rdp"
           else pld.PLDAccountant(rel))
    acc.compose(ev, rounds)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("round_", ROUNDS, ids=[r.kind for r in ROUNDS])
def test_epsilon_equals_dp_accounting_and_grows_with_rounds(round_):
    eps = accounting.epsilons(round_, 1.1, 30, 1e-5)
    for r in (1, 7, 30):
        assert abs(eps[r - 1] - _direct(round_, 1.1, r, 1e-5)) <= 1e-9
        assert abs(accounting.epsilon("rdp", round_, 1.1, r, 1e-5)
                   - _direct(round_, 1.1, r, 1e-5)) <= 1e-9
    assert np.all(np.diff(eps) > 0)
    assert np.all(np.isinf(accounting.epsilons(round_, 0.0, 3, 1e-5)))


def test_pld_epsilon_equals_dp_accounting():
    r = ROUNDS[0]
    assert abs(accounting.epsilon("pld", r, 1.1, 20, 1e-5) - _direct(r, 1.1, 20, 1e-5, "pld")
               ) <= 1e-9


@pytest.mark.parametrize("name", ["rdp", pytest.param("pld", marks=pytest.mark.slow)])
def test_calibration_meets_the_target_and_no_less_noise_does(name):
    r = ROUNDS[0]
    z = accounting.calibrate(name, r, 50, 3.0, 1e-5)
    assert accounting.epsilon(name, r, z, 50, 1e-5) <= 3.0
    assert accounting.epsilon(name, r, z - 1e-2, 50, 1e-5) > 3.0
    if name == "pld":  # PLD is the tighter accountant: it needs no more noise than RDP
        assert z <= accounting.calibrate("rdp", r, 50, 3.0, 1e-5)


def test_unreachable_epsilon_is_a_named_error():
    with pytest.raises(accounting.AccountingError, match="out of reach"):
        accounting.calibrate("rdp", Round("every_round", 10), 10_000, 1e-4, 1e-10)
    with pytest.raises(accounting.AccountingError, match="pld accountant does not cover"):
        accounting.accountant("pld", ROUNDS[1])


# ----- adaptive clipping -----

def test_adaptive_clipping_moves_towards_the_quantile():
    p = privacy.central(clip=1.0, noise_multiplier=0.0, target_quantile=0.5,
                        clip_learning_rate=0.2, count_noise=1e-6)
    m = privacy.Mechanism(p, ROUNDS[2], 0.0, 0.0, 1e-6, 1.0, 4.0, 4.0)
    u = {"v": jnp.asarray([[2.0], [3.0], [4.0], [5.0]])}  # every norm above S = 1
    w = jnp.ones(4)
    _, _, nxt, metrics = privacy.at_server(m, u, w, jnp.float32(1.0), KEY)
    assert float(metrics["clipped"]) == 1.0
    np.testing.assert_allclose(float(nxt), math.exp(0.2 * 0.5), rtol=1e-5)  # b̄ = 0: grows
    _, _, nxt, _ = privacy.at_server(m, u, w, jnp.float32(10.0), KEY)
    np.testing.assert_allclose(float(nxt), 10 * math.exp(-0.2 * 0.5), rtol=1e-5)  # b̄ = 1


def test_adaptive_clipping_splits_the_noise_budget():
    fed = BASE._replace(privacy=privacy.central(clip=1.0, noise_multiplier=1.0,
                                                target_quantile=0.5, count_noise=2.0))
    m = Engine(algorithms.fedavg(mlp()), data(), fed).mechanism
    assert m.noise_multiplier == 1.0 and m.count_noise == 2.0
    np.testing.assert_allclose(m.update_noise, (1.0 - 1 / 16) ** -0.5)


# ----- through the engine -----

def _trained(make, fed):
    engine = Engine(make(), data(), fed)
    state, history = engine.run(engine.init())
    return engine, host_copy(state), history


def test_no_noise_and_no_clip_is_fedavg_bit_for_bit():
    cap = float(data().train.counts.max())  # weights min(n_k, ŵ) = n_k: FedAvg's
    dp = privacy.central(clip=math.inf, noise_multiplier=0.0, weight_cap=cap)
    _, plain, _ = _trained(lambda: algorithms.fedavg(mlp()), BASE)
    engine, private, history = _trained(lambda: algorithms.fedavg(mlp()),
                                        BASE._replace(privacy=dp))
    assert_equal(private.server, plain.server)
    assert_equal(private.nodes, plain.nodes)
    assert np.all(np.isinf(history["epsilon"]))
    assert engine.privacy_report(2)["epsilon"] == math.inf


def test_the_history_carries_epsilon_and_the_clip():
    fed = BASE._replace(rounds=3, systems=Systems(sampling="poisson", sample_rate=0.6),
                        privacy=privacy.central(clip=0.5, epsilon=8.0, delta=1e-4,
                                                target_quantile=0.5, count_noise=1.0))
    engine, state, history = _trained(lambda: algorithms.fedavg(mlp()), fed)
    m = engine.mechanism
    assert m.round.kind == "poisson" and m.round.rate == 0.6
    np.testing.assert_allclose(history["epsilon"], [_direct(m.round, m.noise_multiplier, r,
                                                            1e-4) for r in (1, 2, 3)],
                               rtol=0, atol=1e-9)
    report = engine.privacy_report(3)
    assert report["epsilon"] <= 8.0 and report["noise_multiplier"] == m.noise_multiplier
    assert history["clip_norm"][0] == np.float32(0.5)
    assert float(state.clip_norm) != 0.5  # adaptive clipping moved it
    assert np.all(np.isfinite(history["train_loss"]))


@pytest.mark.parametrize("where", ["central", pytest.param("local", marks=pytest.mark.slow)])
def test_mocha_keeps_noised_columns(where):
    """MOCHA's personal columns are kept per node by the server: central DP noises them too
    (release), local DP noises them on the node; with z = 0 and no clip nothing changes."""
    make = lambda: algorithms.mocha(mlp(), lam=1e-2, omega_every=1)
    _, plain, _ = _trained(make, BASE)
    cap = {"weight_cap": float(data().train.counts.max())} if where == "central" else {}
    p = getattr(privacy, where)(clip=math.inf, noise_multiplier=0.0, **cap)
    _, same, _ = _trained(make, BASE._replace(privacy=p))
    assert_equal(same.server.W, plain.server.W)
    p = getattr(privacy, where)(clip=1.0, noise_multiplier=1.0)
    _, noised, _ = _trained(make, BASE._replace(privacy=p))
    assert not np.allclose(noised.server.W, plain.server.W, atol=1e-2)


# ----- named errors -----

@pytest.mark.parametrize("kwargs, match", [
    ({"clip": 0.0, "noise_multiplier": 1.0}, "clip must be"),
    ({"clip": -1.0, "noise_multiplier": 1.0}, "clip must be"),
    ({"clip": 1.0, "noise_multiplier": -0.1}, "noise_multiplier must be"),
    ({"clip": 1.0, "noise_multiplier": 1.0, "delta": 0.0}, "delta must be"),
    ({"clip": 1.0, "noise_multiplier": 1.0, "delta": 1.0}, "delta must be"),
    ({"clip": 1.0}, "exactly one of noise_multiplier"),
    ({"clip": 1.0, "noise_multiplier": 1.0, "epsilon": 1.0}, "exactly one of"),
    ({"clip": 1.0, "epsilon": 0.0}, "epsilon must be"),
    ({"clip": math.inf, "noise_multiplier": 1.0}, "finite clip"),
    ({"clip": 1.0, "noise_multiplier": 1.0, "target_quantile": 1.0}, "target_quantile"),
    ({"clip": 1.0, "noise_multiplier": 1.0, "accountant": "moments"}, "accountant must be"),
    ({"clip": 1.0, "noise_multiplier": 1.0, "weight_cap": 0.0}, "weight_cap must be"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(PrivacyError, match=match):
        privacy.central(**kwargs)


def test_bad_federations_are_named_before_training():
    fedavg = lambda: algorithms.fedavg(mlp())
    cases = [
        (fedavg, BASE._replace(privacy=privacy.central(noise_multiplier=1.0),
                               aggregator=robust.median()), "cannot be combined"),
        (lambda: algorithms.ifca(mlp(), clusters=2), BASE._replace(
            privacy=privacy.local(noise_multiplier=1.0)), "uploads whole numbers"),
        (fedavg, BASE._replace(rounds=5000, privacy=privacy.central(epsilon=1e-3, delta=1e-9)),
         "out of reach"),
        (fedavg, BASE._replace(cohort_size=3, privacy=privacy.central(
            epsilon=2.0, accountant="pld")), "pld accountant"),
        (fedavg, BASE._replace(privacy=privacy.central(
            noise_multiplier=1.0, target_quantile=0.5, count_noise=0.1)), "count noise"),
    ]
    for make, fed, match in cases:
        with pytest.raises(PrivacyError, match=match):
            Engine(make(), data(), fed)
    with pytest.raises(PrivacyError, match="adaptive clipping"):
        privacy.Privacy("local", 1.0, 1.0, target_quantile=0.5) and privacy.check(
            privacy.Privacy("local", 1.0, 1.0, target_quantile=0.5))


def test_the_accountant_sees_the_sampling():
    def kind(systems, cohort=None, where="central"):
        p = privacy.Privacy(where, 1.0, 1.0)
        return privacy.accounted_round(p, systems, cohort, 100)

    assert kind(Systems(sampling="poisson", sample_rate=0.1))[0].kind == "poisson"
    assert kind(Systems(), 10) == (kind(Systems(), 10)[0], 0.1)
    assert kind(Systems(), 10)[0].kind == "without_replacement"
    assert kind(Systems())[0].kind == "every_round"
    assert kind(Systems(sampling="weighted"), 10)[0].kind == "every_round"
    assert kind(Systems(period=4, uptime=0.5), 10)[0].kind == "every_round"
    assert kind(Systems(), 10, "local")[0].kind == "local"
    # local DP claims no amplification by sampling, whatever the sampling
    assert kind(Systems(sampling="poisson", sample_rate=0.1), where="local")[0].kind == "local"
