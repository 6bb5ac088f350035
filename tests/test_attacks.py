"""The Byzantine attacks (fedmtl.attacks): who attacks, each upload attack against a NumPy
reference on a hand-made uploads pytree, label flipping through the engine's training data,
named errors, and the "attackers" history of a run.
"""

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import BASE, CLASSES, DIM, data

from fedmtl import algorithms, attacks
from fedmtl.attacks import AttackError
from fedmtl.data import FederatedData
from fedmtl.engine import Engine
from fedmtl.models import MLP

KEY = jax.random.key(3)


@pytest.mark.parametrize("fraction, nodes", [(0.0, 7), (0.2, 10), (0.25, 7), (0.5, 5),
                                             (0.3, 30), (0.99, 4)])
def test_attackers_are_round_f_n_nodes_drawn_from_the_seed(fraction, nodes):
    mask = attacks.attackers(fraction, nodes, seed=4)
    assert mask.shape == (nodes,) and mask.dtype == bool
    assert mask.sum() == round(fraction * nodes)
    np.testing.assert_array_equal(mask, attacks.attackers(fraction, nodes, seed=4))


def test_other_seeds_pick_other_attackers():
    masks = {tuple(attacks.attackers(0.3, 30, seed)) for seed in range(5)}
    assert len(masks) > 1


# A hand-made round: 6 slots, float leaves of two shapes and an integer leaf; slot 4 did not
# report; slots 1, 3 attack and report (the engine passes attackers[ids] & (weights > 0)).
W = np.array([2.0, 1.0, 3.0, 1.0, 0.0, 1.0], np.float32)
ATTACKING = np.array([False, True, False, True, False, False])
UPLOADS = {
    "a": np.arange(18, dtype=np.float32).reshape(6, 3) / 4 - 1,
    "b": np.array([[[1.0, -2.0]], [[0.5, 4.0]], [[3.0, 0.0]], [[-1.0, 1.0]], [[9.0, 9.0]],
                   [[2.0, 2.0]]], np.float32),
    "n": np.arange(6, dtype=np.int32),  # e.g. a step count: never touched
}


def corrupt(attack):
    out = jax.jit(attack.corrupt)(jax.tree.map(jnp.asarray, UPLOADS), jnp.asarray(W),
                                  jnp.asarray(ATTACKING), KEY)
    out = jax.tree.map(np.asarray, out)
    np.testing.assert_array_equal(out["n"], UPLOADS["n"])
    assert out["n"].dtype == np.int32
    for k in ("a", "b"):  # only attacking reporters change
        np.testing.assert_array_equal(out[k][~ATTACKING], UPLOADS[k][~ATTACKING])
        assert out[k].dtype == np.float32
    return out


@pytest.mark.parametrize("attack, factor", [
    (attacks.sign_flip(0.2), -1.0), (attacks.sign_flip(0.2, scale=3.0), -3.0),
    (attacks.scaled(0.2), 10.0), (attacks.scaled(0.2, scale=0.5), 0.5),
])
def test_sign_flip_and_scaled_multiply_the_attackers_uploads(attack, factor):
    out = corrupt(attack)
    for k in ("a", "b"):
        np.testing.assert_allclose(out[k][ATTACKING], factor * UPLOADS[k][ATTACKING])


def test_gaussian_sends_noise_of_the_given_std():
    out = corrupt(attacks.gaussian(0.2, std=2.0))
    for i, k in enumerate(("a", "b")):  # leaf i's noise comes from fold_in(key, i)
        noise = 2.0 * np.asarray(jax.random.normal(jax.random.fold_in(KEY, i),
                                                   UPLOADS[k].shape))
        np.testing.assert_allclose(out[k][ATTACKING], noise[ATTACKING], rtol=1e-6)
    assert not np.allclose(out["a"][ATTACKING], UPLOADS["a"][ATTACKING])
    np.testing.assert_array_equal(corrupt(attacks.gaussian(0.2, std=0.0))["a"][ATTACKING], 0)


def _lie_reference(z=None):
    reported = W > 0
    honest = reported & ~ATTACKING
    n, f = reported.sum(), (ATTACKING & reported).sum()
    if z is None:  # Baruch et al. 2019: s = floor(n/2 + 1) - f, z = Phi^-1((n - s) / n)
        s = np.floor(n / 2 + 1) - f
        z = statistics.NormalDist().inv_cdf((n - s) / n)
    return {k: UPLOADS[k][honest].mean(axis=0) - z * UPLOADS[k][honest].std(axis=0)
            for k in ("a", "b")}, z


@pytest.mark.parametrize("z", [None, 1.5])
def test_little_is_enough_sends_mu_minus_z_sigma(z):
    """5 reporters, 2 of them attack, so s = 1 and z = Phi^-1(4/5) ~ 0.84."""
    out = corrupt(attacks.little_is_enough(0.2, z=z))
    want, zz = _lie_reference(z)
    if z is None:
        assert zz == pytest.approx(0.8416, abs=1e-4)
    for k in ("a", "b"):
        for row in np.flatnonzero(ATTACKING):
            np.testing.assert_allclose(out[k][row], want[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", [attacks.sign_flip, attacks.scaled, attacks.gaussian,
                                     attacks.little_is_enough, attacks.label_flip])
@pytest.mark.parametrize("fraction", [-0.1, 1.0, float("nan")])
def test_bad_fractions_name_the_attack(factory, fraction):
    with pytest.raises(AttackError, match=f"{factory.__name__}: the attackers' fraction must "
                       r"be in \[0, 1\)"):
        factory(fraction)


def test_negative_noise_is_refused():
    with pytest.raises(AttackError, match="gaussian: std must be >= 0"):
        attacks.gaussian(0.1, std=-1.0)


def _local():
    return algorithms.local(MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0)), local_optimizer=0.1)


def test_label_flip_flips_the_attackers_training_labels_only():
    tiny = data()
    engine = Engine(_local(), tiny, BASE._replace(attack=attacks.label_flip(0.4)))
    who = attacks.attackers(0.4, tiny.num_nodes, BASE.seed)
    assert who.sum() == 2
    rows = np.repeat(who, tiny.train.counts)
    y = np.asarray(engine.train.y)[engine.train_rows]  # laid out by place -> data order
    np.testing.assert_array_equal(y[rows], CLASSES - 1 - tiny.train.y[rows])
    np.testing.assert_array_equal(y[~rows], tiny.train.y[~rows])
    assert y.dtype == tiny.train.y.dtype
    np.testing.assert_array_equal(np.asarray(engine.test.y)[engine.test_rows], tiny.test.y)


def test_label_flip_on_regression_is_refused():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(8, DIM)).astype(np.float32) for _ in range(3)]
    ys = [rng.normal(size=8).astype(np.float32) for _ in range(3)]
    regression = FederatedData.from_nodes(xs, ys, task="regression")
    model = MLP(DIM, (8,), 1, rngs=nnx.Rngs(0))
    with pytest.raises(AttackError, match="label_flip: flips class labels; the data's task "
                       "is regression"):
        Engine(algorithms.local(model, local_optimizer=0.1), regression,
               BASE._replace(attack=attacks.label_flip(0.3)))


def test_a_run_under_an_upload_attack_records_the_attackers():
    """local uploads nothing, so the run is cheap, yet the engine counts the attacking
    reporters of every round: 2 of the 5 nodes, all of which report."""
    engine = Engine(_local(), data(), BASE._replace(attack=attacks.sign_flip(0.4)))
    _, history = engine.run(engine.init(), 2)
    np.testing.assert_array_equal(history["attackers"], [2, 2])
