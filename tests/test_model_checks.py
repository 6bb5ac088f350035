"""Models are checked against the data before training: a mismatch is a named one-line error,
not a `dot_general` traceback or a "non-finite loss" mid-run. Shapes only: nothing trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fedmtl import algorithms
from fedmtl.data import FederatedData
from fedmtl.engine import Engine, Federation
from fedmtl.models import MLP, Conv1D, Model, ModelDataMismatch, build, check_model

DIM, CLASSES = 4, 3


def _data(feature_shape=(DIM,), task="classification", target_shape=()):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, *feature_shape)).astype(np.float32) for n in (5, 6)]
    if task == "classification":
        ys = [rng.integers(0, CLASSES, n).astype(np.int32) for n in (5, 6)]
        return FederatedData.from_nodes(xs, ys, num_classes=CLASSES)
    ys = [rng.normal(size=(n, *target_shape)).astype(np.float32) for n in (5, 6)]
    return FederatedData.from_nodes(xs, ys, task="regression")


class _Outputs(nnx.Module):
    """A linear layer followed by `post`, to produce outputs of any shape or dtype."""

    def __init__(self, num_outputs, post):
        self.head = nnx.Linear(DIM, num_outputs, rngs=nnx.Rngs(0))
        self.post = post

    def __call__(self, x):
        return self.post(self.head(x))


def test_model_input_width_mismatch_is_named_before_training():
    algo = algorithms.fedavg(MLP(DIM + 1, (8,), CLASSES, rngs=nnx.Rngs(0)))
    with pytest.raises(ModelDataMismatch,
                       match=r"^MLP does not accept features of shape \(4,\) \(the data's "
                             r"feature_shape\): \S") as info:
        Engine(algo, _data(), Federation(rounds=1))
    assert "\n" not in str(info.value)  # the CLI prints it as one line


def test_model_output_count_mismatch_is_named():
    algo = algorithms.fedper(MLP(DIM, (8,), 5, rngs=nnx.Rngs(0)))
    with pytest.raises(ModelDataMismatch,
                       match=r"^MLP outputs 5 values per example .* but the data has 3 classes; "
                             r"expected \[B, 3\] logits$"):
        Engine(algo, _data(), Federation(rounds=1))


@pytest.mark.parametrize(
    "num_outputs, post, match",
    [
        (CLASSES, lambda y: jnp.argmax(y, axis=-1), r"outputs dtype int32; expected floating"),
        (CLASSES, lambda y: jnp.mean(y, axis=0), r"outputs shape \(3,\) for a batch of 2 "),
        (CLASSES, lambda y: y[:, :, None], r"outputs 3 values per example \(shape \(2, 3, 1\)"),
        (CLASSES, lambda y: (y, y), r"returns a tuple; expected one array"),
    ],
    ids=["int", "no batch axis", "rank 3", "tuple"],
)
def test_classification_outputs_must_be_float_batch_by_classes(num_outputs, post, match):
    with pytest.raises(ModelDataMismatch, match=match):
        check_model(Model.of(_Outputs(num_outputs, post)), _data())


def test_regression_outputs_must_match_the_targets():
    scalar = _data(task="regression")
    for ok in (_Outputs(1, lambda y: y), _Outputs(1, lambda y: y[:, 0])):  # [B, 1] and [B]
        check_model(Model.of(ok), scalar)
    with pytest.raises(ModelDataMismatch,
                       match=r"outputs 3 values per example .* regression targets have 1; "
                             r"expected \[B\] or \[B, 1\]$"):
        check_model(Model.of(_Outputs(3, lambda y: y)), scalar)
    check_model(Model.of(_Outputs(2, lambda y: y)), _data(task="regression", target_shape=(2,)))


@pytest.mark.parametrize("name, feature_shape", [("logreg", (DIM,)), ("mlp", (DIM,)),
                                                 ("mlp", (3, 2)), ("conv1d", (12, 2))])
def test_built_in_models_fit_their_data(name, feature_shape):
    check_model(Model.of(build(name, feature_shape, CLASSES)), _data(feature_shape))


@pytest.mark.parametrize("length", [128, 127, 30, 5])
@pytest.mark.parametrize("norm", [None, "layer"])
def test_conv1d_equals_its_layers_own_convolution(length, norm):
    """Conv1D convolves as one gather and einsum (`conv1d_same`, fast inside the engine's
    loop on a CPU); it must equal calling its `nnx.Conv` layers (lax.conv, SAME padding)."""
    module = Conv1D(9, 6, norm=norm, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, length, 9)), jnp.float32)
    h = x
    for i, layer in enumerate(module.body):
        h = layer(h)
        h = jax.nn.relu(h if norm is None else module.norms[i](h))
    want = module.head(jnp.mean(h, axis=1))
    np.testing.assert_allclose(np.asarray(module(x)), np.asarray(want), rtol=1e-5, atol=1e-6)
