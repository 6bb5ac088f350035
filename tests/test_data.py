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


def test_label_out_of_range_names_node_row_and_label():
    xs, ys = _nodes()
    ys[2][0] = 7
    _raises(r"node 2, field y: label 7 in row 0 out of range \[0, 3\)", xs, ys, num_classes=3)
    ys[2][0] = -1
    _raises(r"node 2, field y: label -1 in row 0 out of range", xs, ys)
    # from_splits names the split too
    with pytest.raises(FederatedDataError, match=r"node 2 \(test\), field y: label -1 in row 0"):
        FederatedData.from_splits(xs, [np.abs(y) for y in ys], xs, ys)


def test_whole_number_float_labels_are_accepted_for_explicit_classification():
    xs, ys = _nodes()
    floats = [y.astype(np.float32) for y in ys]
    floats[1] = floats[1].astype(np.float64)  # one node in another float dtype
    data = FederatedData.from_nodes(xs, floats, task="classification")
    ref = FederatedData.from_nodes(xs, ys)
    assert data.task == "classification" and data.num_classes == ref.num_classes == 3
    assert data.train.y.dtype == np.int32
    np.testing.assert_array_equal(data.train.y, ref.train.y)
    np.testing.assert_array_equal(data.test.y, ref.test.y)


def test_fractional_float_labels_for_classification_name_node_and_row():
    xs, ys = _nodes()
    floats = [y.astype(np.float64) for y in ys]
    floats[1][3] = 0.5
    _raises(r"node 1, field y: label 0.5 in row 3 is not a whole number", xs, floats,
            task="classification")


def test_signed_binary_labels_are_stored_as_0_1():
    xs, ys = _nodes(classes=2)
    signed = [2 * y - 1 for y in ys]  # {-1, +1}
    ref = FederatedData.from_nodes(xs, ys)
    for labels, kwargs in ((signed, {}), (signed, {"num_classes": 2}),
                           ([y.astype(np.float64) for y in signed], {"task": "classification"})):
        data = FederatedData.from_nodes(xs, labels, **kwargs)
        assert data.num_classes == 2 and data.train.y.dtype == np.int32
        np.testing.assert_array_equal(data.train.y, ref.train.y)
        np.testing.assert_array_equal(data.test.y, ref.test.y)
    # over both splits of from_splits: a split with +1 only still maps with the other's -1
    data = FederatedData.from_splits(xs, signed, xs, [np.ones(len(y), int) for y in ys])
    np.testing.assert_array_equal(data.train.y, np.concatenate(ys))
    assert (data.test.y == 1).all()


def test_labels_beyond_signed_binary_stay_named_errors():
    xs, ys = _nodes(classes=2)
    signed = [2 * y - 1 for y in ys]
    signed[1][0] = 0  # {-1, 0, +1}: not binary signed labels
    _raises(r"node 0, field y: label -1 in row \d+ out of range \[0, 2\)", xs, signed)
    signed = [2 * y - 1 for y in ys]
    _raises(r"label -1 in row \d+ out of range \[0, 3\)", xs, signed, num_classes=3)
    _raises(r"whole number stored as float64", xs, [y.astype(np.float64) for y in signed])


def test_a_label_column_is_squeezed():
    xs, ys = _nodes()
    data = FederatedData.from_nodes(xs, [y[:, None] for y in ys])
    ref = FederatedData.from_nodes(xs, ys)
    assert data.train.y.shape == ref.train.y.shape == (len(ref.train.y),)
    np.testing.assert_array_equal(data.train.y, ref.train.y)
    signed = 2 * (np.arange(19) % 2) - 1  # a {-1, +1} column, flat
    data = FederatedData.from_flat(np.concatenate(xs), signed[:, None],
                                   np.repeat([0, 1, 2], [6, 9, 4]))
    assert data.num_classes == 2 and data.train.y.ndim == 1
    assert sorted(np.concatenate([data.train.y, data.test.y]).tolist()) == [0] * 10 + [1] * 9
    ys[1] = np.stack([ys[1], ys[1]], axis=1)
    _raises(r"node 1, field y: labels must be 1-D \(or one column \[n, 1\]\), got shape "
            r"\(9, 2\)", xs, ys, task="classification")
    regression = FederatedData.from_nodes(xs[:1], [np.linspace(0, 1, 6)[:, None] + 0.1])
    assert regression.train.y.shape[1:] == (1,)  # regression targets keep their shape


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


def test_float32_overflow_names_node_field_and_row():
    xs, ys = _nodes()
    xs = [x.astype(np.float64) for x in xs]
    xs[1][4, 2] = 1e39  # finite in float64, inf in float32
    _raises(r"node 1, field x: 1 value\(s\) overflow float32.*1e\+39.*row 4\b", xs, ys)
    xs[1][4, 2] = -3.5e38
    _raises(r"node 1, field x: .*overflow float32.*row 4\b", xs, ys)
    xs[1][4, 2] = 3.4e38  # rounds to float32's largest value: kept
    assert FederatedData.from_nodes(xs, ys).train.x.dtype == np.float32


def test_float32_overflow_of_regression_target_names_node_and_row():
    xs, _ = _nodes()
    ys = [np.linspace(0.5, 9.5, len(x)) for x in xs]  # float64, fractional: regression
    ys[2][1] = -1e39
    _raises(r"node 2, field y: 1 value\(s\) overflow float32.*row 1\b", xs, ys)
    with pytest.raises(FederatedDataError, match=r"node 2 \(test\), field y:.*overflow"):
        FederatedData.from_splits(xs, [np.zeros(len(x)) for x in xs], xs, ys)


def test_errors_name_the_node_by_index_and_name():
    xs, ys = _nodes()
    xs[1][2, 0] = np.nan
    _raises(r"node 1 'b', field x: 1 NaN/inf value\(s\), first in row 2", xs, ys,
            names=["a", "b", "c"])


# ----- label and task inference -----


def test_integer_labels_are_classification():
    xs, ys = _nodes()
    for dtype in (np.int64, np.int8, np.uint16):
        data = FederatedData.from_nodes(xs, [y.astype(dtype) for y in ys])
        assert data.task == "classification" and data.num_classes == 3
        assert data.train.y.dtype == np.int32


def test_bool_labels_are_classification():
    xs, ys = _nodes(classes=2)
    data = FederatedData.from_nodes(xs, [y.astype(bool) for y in ys])
    assert data.task == "classification" and data.num_classes == 2
    assert data.train.y.dtype == np.int32
    np.testing.assert_array_equal(data.train.y, FederatedData.from_nodes(xs, ys).train.y)


def test_whole_number_float_labels_need_an_explicit_task():
    xs, ys = _nodes()
    floats = [y.astype(np.float32) for y in ys]
    _raises(r"field y: .*whole number.*task=\"classification\".*task=\"regression\"",
            xs, floats)
    reg = FederatedData.from_nodes(xs, floats, task="regression")
    assert reg.task == "regression" and reg.num_classes is None
    assert reg.train.y.dtype == np.float32
    # an explicit num_classes says classification
    assert FederatedData.from_nodes(xs, floats, num_classes=3).task == "classification"


def test_fractional_float_targets_are_regression():
    xs, ys = _nodes()
    floats = [y + 0.25 for y in ys]  # float64
    floats[0] = ys[0].astype(np.float64)  # one node of whole numbers does not change that
    data = FederatedData.from_nodes(xs, floats)
    assert data.task == "regression" and data.train.y.dtype == np.float32


@pytest.mark.parametrize("kind", [str, object])
def test_string_and_object_labels_are_rejected_naming_node_and_field(kind):
    xs, ys = _nodes()
    labels = [y.astype(kind) for y in ys]
    dtype = "object" if kind is object else r"<U\d+"
    for task in (None, "classification", "regression"):
        _raises(rf"node 0, field y: dtype {dtype} is not numeric", xs, labels, task=task)


def test_inferred_class_count_is_bounded():
    from fedmtl.data import MAX_INFERRED_CLASSES

    xs, ys = _nodes()
    ys[2][1] = 10**9
    _raises(rf"node 2, field y: label 1000000000 in row 1 .*1000000001 classes.*"
            rf"{MAX_INFERRED_CLASSES}.*num_classes", xs, ys)
    ys[2][1] = MAX_INFERRED_CLASSES - 1  # the bound itself is fine
    assert FederatedData.from_nodes(xs, ys).num_classes == MAX_INFERRED_CLASSES
    ys[2][1] = 10**9  # an explicit count is the user's choice
    assert FederatedData.from_nodes(xs, ys, num_classes=10**9 + 1).num_classes == 10**9 + 1


# ----- ragged input, node names and node ids -----


def test_ragged_node_arrays_name_node_and_field():
    xs, ys = _nodes()
    xs[1], ys[1] = [[1.0, 2.0, 3.0], [3.0]], ys[1][:2]
    _raises(r"node 1, field x: not one rectangular array.*inhomogeneous", xs, ys)
    xs, ys = _nodes()
    ys[2] = [[0], [1, 2], [0], [1]]
    _raises(r"node 2 'c', field y: not one rectangular array", xs, ys, names=["a", "b", "c"])


def test_duplicate_node_names_are_rejected():
    xs, ys = _nodes()
    _raises(r"names: 'a' names nodes 0 and 2", xs, ys, names=["a", "b", "a"])
    _raises(r"names: '1' names nodes 0 and 1", xs, ys, names=[1, "1", "x"])
    with pytest.raises(FederatedDataError, match=r"'b' names nodes 1 and 2"):
        FederatedData.from_splits(xs, ys, xs, ys, names=["a", "b", "b"])


@pytest.mark.parametrize("ids", [
    np.array([3.0, np.nan, 3.0, 1.0, np.nan, 1.0]),
    np.array(["n3", None, "n3", "n1", float("nan"), "n1"], dtype=object),
])
def test_from_flat_rejects_missing_node_ids(ids):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 0, 1, 0, 1], np.int32)
    with pytest.raises(FederatedDataError,
                       match=r"node_ids: 2 row\(s\) have no node id \(NaN or None\), first row 1"):
        FederatedData.from_flat(x, y, ids)


# ----- target scaling -----


def _regression(seed=0):
    xs, _ = _nodes(sizes=(12, 9, 20))
    rng = np.random.default_rng(seed)
    ys = [rng.normal(100 + 60 * k, 30, len(x)) for k, x in enumerate(xs)]
    return FederatedData.from_nodes(xs, ys, task="regression", names=["a", "b", "c"])


def test_standardize_targets_uses_two_federation_wide_scalars():
    data = _regression()
    assert (data.y_mean, data.y_scale) == (0.0, 1.0)
    std = data.standardize_targets()
    raw = data.train.y.astype(np.float64)
    assert std.y_mean == pytest.approx(raw.mean()) and std.y_scale == pytest.approx(raw.std())
    assert abs(std.train.y.mean()) < 1e-5 and std.train.y.std() == pytest.approx(1, abs=1e-5)
    for split in ("train", "test"):  # both splits with the train statistics
        np.testing.assert_allclose(getattr(std, split).y,
                                   (getattr(data, split).y - raw.mean()) / raw.std(), rtol=1e-5)
        np.testing.assert_allclose(std.raw_targets(getattr(std, split).y),
                                   getattr(data, split).y, rtol=1e-5)
    assert std.train.y.dtype == np.float32
    # scalings compose, subsets keep them, and a second standardization changes nothing
    again = std.standardize_targets()
    assert again.y_mean == pytest.approx(std.y_mean) and again.y_scale == pytest.approx(std.y_scale)
    hundred = data.scale_targets(0.0, 100.0)
    np.testing.assert_array_equal(hundred.train.y, data.train.y / np.float32(100))
    assert (hundred.y_mean, hundred.y_scale) == (0.0, 100.0)
    assert std.subset([2, 0]).y_scale == std.y_scale
    with pytest.raises(FederatedDataError, match="regression"):
        FederatedData.from_nodes(*_nodes()).standardize_targets()
    with pytest.raises(FederatedDataError, match="scale"):
        data.scale_targets(0.0, 0.0)


def test_evaluate_reports_regression_metrics_in_original_units():
    import dataclasses

    from fedmtl import algorithms, models
    from fedmtl.engine import Engine, Federation

    data = _regression()
    scaled = dataclasses.replace(data, y_mean=7.0, y_scale=10.0)  # same stored y, other units
    fed = Federation(rounds=0, batch_size=4)
    results = []
    for d in (data, scaled):
        engine = Engine(algorithms.local(models.build("mlp", (3,), 1, hidden=(4,))), d, fed)
        results.append(engine.evaluate(engine.init())["local"])
    np.testing.assert_allclose(results[1]["rmse"], 10 * results[0]["rmse"], rtol=1e-6)
    np.testing.assert_allclose(results[1]["mse"], 100 * results[0]["mse"], rtol=1e-6)


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


def test_from_flat_is_from_nodes_of_each_ids_rows_in_flat_order():
    """Rows already grouped by node are split as views; others are gathered first: the same
    data either way, that of from_nodes on each node's rows in their flat order."""
    rng = np.random.default_rng(5)
    ids = np.repeat([4, 9, 12], [7, 11, 5])
    x = rng.normal(size=(len(ids), 2))
    y = rng.integers(0, 3, len(ids))
    shuffled = rng.permutation(len(ids))
    nodes = FederatedData.from_nodes([x[ids == i] for i in (4, 9, 12)],
                                     [y[ids == i] for i in (4, 9, 12)], seed=2,
                                     names=["4", "9", "12"])
    for rows in (np.arange(len(ids)), shuffled):
        flat = FederatedData.from_flat(x[rows], y[rows], ids[rows], seed=2)
        if rows is shuffled:
            nodes = FederatedData.from_nodes(
                [x[rows][ids[rows] == i] for i in (4, 9, 12)],
                [y[rows][ids[rows] == i] for i in (4, 9, 12)], seed=2, names=["4", "9", "12"])
        assert flat.names == nodes.names
        for split in ("train", "test"):
            for field in ("x", "y", "counts"):
                np.testing.assert_array_equal(getattr(getattr(flat, split), field),
                                              getattr(getattr(nodes, split), field))


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


def _binary_nodes(sizes, positives, seed=0):
    rng = np.random.default_rng(seed)
    xs, ys, start = [], [], 0
    for n, p in zip(sizes, positives, strict=True):
        xs.append(np.column_stack([np.arange(start, start + n), rng.normal(size=n)]))
        start += n
        ys.append(rng.permutation(np.repeat([0, 1], [n - p, p])))
    return xs, ys


def test_stratified_split_puts_rare_positives_in_both_splits():
    sizes, positives = (40, 12, 9, 30, 3, 8), (2, 2, 3, 1, 2, 0)
    xs, ys = _binary_nodes(sizes, positives)
    plain = FederatedData.from_nodes(xs, ys, seed=0)
    data = FederatedData.from_nodes(xs, ys, seed=0, stratify=True)
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        got = _rows(data.train, k) + _rows(data.test, k)
        assert sorted(got) == sorted(zip(map(tuple, x.astype(np.float32).tolist()), y.tolist(),
                                         strict=True))
        train_pos = int(data.train.node(k)[1].sum())
        test_pos = int(data.test.node(k)[1].sum())
        if positives[k] >= 2:
            assert train_pos >= 1 and test_pos >= 1, k
        assert data.test.counts[k] == plain.test.counts[k]  # the same test count per node
    # node 0: 40 rows, 10 test; 2 positives: one each way (unstratified: both could miss test)
    assert int(data.test.node(0)[1].sum()) == 1
    # node 3: a lone positive trains; node 4: 3 rows, 1 test, 2 positives: 1 + 1
    assert int(data.train.node(3)[1].sum()) == 1
    assert (int(data.train.node(4)[1].sum()), int(data.test.node(4)[1].sum())) == (1, 1)


def test_stratified_split_is_seeded_and_proportional():
    xs, ys = _binary_nodes((100, 60), (20, 30))
    test_ids = lambda d: [sorted(d.test.node(k)[0][:, 0].tolist()) for k in range(2)]
    a = FederatedData.from_nodes(xs, ys, seed=1, stratify=True)
    b = FederatedData.from_nodes(xs, ys, seed=1, stratify=True)
    c = FederatedData.from_nodes(xs, ys, seed=2, stratify=True)
    assert test_ids(a) == test_ids(b) and test_ids(a) != test_ids(c)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    # 25% of 20 positives; node 1 tests 15 of 30 + 30: 7.5 each, the tie goes to class 0
    assert [int(a.test.node(k)[1].sum()) for k in range(2)] == [5, 7]
    assert a.test.counts.tolist() == [25, 15]
    # from_flat passes it on
    flat = FederatedData.from_flat(np.concatenate(xs), np.concatenate(ys),
                                   np.repeat([0, 1], [100, 60]), seed=1, stratify=True)
    assert test_ids(flat) == test_ids(a)


def test_stratify_needs_classification():
    xs, _ = _nodes()
    targets = [np.linspace(0.5, 1.5, len(x)) for x in xs]
    _raises("stratify=True .* needs classification labels; this is regression", xs, targets,
            stratify=True)


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
