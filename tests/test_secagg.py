"""Secure aggregation (fedmtl.secagg): masks cancel exactly, the unmasked sum is the plain sum up
to quantization, a masked upload looks uniform, dropped slots' masks are rebuilt from Shamir
shares (or the round aborts), the pair seeds come from X25519, the secure mean equals
`robust.mean()`, and bad configurations raise named errors; checked against NumPy uint64
arithmetic.

Every setup is built once (`_setup`) and mask / unmask are jitted once (`MASK`, `UNMASK`), on
one vector width D where possible, so the file stays fast.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from scipy import stats

from fedmtl import robust, secagg
from fedmtl import secagg_shamir as shamir
from fedmtl.secagg import SecAggError, SecureAggregation

KEY = jax.random.key(0)
D = 4096
MASK = jax.jit(secagg.mask)
QUANTIZE = jax.jit(secagg.quantize)
UNMASK = jax.jit(secagg.unmask)
UNMASK_SUM = jax.jit(secagg.unmask_sum)


@functools.cache
def _setup(cohort: int, neighbours=None, seed: int = 0, **kw) -> secagg.SecAggSetup:
    return secagg.setup(SecureAggregation(neighbours=neighbours, **kw), cohort, seed)


def _vectors(setup, seed: int = 0, d: int = D) -> jax.Array:
    rng = np.random.default_rng(seed)
    clip = setup.config.clip
    return jnp.asarray(rng.uniform(-clip, clip, (setup.cohort, d)), jnp.float32)


def _sum_mod(rows, bits: int, where=None) -> np.ndarray:
    """Σ of uint32 rows [C, d] (those with `where`) mod 2^bits, in uint64."""
    rows = np.asarray(rows, np.uint64)
    if where is not None:
        rows = rows[np.asarray(where)]
    return rows.sum(axis=0) % np.uint64(2**bits)


def _expected_ok(setup, reported: np.ndarray) -> bool:
    """The abort rule: every reporter, and every dropped slot with a reporting neighbour,
    needs t reporting neighbours (its share holders)."""
    holders = (np.arange(setup.cohort)[:, None] + np.array(setup.offsets)) % setup.cohort
    count = reported[holders].sum(axis=1)
    needed = reported | reported[holders].any(axis=1)
    return bool(np.all(~needed | (count >= setup.threshold)))


# (cohort, neighbours): SecAgg+ with even k, the complete graph of SecAgg on an odd cohort,
# and an odd k on an even cohort (the circulant graph's a + C/2 edge).
GRAPHS = [(20, 6), (7, None), (20, 9)]


@pytest.mark.parametrize(("cohort", "neighbours"), GRAPHS)
def test_masks_cancel_exactly(cohort, neighbours):
    s = _setup(cohort, neighbours)
    x = _vectors(s)
    masked, q = MASK(s, x, KEY), QUANTIZE(s, x, KEY)
    assert masked.dtype == jnp.uint32 and masked.shape == (cohort, D)
    assert np.mean(np.asarray(masked) == np.asarray(q)) < 1e-3  # every row is masked
    self_masks = secagg._prg(s.self_seeds, secagg._round_words(KEY)[secagg._SELF], D)
    pair_sum = (_sum_mod(masked, 32) + (2**32 - _sum_mod(self_masks, 32))) % 2**32
    np.testing.assert_array_equal(pair_sum, _sum_mod(q, 32))  # the pairwise masks cancel
    total, ok = UNMASK(s, masked, jnp.ones(cohort, bool), KEY)
    assert bool(ok)
    np.testing.assert_array_equal(np.asarray(total, np.uint64), _sum_mod(q, 32))


def test_unmasked_sum_is_the_plain_sum_up_to_quantization():
    s = _setup(20, 6, levels=2**12 + 1)
    step = 2 * s.config.clip / (s.levels - 1)
    x = _vectors(s, seed=1)
    reported = jnp.ones(20, bool)
    out, ok = UNMASK_SUM(s, MASK(s, x, KEY), reported, KEY)
    assert bool(ok)
    err = np.asarray(out, np.float64) - np.asarray(x, np.float64).sum(axis=0)
    assert np.abs(err).max() <= 20 * step  # each node rounds by less than one level
    # unbiased: every coordinate 0.3 levels above a level; rounding down would be 6 levels off
    x = jnp.full((20, D), 2.3 * step - s.config.clip, jnp.float32)
    errs = [np.asarray(UNMASK_SUM(s, MASK(s, x, k), reported, k)[0], np.float64)
            - 20 * float(x[0, 0]) for k in jax.random.split(KEY, 4)]
    assert abs(np.mean(errs)) / step < 0.15  # sd of the mean: 0.023 levels
    # the default (finest) levels: float32 resolution
    s = _setup(20, 6)
    out, _ = UNMASK_SUM(s, MASK(s, x, KEY), reported, KEY)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x).sum(axis=0), atol=1e-5)


def test_quantization_ends_and_an_even_number_of_levels():
    for levels in (16, 17):  # the centre of [-S, S] between two levels, or on one
        s = _setup(20, 6, levels=levels)
        ends = QUANTIZE(s, jnp.full((20, 8), 1.0, jnp.float32).at[:10].set(-1.0), KEY)
        np.testing.assert_array_equal(np.asarray(ends)[:, 0], [0] * 10 + [levels - 1] * 10)
        x = _vectors(s, seed=8)
        q = np.asarray(QUANTIZE(s, x, KEY), np.uint64)
        assert q.max() <= levels - 1
        out = secagg.decode(s, jnp.asarray(q.sum(axis=0), jnp.uint32), jnp.int32(20))
        err = np.asarray(out, np.float64) - np.asarray(x, np.float64).sum(axis=0)
        assert np.abs(err).max() <= 20 * 2 / (levels - 1)
        assert abs(err.mean()) < 0.05 * 2 / (levels - 1) * np.sqrt(20)


def test_a_masked_upload_is_uniform_and_independent_of_the_update():
    s = _setup(20, 6)
    x = _vectors(s, seed=2)
    for update in (jnp.full_like(x, -1.0), jnp.full_like(x, 1.0), x):
        masked = np.asarray(MASK(s, update, KEY))
        for row in (masked[0], masked.ravel()):  # one slot's upload, and all of them
            top = np.bincount(row >> 28, minlength=16)
            assert stats.chisquare(top).pvalue > 1e-3
    masked = np.asarray(MASK(s, x, KEY), np.float64)
    corr = np.corrcoef(masked.ravel(), np.asarray(x, np.float64).ravel())[0, 1]
    assert abs(corr) < 5 / np.sqrt(masked.size)
    # one node's upload changes, everything else equal: its masked row is shifted by exactly
    # the change of its quantized row, which the mask hides
    moved = MASK(s, x.at[0].set(-x[0]), KEY)
    shift = (np.asarray(moved[0], np.int64) - np.asarray(masked[0], np.int64)) % 2**32
    q0, q1 = QUANTIZE(s, x, KEY)[0], QUANTIZE(s, x.at[0].set(-x[0]), KEY)[0]
    np.testing.assert_array_equal(shift, (np.asarray(q1, np.int64) - np.asarray(q0)) % 2**32)


@pytest.mark.parametrize("neighbours", [6, 9])
def test_thirty_percent_dropouts_recover_the_exact_sum(neighbours):
    s = _setup(20, neighbours)
    x = _vectors(s, seed=3)
    masked, q = MASK(s, x, KEY), QUANTIZE(s, x, KEY)
    rng = np.random.default_rng(neighbours)
    seen = set()
    for _ in range(200):  # a pattern that recovers, and one that aborts if any is drawn
        if seen == {True, False}:
            break
        reported = np.ones(20, bool)
        reported[rng.permutation(20)[:6]] = False
        expected = _expected_ok(s, reported)
        if expected in seen:
            continue
        seen.add(expected)
        garbage = jnp.where(jnp.asarray(reported)[:, None], masked,
                            jax.random.bits(jax.random.key(9), masked.shape, jnp.uint32))
        total, ok = UNMASK(s, garbage, jnp.asarray(reported), KEY)
        assert bool(ok) == expected
        want = _sum_mod(q, 32, reported) if expected else np.zeros(D, np.uint64)
        np.testing.assert_array_equal(np.asarray(total, np.uint64), want)
    assert True in seen


def test_too_many_dropouts_around_one_slot_abort():
    s = _setup(20, 6)
    x = _vectors(s, seed=4)
    masked, q = MASK(s, x, KEY), QUANTIZE(s, x, KEY)
    holders = [o % 20 for o in s.offsets]  # slot 0's neighbours, all of them share holders
    for alive in (s.threshold - 1, s.threshold):
        reported = np.ones(20, bool)
        reported[0] = False
        reported[holders[alive:]] = False
        total, ok = UNMASK(s, masked, jnp.asarray(reported), KEY)
        assert bool(ok) == (alive == s.threshold) == _expected_ok(s, reported)
        want = _sum_mod(q, 32, reported) if ok else np.zeros(D, np.uint64)
        np.testing.assert_array_equal(np.asarray(total, np.uint64), want)
    out, ok = UNMASK_SUM(s, masked, jnp.asarray(reported).at[holders[0]].set(False), KEY)
    assert not bool(ok) and not np.any(np.asarray(out))


def test_shamir_reconstructs_from_t_holders_and_not_from_fewer():
    rng = np.random.default_rng(5)
    n, t = 10, 4
    secrets = rng.integers(0, shamir.P, (300, 6)).astype(np.uint32)
    shares = shamir.share(secrets, n, t, rng)  # [300, n, 6]
    rebuild = jax.jit(shamir.reconstruct)
    for size in (t, t, n, t - 1):
        available = np.zeros((300, n), bool)
        for row in available:
            row[rng.permutation(n)[:size]] = True
        junk = np.where(available[..., None], shares, rng.integers(0, shamir.P, shares.shape))
        got = np.asarray(rebuild(jnp.asarray(junk, jnp.uint32), jnp.asarray(available)))
        if size >= t:
            np.testing.assert_array_equal(got, secrets)
        else:
            assert np.mean(got == secrets) < 0.01
    words = rng.integers(0, 2**32, (50, 2), dtype=np.uint32)
    np.testing.assert_array_equal(np.asarray(shamir.join(jnp.asarray(shamir.split(words)))),
                                  words)


def test_pair_seeds_come_from_x25519():
    s = _setup(10, 4, seed=3)
    seeds = np.asarray(s.pair_seeds)
    privates = secagg._private_keys(10, 3)
    publics = np.asarray(s.public_keys)
    values = set()
    for a in range(10):
        assert privates[a].public_key().public_bytes_raw() == publics[a].tobytes()
        for j, o in enumerate(s.offsets):
            b = (a + o) % 10
            np.testing.assert_array_equal(seeds[a, j], seeds[b, s.offsets.index(10 - o)])
            agreed = secagg.pair_seed(privates[a], X25519PublicKey.from_public_bytes(
                publics[b].tobytes()))
            np.testing.assert_array_equal(seeds[a, j], agreed)
            values.add((min(a, b), max(a, b), tuple(seeds[a, j])))
    assert len(values) == 10 * 4 // 2 == len({v[2] for v in values})  # distinct edges, seeds
    assert not np.array_equal(seeds, np.asarray(_setup(10, 4, seed=4).pair_seeds))


def test_secure_mean_equals_the_mean_up_to_quantization():
    cohort = 10
    agg = secagg.aggregator(SecureAggregation(neighbours=4, clip=5.0), cohort, seed=0)
    assert agg.name == "secure_mean" and agg.params["neighbours"] == 4
    rng = np.random.default_rng(6)
    uploads = {"w": jnp.asarray(rng.normal(size=(cohort, 3, 2)), jnp.float32),
               "b": jnp.asarray(rng.normal(size=(cohort, 4)), jnp.float32)}
    weights = jnp.asarray(rng.uniform(1.0, 20.0, cohort) * (np.arange(cohort) % 4 != 1),
                          jnp.float32)
    fn = jax.jit(agg.aggregate)
    got = fn(uploads, weights, KEY)
    want = robust.mean().aggregate(uploads, weights, KEY)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)
    dropped = np.asarray(weights) == 0
    assert dropped.sum() >= 2
    idx = np.flatnonzero(dropped)  # non-reporting rows full of garbage change nothing
    garbage = jax.tree.map(lambda u: u.at[idx[0]].set(1e30).at[idx[1:]].set(jnp.nan), uploads)
    for g, w in zip(jax.tree.leaves(fn(garbage, weights, KEY)), jax.tree.leaves(got),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    nobody = fn(uploads, jnp.zeros(cohort, jnp.float32), KEY)
    assert not any(np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(nobody))
    agg.check(5)
    with pytest.raises(SecAggError, match="neighbours = 4 must be fewer than the 4 nodes"):
        agg.check(4)
    with pytest.raises(SecAggError, match="uploads have 3 rows"):
        agg.aggregate(jax.tree.map(lambda u: u[:3], uploads), weights[:3], KEY)


@pytest.mark.parametrize(("kw", "cohort", "match"), [
    ({"neighbours": 10}, 10, "neighbours = 10 exceeds the cohort's 10 slots - 1 = 9"),
    ({"neighbours": 0}, 10, "neighbours must be a whole number >= 1"),
    ({"neighbours": 3}, 9, "no 3-regular graph on an odd cohort of 9 slots"),
    ({"bits": 7}, 10, r"bits must be a whole number in \[8, 32\]"),
    ({"bits": 33}, 10, r"bits must be a whole number in \[8, 32\]"),
    ({"clip": 0.0}, 10, "clip must be finite and > 0"),
    ({"clip": float("inf")}, 10, "clip must be finite and > 0"),
    ({"levels": 1}, 10, "levels must be a whole number >= 2"),
    ({"bits": 8, "levels": 26}, 10, "modulus too small .* 10 nodes at 26 levels: need bits >= 9"),
    ({"bits": 8}, 100, "modulus too small .* 100 nodes at 3 levels: need bits >= 9"),
    ({"threshold": 0.0}, 10, r"threshold must be in \(0, 1\]"),
    ({"threshold": 1.5}, 10, r"threshold must be in \(0, 1\]"),
    ({}, 1, "cohort must be a whole number >= 2"),
    ({}, 400, "set neighbours"),
])
def test_bad_configuration_raises_a_named_error(kw, cohort, match):
    with pytest.raises(SecAggError, match=match):
        secagg.setup(SecureAggregation(**kw), cohort, seed=0)


def test_wrong_shapes_raise_a_named_error():
    s = _setup(20, 6)
    with pytest.raises(SecAggError, match=r"vectors must be \[C, d\] with C = 20"):
        secagg.mask(s, jnp.zeros((19, 3), jnp.float32), KEY)


def test_a_modulus_below_2_to_the_32():
    s = _setup(8, 4, bits=20)
    assert s.levels == (2**20 - 1) // 8  # the largest odd number of levels that fits
    x = _vectors(s, seed=7)
    masked, q = MASK(s, x, KEY), QUANTIZE(s, x, KEY)
    assert int(np.asarray(masked).max()) < 2**20 and int(np.asarray(masked).max()) >= 2**19
    self_masks = np.asarray(secagg._prg(s.self_seeds, secagg._round_words(KEY)[secagg._SELF], D))
    pair_sum = (_sum_mod(masked, 20) + 2**20 - _sum_mod(self_masks, 20)) % 2**20
    np.testing.assert_array_equal(pair_sum, _sum_mod(q, 20))
    reported = np.arange(8) != 3
    total, ok = UNMASK(s, masked, jnp.asarray(reported), KEY)
    assert bool(ok)
    np.testing.assert_array_equal(np.asarray(total, np.uint64), _sum_mod(q, 20, reported))
    out = secagg.decode(s, total, jnp.sum(jnp.asarray(reported), dtype=jnp.int32))
    step = 2 * s.config.clip / (s.levels - 1)
    assert np.abs(np.asarray(out) - np.asarray(x)[reported].sum(axis=0)).max() <= 7 * step
