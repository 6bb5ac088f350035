"""The chunked generators and construction are bit-identical to the per-node loops they
replaced (kept here as the reference), whatever the chunking."""

import importlib

import numpy as np
import pytest

from fedmtl.data import FederatedData, FederatedDataError
from fedmtl.synthetic import node_sizes, planted_groups, synthetic

data_module = importlib.import_module("fedmtl.data_ragged")  # owns CHUNK_BYTES (re-exported)
synthetic_module = importlib.import_module("fedmtl.synthetic")  # fedmtl.synthetic: the function

# ----- the reference: the per-node loops, as they were -----


def _split(xs, ys, test_fraction, seed):
    """The split of `FederatedData.from_nodes` as it was: per node rng.permutation, test rows
    first, then concatenation. Returns (train x, y, counts), (test x, y, counts)."""
    rng = np.random.default_rng(seed)
    parts = ([], [], [], [], [], [])
    for x, y in zip(xs, ys, strict=True):
        n = len(x)
        n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
        perm = rng.permutation(n)
        for i, rows in enumerate((perm[n_test:], perm[:n_test])):
            parts[3 * i].append(x[rows])
            parts[3 * i + 1].append(y[rows])
            parts[3 * i + 2].append(len(rows))
    return tuple((np.concatenate(parts[i]), np.concatenate(parts[i + 1]), np.array(parts[i + 2]))
                 for i in (0, 3))


def _reference_nodes(alpha, beta, num_nodes, iid, dim, num_classes, max_size, seed):
    rng = np.random.default_rng(seed)
    sizes = node_sizes(num_nodes, rng, max_size)
    scale = np.sqrt(np.arange(1, dim + 1) ** -1.2)
    if iid:
        w_global = rng.normal(0, 1, (dim, num_classes))
        b_global = rng.normal(0, 1, num_classes)
    u = rng.normal(0, alpha, num_nodes)
    big_b = rng.normal(0, beta, num_nodes)
    xs, ys = [], []
    for k in range(num_nodes):
        if iid:
            mean_x, w, b = np.zeros(dim), w_global, b_global
        else:
            mean_x = rng.normal(big_b[k], 1, dim)
            w = rng.normal(u[k], 1, (dim, num_classes))
            b = rng.normal(u[k], 1, num_classes)
        x = mean_x + scale * rng.standard_normal((sizes[k], dim))
        xs.append(x.astype(np.float32))
        ys.append(np.argmax(x @ w + b, axis=1).astype(np.int32))
    return xs, ys


def _reference_planted(num_nodes, num_groups, dim, num_classes, median_size, min_size,
                       max_size, task_noise, feature_shift, label_noise, seed):
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.arange(num_nodes) % num_groups)
    sizes = np.clip(rng.lognormal(np.log(median_size), 1.0, num_nodes).astype(np.int64),
                    min_size, max_size)
    w_group = rng.standard_normal((num_groups, dim, num_classes))
    b_group = rng.standard_normal((num_groups, num_classes))
    xs, ys = [], []
    for k, g in enumerate(groups):
        w = w_group[g] + task_noise * rng.standard_normal((dim, num_classes))
        b = b_group[g] + task_noise * rng.standard_normal(num_classes)
        x = feature_shift * rng.standard_normal(dim) + rng.standard_normal((sizes[k], dim))
        y = np.argmax(x @ w + b, axis=1)
        flip = rng.random(sizes[k]) < label_noise
        y = np.where(flip, rng.integers(0, num_classes, sizes[k]), y)
        xs.append(x.astype(np.float32))
        ys.append(y.astype(np.int32))
    return xs, ys, groups


def _assert_same(data, xs, ys, test_fraction, seed):
    train, test = _split(xs, ys, test_fraction, seed)
    for split, (x, y, counts) in ((data.train, train), (data.test, test)):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
        np.testing.assert_array_equal(split.counts, counts)
        assert np.array_equal(split.x, x) and np.array_equal(split.y, y)
    assert data.names == tuple(f"node{k}" for k in range(len(xs)))


@pytest.fixture(params=[None, 40_000], ids=["one-chunk", "small-chunks"])
def chunk_bytes(request, monkeypatch):
    """Default chunks, and chunks of 40 kB: many nodes per chunk, and nodes larger than one."""
    if request.param:
        monkeypatch.setattr(synthetic_module, "CHUNK_BYTES", request.param)
        monkeypatch.setattr(data_module, "CHUNK_BYTES", request.param // 4)
    return request.param


# ----- Synthetic(α, β) -----


@pytest.mark.parametrize("alpha, beta, iid, max_size, test_fraction", [
    (1.0, 1.0, False, None, 0.25),
    (0.0, 0.0, False, 120, 0.25),
    (0.5, 0.5, False, 70, 0.5),
    (1.0, 1.0, True, 300, 0.25),
    (0.0, 0.0, True, None, 0.0),
])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_synthetic_matches_the_per_node_loop(alpha, beta, iid, max_size, test_fraction, seed,
                                             chunk_bytes):
    data = synthetic(alpha, beta, num_nodes=25, iid=iid, max_size=max_size,
                     test_fraction=test_fraction, seed=seed)
    xs, ys = _reference_nodes(alpha, beta, 25, iid, 60, 10, max_size, seed)
    _assert_same(data, xs, ys, test_fraction, seed)
    # and from_nodes on the reference's arrays gives the same data
    again = FederatedData.from_nodes(xs, ys, test_fraction=test_fraction, seed=seed,
                                     task="classification", num_classes=10,
                                     names=[f"node{k}" for k in range(25)])
    _assert_same(again, xs, ys, test_fraction, seed)


@pytest.mark.parametrize("num_nodes, dim, num_classes, max_size, test_fraction", [
    (1, 60, 10, None, 0.25),
    (40, 3, 2, 9, 0.25),   # many nodes of each size
    (30, 7, 5, 3, 0.0),    # 3 rows: odd BLAS remainders
    (12, 1, 3, 1, 0.0),    # one row per node: matrix-vector products
    (3, 0, 4, 60, 0.25),   # no features at all
])
def test_synthetic_matches_the_per_node_loop_at_other_shapes(num_nodes, dim, num_classes,
                                                             max_size, test_fraction,
                                                             chunk_bytes):
    for iid in (False, True):
        data = synthetic(1.0, 2.0, num_nodes=num_nodes, iid=iid, dim=dim,
                         num_classes=num_classes, max_size=max_size,
                         test_fraction=test_fraction, seed=3)
        xs, ys = _reference_nodes(1.0, 2.0, num_nodes, iid, dim, num_classes, max_size, 3)
        _assert_same(data, xs, ys, test_fraction, 3)


def test_synthetic_labels_match_across_many_seeds(monkeypatch):
    """Near-ties in argmax(x W + b) would show a product rounded differently: 40 seeds x 60
    nodes of up to 400 rows (about 400,000 labels), chunks of 1 MB."""
    monkeypatch.setattr(synthetic_module, "CHUNK_BYTES", 1 << 20)
    for seed in range(40):
        data = synthetic(2.0, 2.0, num_nodes=60, max_size=400, seed=100 + seed)
        xs, ys = _reference_nodes(2.0, 2.0, 60, False, 60, 10, 400, 100 + seed)
        _assert_same(data, xs, ys, 0.25, 100 + seed)


def test_synthetic_errors_are_those_of_from_nodes():
    with pytest.raises(FederatedDataError, match=r"node 0 'node0' has no examples"):
        synthetic(num_nodes=4, max_size=0)
    with pytest.raises(FederatedDataError, match=r"node 0 'node0': 1 example\(s\) with "
                       r"test_fraction=0.25 leaves no training example"):
        synthetic(num_nodes=4, max_size=1)
    with pytest.raises(FederatedDataError, match="test_fraction must be in"):
        synthetic(num_nodes=4, test_fraction=1.0)
    with pytest.raises(FederatedDataError, match="needs 2 to 2\\*\\*31 - 1 classes, got 1"):
        synthetic(num_nodes=4, num_classes=1)
    with pytest.raises(FederatedDataError, match="no nodes given"):
        synthetic(num_nodes=0)


# ----- planted groups -----


@pytest.mark.parametrize("kwargs", [
    {},
    {"num_nodes": 37, "num_groups": 3, "dim": 5, "num_classes": 4, "feature_shift": 1.5,
     "label_noise": 0.3, "test_fraction": 0.4, "seed": 5},
    {"num_nodes": 20, "num_groups": 20, "min_size": 1, "max_size": 3, "test_fraction": 0.0,
     "label_noise": 1.0, "seed": 2},
])
def test_planted_groups_match_the_per_node_loop(kwargs, chunk_bytes):
    args = {"num_nodes": 100, "num_groups": 4, "dim": 20, "num_classes": 2, "median_size": 30,
            "min_size": 10, "max_size": 200, "task_noise": 0.1, "feature_shift": 0.0,
            "label_noise": 0.0, "seed": 0} | kwargs
    test_fraction = args.pop("test_fraction", 0.25)
    data, groups = planted_groups(**args, test_fraction=test_fraction)
    xs, ys, ref_groups = _reference_planted(**args)
    _assert_same(data, xs, ys, test_fraction, args["seed"])
    np.testing.assert_array_equal(groups, ref_groups)


# ----- construction from arrays -----


def test_from_nodes_chunks_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 40, 200)
    xs = [rng.normal(size=(n, 2, 3)) for n in sizes]  # float64, feature shape (2, 3)
    ys = [rng.integers(0, 5, n) for n in sizes]
    whole = FederatedData.from_nodes(xs, ys, seed=4)
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 500)
    chunked = FederatedData.from_nodes(xs, ys, seed=4)
    xs32 = [x.astype(np.float32) for x in xs]
    train, test = _split(xs32, [y.astype(np.int32) for y in ys], 0.25, 4)
    for d in (whole, chunked):
        for split, (x, y, counts) in ((d.train, train), (d.test, test)):
            np.testing.assert_array_equal(split.counts, counts)
            assert np.array_equal(split.x, x) and np.array_equal(split.y, y)
    xs[150][1, 1, 2] = np.inf  # a bad value in a later chunk is still found and named
    with pytest.raises(FederatedDataError, match=r"node 150, field x: 1 NaN/inf.*row 1\b"):
        FederatedData.from_nodes(xs, ys)


def test_subset_gathers_nodes_in_the_given_order():
    data = synthetic(num_nodes=8, max_size=90, seed=1)
    sub = data.subset([5, 0, 5, 3])
    assert sub.names == ("node5", "node0", "node5", "node3")
    for split, whole in ((sub.train, data.train), (sub.test, data.test)):
        for i, k in enumerate([5, 0, 5, 3]):
            for got, want in zip(split.node(i), whole.node(k), strict=True):
                np.testing.assert_array_equal(got, want)
    empty = data.subset([])
    assert empty.train.x.shape == (0, 60) and empty.num_nodes == 0
