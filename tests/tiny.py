"""The tiny federated problem most tests share (one shape, so compiled programs are reused
across test modules through the session's compilation cache), and tree comparisons.

5 nodes of 5-16 examples (train 4, 4, 10, 11, 12: 1, 1, 3, 3, 3 steps at B = 4), 4 features,
3 classes, an MLP with 8 hidden units.
"""

import jax
import numpy as np
from flax import nnx

from fedmtl.data import FederatedData
from fedmtl.engine import Federation
from fedmtl.models import MLP

SIZES = (5, 6, 14, 15, 16)
DIM, CLASSES = 4, 3
# rounds_per_sync=1: every run compiles the same one-round scan, whatever the round count
BASE = Federation(rounds=2, batch_size=4, finetune_steps=2, seed=0, rounds_per_sync=1)


def data(sizes=SIZES, seed: int = 0, names=None) -> FederatedData:
    """Gaussian features and uniform labels, node by node."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, DIM)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, CLASSES, n).astype(np.int32) for n in sizes]
    return FederatedData.from_nodes(xs, ys, num_classes=CLASSES, seed=seed, names=names)


def mlp(norm: str | None = None) -> MLP:
    return MLP(DIM, (8,), CLASSES, norm=norm, rngs=nnx.Rngs(0))


def host_copy(tree):
    """A host copy (the engine donates its input state, so keep no device references)."""
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
