"""Training losses by name: the multiclass hinge (Crammer & Singer) and squared loss by hand,
the binary hinge is the SVM hinge on the margin s1 - s0, a trainer minimises the loss it is
given, every factory takes `loss` (and names an unknown one), and the default is unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fedmtl import algorithms
from fedmtl.algorithms import for_node
from fedmtl.models import MLP, LogisticRegression, Model
from fedmtl.objectives import LOSSES, example_losses, masked_mean_loss
from fedmtl.training import Batch, trainer

LOGITS = np.array([[2.0, 1.5, -1.0],    # y=0: rival 1.5 -> 1 + 1.5 - 2 = 0.5
                   [0.0, 3.0, 1.0],     # y=1: rival 1.0 -> 1 + 1 - 3 < 0 -> 0
                   [1.0, 2.0, 0.5],     # y=2: rival 2.0 -> 1 + 2 - 0.5 = 2.5
                   [0.3, 0.3, 0.3]],    # y=0: ties -> 1
                  np.float32)
LABELS = np.array([0, 1, 2, 0], np.int32)


def test_multiclass_hinge_by_hand():
    got = example_losses("classification", jnp.asarray(LOGITS), jnp.asarray(LABELS),
                         loss="hinge")
    np.testing.assert_allclose(np.asarray(got), [0.5, 0.0, 2.5, 1.0], rtol=1e-6)


def test_binary_hinge_is_the_svm_hinge_on_the_margin():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(50, 2)).astype(np.float32) * 2
    y = rng.integers(0, 2, 50).astype(np.int32)
    got = example_losses("classification", jnp.asarray(s), jnp.asarray(y), loss="hinge")
    sign = 2.0 * y - 1.0
    want = np.maximum(0.0, 1.0 - sign * (s[:, 1] - s[:, 0]))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_squared_loss_on_one_hot_targets_by_hand():
    got = example_losses("classification", jnp.asarray(LOGITS), jnp.asarray(LABELS),
                         loss="squared")
    onehot = np.eye(3, dtype=np.float32)[LABELS]
    np.testing.assert_allclose(np.asarray(got), np.mean((LOGITS - onehot) ** 2, axis=1),
                               rtol=1e-6)


def test_default_and_cross_entropy_are_softmax_cross_entropy():
    x, y = jnp.asarray(LOGITS), jnp.asarray(LABELS)
    want = optax.softmax_cross_entropy_with_integer_labels(x, y)
    for loss in (None, "cross_entropy"):
        np.testing.assert_array_equal(np.asarray(example_losses("classification", x, y,
                                                                loss=loss)), np.asarray(want))


def test_class_weights_and_mask_apply_to_any_loss():
    x, y = jnp.asarray(LOGITS), jnp.asarray(LABELS)
    w = jnp.asarray([2.0, 1.0, 0.5])
    mask = jnp.asarray([True, True, True, False])
    got = masked_mean_loss("classification", x, y, mask, w, loss="hinge")
    assert float(got) == pytest.approx((2.0 * 0.5 + 0.0 + 0.5 * 2.5) / 3)


def test_unknown_loss_and_classification_loss_for_regression_are_errors():
    x, y = jnp.asarray(LOGITS), jnp.asarray(LABELS)
    with pytest.raises(ValueError, match=r"unknown loss 'svm'; choose one of cross_entropy"):
        example_losses("classification", x, y, loss="svm")
    with pytest.raises(ValueError, match="applies to classification only"):
        example_losses("regression", jnp.zeros(4), jnp.zeros(4), loss="hinge")
    # a regression task's own loss may be named
    np.testing.assert_array_equal(
        np.asarray(example_losses("regression", jnp.ones(4), jnp.zeros(4), loss="squared")),
        np.ones(4))
    with pytest.raises(ValueError, match="unknown loss"):
        trainer(lambda p, x: x, optax.sgd(0.1), loss="Hinge")


def _separable(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    x = x + (2 * y[:, None] - 1) * np.array([0.5, 0.25], np.float32)  # a margin around 0
    return jnp.asarray(x), jnp.asarray(y)


def _train(loss, steps=60, lr=0.2):
    model = Model.of(LogisticRegression(2, 2, rngs=nnx.Rngs(0)), personal=True)
    train = trainer(lambda p, x: model.apply(model.shared, p, x), optax.sgd(lr), loss=loss)
    x, y = _separable()
    batch = Batch(x, y, jnp.ones(len(y), bool))
    step = jax.jit(lambda s: train.step(s, batch, jax.random.key(0), "classification"))
    state, losses = train.init(model.personal), []
    for _ in range(steps):
        state, reported = step(state)
        losses.append(float(reported))
    return model, state, losses, (x, y)


def test_trainer_with_hinge_minimises_the_hinge():
    model, state, losses, (x, y) = _train("hinge")
    outputs = model.apply(model.shared, state.params, x)
    final = float(masked_mean_loss("classification", outputs, y, jnp.ones(len(y), bool),
                                   loss="hinge"))
    assert losses[0] > 0.5  # the step reports the hinge of the parameters it starts from
    assert final < 0.1 * losses[0]
    assert losses[-1] <= losses[len(losses) // 2] < losses[0]
    assert float(jnp.mean(jnp.argmax(outputs, -1) == y)) == 1.0


def test_trainer_default_is_unchanged():
    """loss=None takes exactly the steps of "cross_entropy", which are plain SGD on the mean
    softmax cross-entropy."""
    _, default, d_losses, (x, y) = _train(None, steps=5)
    _, named, n_losses, _ = _train("cross_entropy", steps=5)
    for a, b in zip(jax.tree.leaves(default.params), jax.tree.leaves(named.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert d_losses == n_losses
    model = Model.of(LogisticRegression(2, 2, rngs=nnx.Rngs(0)), personal=True)

    def ce(p):
        out = model.apply(model.shared, p, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))

    params = model.personal
    for _ in range(5):
        params = jax.tree.map(lambda p, g: p - 0.2 * g, params, jax.grad(ce)(params))
    for a, b in zip(jax.tree.leaves(default.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _mlp(name: str) -> MLP:
    """A small MLP, with normalization layers for FedBN (whose personal part they are)."""
    return MLP(3, (4,), 2, norm="layer" if name == "fedbn" else None, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", sorted(algorithms.ALGORITHMS))
def test_every_factory_names_an_unknown_loss(name):
    module = _mlp(name)
    with pytest.raises(algorithms.AlgorithmError, match=rf"^{name}: unknown loss 'svm'; "):
        algorithms.ALGORITHMS[name](module, loss="svm")


@pytest.mark.parametrize("loss", [None, *LOSSES])
@pytest.mark.parametrize("name", sorted(algorithms.ALGORITHMS))
def test_every_factory_trains_on_the_loss_it_is_given(name, loss):
    """A node's first step reports its loss at the start parameters: the named loss of the
    model it starts from (for Ditto, the global model's)."""
    algo = algorithms.ALGORITHMS[name](_mlp(name), loss=loss)
    key = jax.random.key(0)
    received = for_node(algo.broadcast(algo.init(key, 2)), 0)
    node = algo.init_node(key)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(6, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 2, 6).astype(np.int32))
    _, reported = algo.step(algo.start(received, node), Batch(x, y, jnp.ones(6, bool)), key,
                            "classification")
    kinds = algo.models(received, node)
    shared, personal = kinds.get("global", next(iter(kinds.values())))
    want = jnp.mean(example_losses("classification", algo.model.apply(shared, personal, x), y,
                                   loss=loss))
    assert float(reported) == pytest.approx(float(want), rel=1e-5)
