"""The robust aggregation rules (fedmtl.robust) against plain NumPy references written from
their papers' definitions, on random uploads [C, ...] of two leaves with non-reporting slots
full of garbage; limit cases, outliers, named errors, and `robust.mean()` through the engine
equal to the default run.

Rules are jitted once per rule and parameters (`_jitted`), and the engines are the shared
tiny problem's, so the file stays fast.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import BASE, CLASSES, DIM, assert_close, data, host_copy

from fedmtl import algorithms, robust
from fedmtl.engine import Engine
from fedmtl.models import MLP
from fedmtl.robust import RobustnessError

KEY = jax.random.key(0)
# geometric_median and centered_clip broadcast a [d] centre against the [C, d] uploads, which
# the suite's strict rank promotion (conftest.py) refuses: their numbers are checked with
# promotion allowed, and test_rule_runs_under_strict_promotion records the bug.

# (rule name, factory keywords): every rule, at parameters its reference takes too.
RULES = [
    ("mean", {}),
    ("median", {}),
    ("trimmed_mean", {"trim": 0.25}),
    ("trimmed_mean", {"trim": 0.0}),
    ("krum", {"byzantine": 1}),
    ("multi_krum", {"byzantine": 1}),
    ("multi_krum", {"byzantine": 0, "select": 2}),
    ("geometric_median", {"iterations": 5, "nu": 1e-6}),
    ("norm_bound", {"max_norm": 1.5}),
    ("centered_clip", {"tau": 0.5, "iterations": 3}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for name, kw in RULES]


@functools.cache
def _jitted(name: str, items: tuple):
    return jax.jit(robust.AGGREGATORS[name](**dict(items)).aggregate)


def aggregate(name: str, uploads, weights, **kw):
    """The rule's jitted aggregate, as one flat float64 vector."""
    fn = _jitted(name, tuple(sorted(kw.items())))
    out = fn(uploads, jnp.asarray(weights, jnp.float32), KEY)
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64))
                           for leaf in jax.tree.leaves(out)])


# ----- NumPy references: rows x [C, d], weights w [C] -----


def _flat(uploads) -> np.ndarray:
    """Each slot's upload as one row [C, d], leaves in the order ravel_pytree takes them."""
    leaves = jax.tree.leaves(uploads)
    return np.concatenate([np.asarray(leaf, np.float64).reshape(len(leaf), -1)
                           for leaf in leaves], axis=1)


def _clip_rows(z, bound):
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z * np.minimum(1.0, bound / np.maximum(norms, 1e-300))


def _krum_scores(r, f):
    m = len(r)
    k = min(max(m - f - 2, 1), max(m - 1, 1))
    d = ((r[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    return np.array([np.sort(np.delete(d[i], i))[:k].sum() for i in range(m)])


def reference(name, x, w, **kw):
    r, wr = x[w > 0], w[w > 0]  # only reporters count
    m = len(r)
    if name == "mean":
        return wr @ r / wr.sum()
    if name == "median":
        return np.median(r, axis=0)
    if name == "trimmed_mean":
        b = math.floor(kw.get("trim", 0.1) * m)
        return np.sort(r, axis=0)[b: m - b].mean(axis=0)
    if name == "krum":
        return r[np.argmin(_krum_scores(r, kw.get("byzantine", 1)))]
    if name == "multi_krum":
        f = kw.get("byzantine", 1)
        select = kw.get("select") or max(m - f, 1)
        return r[np.argsort(_krum_scores(r, f), kind="stable")[:select]].mean(axis=0)
    if name == "geometric_median":  # RFA's smoothed Weiszfeld, from the weighted mean
        a = wr / wr.sum()
        v = a @ r
        for _ in range(kw.get("iterations", 10)):
            beta = a / np.maximum(kw.get("nu", 1e-6), np.linalg.norm(r - v, axis=1))
            v = beta @ r / beta.sum()
        return v
    if name == "norm_bound":
        return wr @ _clip_rows(r, kw["max_norm"]) / wr.sum()
    if name == "centered_clip":  # Karimireddy et al., from the coordinate-wise median
        v = np.median(r, axis=0)
        for _ in range(kw.get("iterations", 3)):
            v = v + _clip_rows(r - v, kw["tau"]).mean(axis=0)
        return v
    raise KeyError(name)


def uploads_and_weights(slots: int, reporters: int, seed: int = 0, garbage: float = 1e3):
    """Random uploads {"a": [C, 3, 2], "b": [C, 5]} and weights [C] with `reporters` positive
    ones at random slots; the others' uploads are large garbage (they must be ignored)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(slots, 3, 2))
    b = rng.normal(size=(slots, 5))
    w = np.zeros(slots)
    on = rng.permutation(slots)[:reporters]
    w[on] = rng.uniform(0.5, 3.0, reporters)
    a[w == 0] = garbage * rng.normal(size=(slots - reporters, 3, 2))
    b[w == 0] = garbage * rng.normal(size=(slots - reporters, 5))
    uploads = {"a": jnp.asarray(a, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
    return uploads, w.astype(np.float32)


@pytest.mark.parametrize("name, kw", RULES, ids=IDS)
@pytest.mark.parametrize("reporters", [5, 6])  # odd and even counts, of 9 slots
def test_rule_matches_its_numpy_reference(name, kw, reporters):
    uploads, w = uploads_and_weights(9, reporters, seed=reporters)
    got = aggregate(name, uploads, w, **kw)
    want = reference(name, _flat(uploads), w.astype(np.float64), **kw)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert got.shape == (3 * 2 + 5,)


@pytest.mark.parametrize("name, kw", RULES, ids=IDS)
def test_one_reporter_gives_its_upload(name, kw):
    uploads, w = uploads_and_weights(9, 1, seed=3)
    only = _flat(uploads)[w > 0][0]
    if name == "norm_bound":
        only = _clip_rows(only[None], kw["max_norm"])[0]
    np.testing.assert_allclose(aggregate(name, uploads, w, **kw), only, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kw", RULES, ids=IDS)
def test_equal_uploads_give_that_upload(name, kw):
    rng = np.random.default_rng(5)
    one = {"a": rng.normal(size=(3, 2)) * 0.3, "b": rng.normal(size=(5,)) * 0.3}  # norm < 1.5
    uploads = {k: jnp.asarray(np.broadcast_to(v, (9, *v.shape)), jnp.float32)
               for k, v in one.items()}
    w = np.array([1, 0, 2, 1, 1, 0, 3, 0, 1], np.float32)
    want = np.concatenate([one["a"].ravel(), one["b"]])
    np.testing.assert_allclose(aggregate(name, uploads, w, **kw), want, rtol=1e-5, atol=1e-6)


def test_trimmed_mean_without_trimming_is_the_unweighted_mean():
    uploads, w = uploads_and_weights(9, 5, seed=7)
    x = _flat(uploads)[w > 0]
    np.testing.assert_allclose(aggregate("trimmed_mean", uploads, w, trim=0.0), x.mean(axis=0),
                               rtol=1e-5, atol=1e-6)


def test_nobody_reporting_gives_zeros():
    uploads, w = uploads_and_weights(9, 0, seed=1)
    for name, kw in RULES:
        np.testing.assert_array_equal(aggregate(name, uploads, w, **kw), 0.0, err_msg=name)


@pytest.mark.parametrize("name, kw", [
    ("median", {}), ("trimmed_mean", {"trim": 0.25}), ("krum", {"byzantine": 1}),
    ("multi_krum", {"byzantine": 2}),  # it averages m - f: f must count both outliers
    # Weiszfeld from the mean, 2e5 away: 10 steps leave it ~1 off, 20 reach the honest ones
    ("geometric_median", {"iterations": 30, "nu": 1e-6}),
])
def test_robust_rules_survive_a_minority_of_huge_outliers(name, kw):
    """2 of 9 reporters send 1e6: the mean moves by ~2e5, a robust rule stays among the
    honest uploads (all within 0.1 of 1)."""
    rng = np.random.default_rng(11)
    a = 1 + 0.1 * rng.uniform(-1, 1, size=(9, 3, 2))
    b = 1 + 0.1 * rng.uniform(-1, 1, size=(9, 5))
    a[[2, 6]], b[[2, 6]] = 1e6, -1e6
    uploads = {"a": jnp.asarray(a, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
    w = np.ones(9, np.float32)
    assert np.abs(aggregate("mean", uploads, w) - 1).max() > 1e5
    assert np.abs(aggregate(name, uploads, w, **kw) - 1).max() <= 0.1 + 1e-5


@pytest.mark.parametrize("name", ["geometric_median", "centered_clip"])
def test_rule_runs_under_strict_promotion(name):
    kw = dict(dict(RULES)[name])
    uploads, w = uploads_and_weights(9, 4)
    robust.AGGREGATORS[name](**kw).aggregate(uploads, jnp.asarray(w), KEY)


def test_krum_checks_the_cohort():
    robust.krum(1).check(5)
    with pytest.raises(RobustnessError, match=r"krum: Krum needs more nodes per round than "
                       r"2f \+ 2 = 4 \(f = 1 Byzantine nodes\), the cohort has 4"):
        robust.krum(1).check(4)
    with pytest.raises(RobustnessError, match="multi_krum: Krum needs .* = 6"):
        robust.multi_krum(2).check(6)
    with pytest.raises(RobustnessError, match="multi_krum: select = 6 exceeds"):
        robust.multi_krum(1, select=6).check(5)


def _fedavg():
    return algorithms.fedavg(MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0)), local_optimizer=0.1)


@pytest.mark.parametrize("fed", [
    BASE._replace(aggregator=robust.krum(2)),  # 5 nodes <= 2 * 2 + 2
    BASE._replace(aggregator=robust.multi_krum(1), cohort_size=4),  # 4 <= 4
])
def test_engine_refuses_krum_on_too_small_a_cohort(fed):
    with pytest.raises(RobustnessError, match="krum: Krum needs more nodes per round"):
        Engine(_fedavg(), data(), fed)


@pytest.mark.parametrize("make, match", [
    (lambda: robust.trimmed_mean(0.5), "trimmed_mean: trim must be in"),
    (lambda: robust.trimmed_mean(-0.1), "trimmed_mean: trim must be in"),
    (lambda: robust.trimmed_mean(float("nan")), "trimmed_mean: trim must be in"),
    (lambda: robust.krum(-1), "krum: byzantine must be a whole number"),
    (lambda: robust.krum(1.5), "krum: byzantine must be a whole number"),
    (lambda: robust.krum(True), "krum: byzantine must be a whole number"),
    (lambda: robust.multi_krum(-1), "multi_krum: byzantine must be"),
    (lambda: robust.multi_krum(1, select=0), "multi_krum: select must be"),
    (lambda: robust.geometric_median(iterations=0), "geometric_median: iterations must be"),
    (lambda: robust.geometric_median(nu=0.0), "geometric_median: .* nu > 0"),
    (lambda: robust.norm_bound(0.0), "norm_bound: max_norm must be finite and > 0"),
    (lambda: robust.norm_bound(math.inf), "norm_bound: max_norm must be finite and > 0"),
    (lambda: robust.centered_clip(0.0), "centered_clip: tau must be"),
    (lambda: robust.centered_clip(1.0, iterations=0), "centered_clip: .* iterations >= 1"),
])
def test_bad_parameters_name_the_rule(make, match):
    with pytest.raises(RobustnessError, match=match):
        make()


@pytest.mark.parametrize("name", ["fedavg", "mocha"])
def test_the_mean_rule_is_the_default_run(name):
    """robust.mean() where the algorithm averages gives the plain run, to float tolerance."""
    make = lambda: algorithms.ALGORITHMS[name](MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0)),
                                               local_optimizer=0.1)
    plain = Engine(make(), data(), BASE)
    ruled = Engine(make(), data(), BASE._replace(aggregator=robust.mean()))
    a, ha = plain.run(plain.init(), 2)
    a = host_copy(a)
    b, hb = ruled.run(ruled.init(), 2)
    assert_close(a, host_copy(b))
    assert ha.keys() == hb.keys()
    for k in ha:
        np.testing.assert_allclose(ha[k], hb[k], rtol=1e-5, atol=1e-6, err_msg=k)
