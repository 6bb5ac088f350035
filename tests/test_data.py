"""FederatedData: validation names the node and field, seeded splits lose nothing, padding
masks; Synthetic(α, β): seeded, shaped and sized as in FedProx."""

import numpy as np
import pytest

from fedmtl.data import FederatedData, FederatedDataError
from fedmtl.synthetic import node_sizes, synthetic


def _nodes(sizes=(6, 9, 4), dim=3, classes=3, seed=0):
    """Per-node arrays whose column 0 is a globally unique example id (to trace rows)."""
    rng = np.random.default_rng(seed)
    xs, ys, start = [], [], 0
    for n in sizes:
        ids = np.arange(start, start + n)
        start += n
        xs.append(np.column_stack([ids, rng.normal(size=(n, dim - 1))]).astype(np.float32))
        ys.append(rng.integers(0, classes, n).astype(np.int32))
    return xs, ys


def _rows(split, k):
    """Node k's (x, y) rows of a split as a sorted list of tuples (a multiset)."""
    x, y = split.node(k)
    return sorted(zip(map(tuple, x.tolist()), y.tolist(), strict=True))


# ----- validation -----


def _raises(match, *args, **kwargs):
    with pytest.raises(FederatedDataError, match=match):
        FederatedData.from_nodes(*args, **kwargs)


def test_length_mismatch_names_node_and_field():
    xs, ys = _nodes()
    ys[1] = ys[1][:-2]
    _raises(r"node 1\b.*x has 9 rows but y has 7", xs, ys)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_name_node_field_and_row(bad):
    xs, ys = _nodes()
    xs[2][3, 1] = bad
    _raises(r"node 2\b.*field x.*row 3\b", xs, ys)


def test_non_finite_regression_target_names_node_and_row():
    xs, _ = _nodes()
    ys = [np.zeros(len(x), np.float32) for x in xs]
    ys[1][5] = np.nan
    _raises(r"node 1\b.*field y.*row 5\b", xs, ys)


def test_node_without_examples():
    xs, ys = _nodes()
    xs[1], ys[1] = xs[1][:0], ys[1][:0]
    _raises(r"node 1\b.*no examples", xs, ys)


def test_label_out_of_range_names_node_split_and_label():
    xs, ys = _nodes()
    ys[2][0] = 7
    _raises(r"node 2 \((train|test)\), field y: label 7 out of range \[0, 3\)", xs, ys,
            num_classes=3)
    ys[2][0] = -1
    _raises(r"node 2 \((train|test)\), field y: label -1 out of range", xs, ys)


def test_float_labels_for_classification():
    xs, ys = _nodes()
    ys = [y.astype(np.float32) for y in ys]
    _raises(r"node 0 \(train\), field y: classification labels must be integers", xs, ys,
            task="classification")


def test_float_labels_in_one_node_only():
    xs, ys = _nodes()
    ys[1] = ys[1].astype(np.float64)
    _raises(r"node 1 \(train\), field y.*integers", xs, ys, task="classification")


def test_zero_nodes():
    _raises("no nodes", [], [])
    with pytest.raises(FederatedDataError, match="no nodes"):
        FederatedData.from_splits([], [], [], [])


def test_feature_shape_mismatch_names_node():
    xs, ys = _nodes()
    xs[2] = xs[2][:, :2]
    _raises(r"node 2\b.*field x.*feature shape", xs, ys)


def test_test_fraction_leaving_no_training_example():
    xs, ys = _nodes(sizes=(6, 1, 5))
    _raises(r"node 1\b.*no training example", xs, ys, test_fraction=0.25)
    # the same node is fine without a test split
    data = FederatedData.from_nodes(xs, ys, test_fraction=0.0)
    np.testing.assert_array_equal(data.train.counts, [6, 1, 5])
    np.testing.assert_array_equal(data.test.counts, [0, 0, 0])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_test_fraction(fraction):
    xs, ys = _nodes()
    _raises("test_fraction", xs, ys, test_fraction=fraction)


def test_from_flat_length_mismatch():
    with pytest.raises(FederatedDataError, match="same length"):
        FederatedData.from_flat(np.zeros((5, 2)), np.zeros(4, np.int32), np.zeros(5))


# ----- construction -----


def test_from_flat_groups_by_node_id():
    rng = np.random.default_rng(3)
    total = 60
    ids = rng.choice(np.array([7, 2, 11, 5]), size=total)
    x = np.column_stack([np.arange(total), rng.normal(size=total)]).astype(np.float32)
    y = rng.integers(0, 4, total).astype(np.int32)
    data = FederatedData.from_flat(x, y, ids, test_fraction=0.3, seed=1, num_classes=4)
    assert data.names == ("2", "5", "7", "11")  # distinct ids, sorted numerically
    for k, node_id in enumerate([2, 5, 7, 11]):
        got = _rows(data.train, k) + _rows(data.test, k)
        want = list(zip(map(tuple, x[ids == node_id].tolist()), y[ids == node_id].tolist(),
                        strict=True))
        assert sorted(got) == sorted(want)


def test_split_keeps_every_example_exactly_once():
    xs, ys = _nodes(sizes=(13, 8, 21, 5))
    data = FederatedData.from_nodes(xs, ys, test_fraction=0.3, seed=4)
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        got = _rows(data.train, k) + _rows(data.test, k)
        assert sorted(got) == sorted(zip(map(tuple, x.tolist()), y.tolist(), strict=True))
        n_test = max(1, round(0.3 * len(x)))
        assert (data.train.counts[k], data.test.counts[k]) == (len(x) - n_test, n_test)
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int32


def test_split_is_seeded():
    xs, ys = _nodes(sizes=(30, 25, 40))
    a = FederatedData.from_nodes(xs, ys, seed=5)
    b = FederatedData.from_nodes(xs, ys, seed=5)
    c = FederatedData.from_nodes(xs, ys, seed=6)
    for s in ("train", "test"):
        np.testing.assert_array_equal(getattr(a, s).x, getattr(b, s).x)
        np.testing.assert_array_equal(getattr(a, s).y, getattr(b, s).y)
    test_ids = lambda d: [set(d.test.node(k)[0][:, 0].tolist()) for k in range(3)]
    assert test_ids(a) != test_ids(c)


def test_padded_masks():
    xs, ys = _nodes(sizes=(5, 2, 4))
    data = FederatedData.from_nodes(xs, ys, test_fraction=0.0)
    x, y, mask = data.padded("train")
    assert x.shape == (3, 5, 3) and y.shape == (3, 5) and mask.shape == (3, 5)
    np.testing.assert_array_equal(mask.sum(axis=1), [5, 2, 4])
    for k in range(3):
        n = data.train.counts[k]
        assert mask[k, :n].all() and not mask[k, n:].any()
        np.testing.assert_array_equal(x[k, :n], data.train.node(k)[0])
        np.testing.assert_array_equal(y[k, :n], data.train.node(k)[1])
        assert (x[k, n:] == 0).all() and (y[k, n:] == 0).all()
    x7, _, mask7 = data.padded("train", length=7)
    assert x7.shape == (3, 7, 3) and mask7.sum() == 11
    np.testing.assert_array_equal(x7[:, :5], x)
    with pytest.raises(ValueError, match="shorter"):
        data.padded("train", length=4)
    # a chosen subset of nodes, in the given order
    xs_, _, m_ = data.train.padded(6, nodes=[2, 0])
    np.testing.assert_array_equal(m_.sum(axis=1), [4, 5])
    np.testing.assert_array_equal(xs_[0, :4], data.train.node(2)[0])


def test_padded_split_without_rows():
    """test_fraction=0 leaves a test split with no row at all; padding it (as the engine does,
    to at least one row) must give all-masked zeros, not an IndexError."""
    xs, ys = _nodes(sizes=(5, 2, 4))
    data = FederatedData.from_nodes(xs, ys, test_fraction=0.0)
    assert data.test.x.shape == (0, 3)
    x, y, mask = data.test.padded(3)
    assert x.shape == (3, 3, 3) and y.shape == (3, 3) and mask.shape == (3, 3)
    assert not mask.any() and (x == 0).all() and (y == 0).all()


# ----- Synthetic(α, β) -----


def test_synthetic_is_seeded_and_shaped():
    a = synthetic(1.0, 1.0, num_nodes=6, max_size=120, seed=3)
    b = synthetic(1.0, 1.0, num_nodes=6, max_size=120, seed=3)
    c = synthetic(1.0, 1.0, num_nodes=6, max_size=120, seed=4)
    assert a.feature_shape == (60,) and a.num_classes == 10 and a.num_nodes == 6
    assert a.task == "classification"
    for s in ("train", "test"):
        np.testing.assert_array_equal(getattr(a, s).x, getattr(b, s).x)
        np.testing.assert_array_equal(getattr(a, s).y, getattr(b, s).y)
        np.testing.assert_array_equal(getattr(a, s).counts, getattr(b, s).counts)
    assert not np.array_equal(a.train.x[:10], c.train.x[:10])
    assert a.train.y.min() >= 0 and a.train.y.max() < 10


def test_synthetic_node_sizes_and_cap():
    free = synthetic(0.5, 0.5, num_nodes=20, seed=1)
    sizes = free.train.counts + free.test.counts
    assert (sizes >= 50).all()
    expected = node_sizes(20, np.random.default_rng(1))  # the generator draws sizes first
    np.testing.assert_array_equal(sizes, expected)
    cap = 70
    capped = synthetic(0.5, 0.5, num_nodes=20, seed=1, max_size=cap)
    np.testing.assert_array_equal(capped.train.counts + capped.test.counts,
                                  np.minimum(sizes, cap))
    assert sizes.max() > cap  # the cap did bind somewhere


def test_synthetic_iid_shares_one_labelling_function():
    """In the IID variant every node labels with the same (W, b): rebuild it from the seed
    (the generator draws node sizes, then W, then b) and check every node's labels."""
    seed, nodes, dim, classes = 2, 5, 60, 10
    data = synthetic(0.0, 0.0, num_nodes=nodes, iid=True, max_size=100, seed=seed)
    rng = np.random.default_rng(seed)
    node_sizes(nodes, rng, 100)
    w = rng.normal(0, 1, (dim, classes))
    b = rng.normal(0, 1, classes)
    for k in range(nodes):
        for split in (data.train, data.test):
            x, y = split.node(k)
            # x was drawn in float64 and stored as float32: allow a rare near-tie to flip
            agree = np.mean(np.argmax(x.astype(np.float64) @ w + b, axis=1) == y)
            assert agree >= 0.98, (k, agree)
    # ... whereas the non-IID variant gives each node its own labelling function
    non_iid = synthetic(1.0, 0.0, num_nodes=nodes, max_size=100, seed=seed)
    x, y = non_iid.train.x, non_iid.train.y
    assert np.mean(np.argmax(x.astype(np.float64) @ w + b, axis=1) == y) < 0.5
