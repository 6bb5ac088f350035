"""Partitioners: no example lost or duplicated, seeded, and the skew each one promises."""

import numpy as np
import pytest

from fedmtl import partition

NUM_CLASSES = 10


def _data(n=1000, seed=0, balanced=False):
    """x whose column 0 is the example's index (to trace it through a partition), labels y."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % NUM_CLASSES if balanced else rng.integers(0, NUM_CLASSES, n)
    x = np.column_stack([np.arange(n), rng.normal(size=(n, 3))]).astype(np.float32)
    return x, y.astype(np.int32)


PARTITIONS = [
    lambda x, y, s: partition.dirichlet(x, y, 7, alpha=0.3, seed=s),
    lambda x, y, s: partition.dirichlet(x, y, 5, alpha=0.05, seed=s, balance=False),
    lambda x, y, s: partition.shards(x, y, 12, classes_per_node=2, seed=s),
    lambda x, y, s: partition.quantity_skew(x, y, 9, sigma=1.5, seed=s),
]


@pytest.mark.parametrize("make", PARTITIONS, ids=["dirichlet", "dirichlet-raw", "shards", "qty"])
def test_no_loss_or_duplication(make):
    x, y = _data()
    data = make(x, y, 0)
    xs = np.concatenate([data.train.x, data.test.x])
    ys = np.concatenate([data.train.y, data.test.y])
    idx = xs[:, 0].astype(np.int64)
    np.testing.assert_array_equal(np.sort(idx), np.arange(len(x)))  # each example exactly once
    order = np.argsort(idx)
    np.testing.assert_array_equal(xs[order], x)  # rows intact
    np.testing.assert_array_equal(ys[order], y)  # labels still with their rows
    assert data.task == "classification" and data.num_classes == NUM_CLASSES


@pytest.mark.parametrize("make", PARTITIONS, ids=["dirichlet", "dirichlet-raw", "shards", "qty"])
def test_seeded(make):
    x, y = _data()
    a, b, c = make(x, y, 3), make(x, y, 3), make(x, y, 4)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert not np.array_equal(a.train.x[:, 0], c.train.x[:, 0])


def _is_partition(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


def test_index_partitions_cover_every_example_once():
    _, y = _data(n=537, seed=1)
    for parts in (
        partition.dirichlet_indices(y, 10, alpha=0.1, seed=0),
        partition.dirichlet_indices(y, 3, alpha=100.0, seed=1, min_size=50),
        partition.shard_indices(y, 20, classes_per_node=3, seed=2),
        partition.shard_indices(y, 1, classes_per_node=NUM_CLASSES, seed=2),
        partition.quantity_skew_indices(537, 25, sigma=2.0, seed=3),
        partition.quantity_skew_indices(537, 537, sigma=1.0, seed=3, min_size=1),
    ):
        assert _is_partition(parts, 537)


def test_dirichlet_skew():
    _, y = _data(n=2000, balanced=True)

    def major_classes(alpha):
        """Mean number of classes per node holding at least 5% of the node's examples."""
        parts = partition.dirichlet_indices(y, 5, alpha=alpha, seed=0)
        return np.mean([(np.bincount(y[p], minlength=10) >= 0.05 * len(p)).sum() for p in parts])

    assert major_classes(0.01) < 4  # each node dominated by a few classes
    assert major_classes(1000.0) == NUM_CLASSES  # near IID
    parts = partition.dirichlet_indices(y, 5, alpha=0.01, seed=0, min_size=30)
    assert min(len(p) for p in parts) >= 30


def test_shards_classes_per_node():
    y = np.repeat(np.arange(NUM_CLASSES), [5, 300, 17, 80, 80, 80, 1, 200, 33, 9])  # imbalanced
    for cpn in (1, 2, 3):
        parts = partition.shard_indices(y, 10, classes_per_node=cpn, seed=0)
        assert _is_partition(parts, len(y))
        assert max(len(np.unique(y[p])) for p in parts) <= cpn
    # Balanced classes, 2 shards per node: every shard is one class, of equal size.
    _, yb = _data(n=1000, balanced=True)
    parts = partition.shard_indices(yb, 50, classes_per_node=2, seed=0)
    assert {len(p) for p in parts} == {20}
    assert all(len(np.unique(yb[p])) <= 2 for p in parts)


def test_quantity_skew_sizes():
    equal = partition.quantity_skew_indices(1000, 7, sigma=0.0, seed=0)
    assert {len(p) for p in equal} <= {142, 143}
    skewed = [len(p) for p in partition.quantity_skew_indices(10000, 20, sigma=2.0, seed=0)]
    assert max(skewed) > 20 * min(skewed) and min(skewed) >= 2
    x = np.arange(100, dtype=np.float32)[:, None]
    data = partition.quantity_skew(x, x[:, 0] * 2.0, 4, sigma=1.0, seed=0, task="regression")
    assert data.task == "regression"


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda y: partition.dirichlet_indices(y, 3, alpha=0.0), "alpha"),
        (lambda y: partition.dirichlet_indices(y, 3, alpha=-1.0), "alpha"),
        (lambda y: partition.dirichlet_indices(y, 50, alpha=1.0), "num_nodes"),
        (lambda y: partition.dirichlet_indices(y, 0, alpha=1.0), "num_nodes"),
        (lambda y: partition.dirichlet_indices(y, 5, alpha=1.0, min_size=-1), "min_size"),
        (lambda y: partition.dirichlet_indices(y, 5, alpha=1e-3, min_size=5), "alpha"),
        (lambda y: partition.shard_indices(y, 3, classes_per_node=0), "classes_per_node"),
        (lambda y: partition.shard_indices(y, 1, classes_per_node=2), "classes_per_node"),
        (lambda y: partition.shard_indices(y, 20, classes_per_node=3), "examples"),
        (lambda y: partition.quantity_skew_indices(len(y), 3, sigma=-0.5), "sigma"),
        (lambda y: partition.quantity_skew_indices(len(y), 31, sigma=1.0, min_size=1), "num_nodes"),
        (lambda y: partition.dirichlet_indices(y[:, None], 3, alpha=1.0), "y"),
    ],
)
def test_bad_arguments(call, name):
    y = np.arange(30) % 3
    with pytest.raises(ValueError, match=name):
        call(y)


def test_mismatched_x_and_y():
    with pytest.raises(ValueError, match="x has"):
        partition.dirichlet(np.zeros((10, 2)), np.arange(12) % 2, 2, alpha=1.0)
