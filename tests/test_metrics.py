"""Binary-task metrics: the exact per-node ROC AUC equals a brute-force pairwise count, balanced
accuracy equals the mean per-class recall, the engine reports both (AUC undefined, not a
failure, on a node with one test class), class weights reweight the loss a trainer
minimises; the bias-free linear model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fedmtl import algorithms, models
from fedmtl.data import FederatedData
from fedmtl.engine import DivergenceError, Engine, Federation
from fedmtl.objectives import (
    BINARY_METRICS,
    HIGHER_IS_BETTER,
    METRICS,
    balanced_class_weights,
    finish_metrics,
    masked_mean_loss,
    metric_sums,
    metrics,
    node_auc,
)
from fedmtl.training import Batch, trainer


def _pairwise_auc(scores, labels, counts) -> np.ndarray:
    """Per node: the share of (positive, negative) pairs where the positive scores higher,
    ties 1/2, by brute force; NaN without both classes."""
    out, start = [], 0
    for n in counts:
        s, y = scores[start:start + n], labels[start:start + n]
        start += n
        pos, neg = s[y == 1], s[y == 0]
        if not (len(pos) and len(neg)):
            out.append(np.nan)
            continue
        diff = pos[:, None] - neg[None, :]
        out.append(np.mean((diff > 0) + 0.5 * (diff == 0)))
    return np.array(out)


def test_metric_names():
    assert metrics("classification", 2) == BINARY_METRICS
    assert metrics("classification", 3) == METRICS["classification"] == ("accuracy", "loss")
    assert metrics("regression") == METRICS["regression"]
    assert metrics("classification", 2)[0] == METRICS["classification"][0]  # primary unchanged
    assert set(BINARY_METRICS) <= set(HIGHER_IS_BETTER)


@pytest.mark.parametrize("seed", range(5))
def test_node_auc_equals_pairwise_count(seed):
    """Ties (few distinct scores), empty nodes and one-class nodes included."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 15, 12)
    counts[:3] = (0, 1, 4)
    total = int(counts.sum())
    scores = rng.integers(-2, 3, total).astype(np.float32)
    labels = rng.integers(0, 2, total)
    labels[1:5] = 0  # node 1 (1 row) and node 2 (4 rows): negatives only
    auc = node_auc(scores, labels, counts)
    np.testing.assert_allclose(auc, _pairwise_auc(scores, labels, counts), rtol=1e-12)
    assert np.isnan(auc[:3]).all()
    continuous = rng.normal(size=total)  # no ties: the same with ranks of distinct scores
    np.testing.assert_allclose(node_auc(continuous, labels, counts),
                               _pairwise_auc(continuous, labels, counts), rtol=1e-12)


def test_node_auc_by_hand_and_non_finite_scores():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 1.0, 1.0, 2.0, np.nan, 0.0])
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 1, 0])
    auc = node_auc(scores, labels, [4, 2, 3])
    assert auc[0] == 0.75  # the textbook example: positives 0.35, 0.8 vs negatives 0.1, 0.4
    assert auc[1] == 0.5  # one tie
    assert np.isnan(auc[2])  # a NaN score: no AUC (the engine names the node)
    with pytest.raises(ValueError, match="sum of counts"):
        node_auc(scores, labels, [4, 2])


def test_balanced_accuracy_is_the_mean_recall_of_present_classes():
    outputs = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    y = jnp.array([0, 0, 0, 1, 1, 1])
    mask = jnp.array([True, True, True, True, True, False])
    sums = metric_sums("classification", outputs, y, mask)
    np.testing.assert_array_equal(sums["class_count"], [3.0, 2.0])
    np.testing.assert_array_equal(sums["class_correct"], [2.0, 1.0])
    out = finish_metrics("classification", sums)
    assert list(out) == ["accuracy", "balanced_accuracy", "loss"]
    np.testing.assert_allclose(out["balanced_accuracy"], (2 / 3 + 1 / 2) / 2, rtol=1e-6)
    np.testing.assert_allclose(out["accuracy"], 3 / 5, rtol=1e-6)
    # one class only: the recall of that class; no example: NaN (no metric)
    only = finish_metrics("classification",
                          metric_sums("classification", outputs[:3], y[:3], mask[:3]))
    np.testing.assert_allclose(only["balanced_accuracy"], 2 / 3, rtol=1e-6)
    none = finish_metrics("classification",
                          metric_sums("classification", outputs[:3], y[:3], mask[:3] & False))
    assert np.isnan(none["balanced_accuracy"])
    three = metric_sums("classification", jnp.zeros((2, 3)), jnp.array([0, 2]), mask[:2])
    assert "class_count" not in three  # multi-class tasks keep accuracy and loss only


def test_class_weights():
    y = np.array([0, 0, 0, 1, 0, 0, 0, 1], np.int32)
    w = balanced_class_weights(y, 3)  # class 2 has no example
    np.testing.assert_allclose(w, [8 / (3 * 6), 8 / (3 * 2), 0.0], rtol=1e-6)
    assert w.dtype == np.float32
    outputs = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    mask = jnp.array([True] * 6 + [False] * 2)
    plain = masked_mean_loss("classification", outputs, jnp.asarray(y), mask)
    unit = masked_mean_loss("classification", outputs, jnp.asarray(y), mask, jnp.ones(3))
    np.testing.assert_allclose(unit, plain, rtol=1e-6)
    weighted = masked_mean_loss("classification", outputs, jnp.asarray(y), mask, w)
    logp = jax.nn.log_softmax(np.asarray(outputs, np.float64))
    by_hand = -np.sum((w[y] * logp[np.arange(8), y])[:6]) / 6  # / real rows, not sum of w
    np.testing.assert_allclose(weighted, by_hand, rtol=1e-5)
    with pytest.raises(ValueError, match="classification only"):
        masked_mean_loss("regression", outputs[:, 0], jnp.zeros(8), mask, w)


def test_trainer_minimises_the_class_weighted_loss():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    batch = Batch(x, jnp.array([0, 0, 0, 0, 1, 0]), jnp.array([True] * 5 + [False]))
    params = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    apply = lambda p, x: x @ p
    w = balanced_class_weights(np.asarray(batch.y[:5]), 2)  # 5 / 8, 5 / 2
    sgd = optax.sgd(0.1)
    plain = trainer(apply, sgd)
    weighted = trainer(apply, sgd, class_weights=w)
    new, loss = weighted.step(weighted.init(params), batch, jax.random.key(0), "classification")
    grad = jax.grad(lambda p: masked_mean_loss("classification", apply(p, x), batch.y,
                                               batch.mask, w))(params)
    np.testing.assert_allclose(new.params, params - 0.1 * grad, rtol=1e-5, atol=1e-7)
    ref, ref_loss = plain.step(plain.init(params), batch, jax.random.key(0), "classification")
    assert loss == ref_loss  # the reported loss is the unweighted one
    assert not np.allclose(new.params, ref.params)
    ones = trainer(apply, sgd, class_weights=np.ones(2))
    same, _ = ones.step(ones.init(params), batch, jax.random.key(0), "classification")
    np.testing.assert_allclose(same.params, ref.params, rtol=1e-6)


def test_linear_model_has_no_bias():
    linear = models.build("linear", (3,), 2)
    assert isinstance(linear, models.LogisticRegression)
    params = nnx.state(linear, nnx.Param)
    assert set(params["head"]) == {"kernel"}
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    kernel = np.asarray(params["head"]["kernel"][...])
    np.testing.assert_allclose(linear(jnp.asarray(x)), x @ kernel, rtol=1e-5)
    assert set(nnx.state(models.build("logreg", (3,), 2), nnx.Param)["head"]) == {"bias",
                                                                                  "kernel"}
    model = algorithms.local(models.build("linear", (3,), 2)).model  # all of it personal
    assert model.num_params() == 6 and not jax.tree.leaves(model.shared)


# ----- the engine -----


def _binary_data() -> FederatedData:
    """4 nodes, 3 features, ~25% positives; node 1's test set holds negatives only, node 3
    has no test example."""
    rng = np.random.default_rng(0)
    w = np.array([1.5, -1.0, 0.5])
    train_n, test_n = (12, 9, 15, 6), (7, 5, 9, 0)

    def node(n):
        x = rng.normal(size=(n, 3)).astype(np.float32)
        return x, (x @ w + rng.normal(size=n) > 1.0).astype(np.int32)

    train = [node(n) for n in train_n]
    test = [node(n) for n in test_n]
    test[1] = (test[1][0], np.zeros(5, np.int32))
    test[0][1][:2] = (0, 1)  # node 0 and 2 test on both classes
    test[2][1][:2] = (0, 1)
    return FederatedData.from_splits([a for a, _ in train], [b for _, b in train],
                                     [a for a, _ in test], [b for _, b in test], num_classes=2)


def test_engine_reports_exact_auc_and_balanced_accuracy():
    data = _binary_data()
    algo = algorithms.fedavg(models.LogisticRegression(3, 2, use_bias=False, rngs=nnx.Rngs(0)),
                             local_optimizer=0.5)
    engine = Engine(algo, data, Federation(rounds=2, batch_size=4, finetune_steps=2,
                                           rounds_per_sync=2))
    state, _ = engine.run(engine.init())
    result = engine.evaluate(state)  # node 1's undefined AUC raises nothing
    kernels = engine.node_models(state)
    assert set(result) == {"global", "personalized"}
    for kind, per_node in result.items():
        assert list(per_node) == list(BINARY_METRICS)
        kernel = np.asarray(kernels[kind][0]["head"]["kernel"][...], np.float64)  # [N, 3, 2]
        scores = np.concatenate([data.test.node(k)[0] @ (kernel[k, :, 1] - kernel[k, :, 0])
                                 for k in range(data.num_nodes)])
        auc = _pairwise_auc(scores, data.test.y, data.test.counts)
        np.testing.assert_allclose(per_node["auc"], auc, rtol=1e-6)
        assert np.isnan(per_node["auc"][[1, 3]]).all()
        assert np.isfinite(per_node["auc"][[0, 2]]).all()
        for k in range(3):
            x, y = data.test.node(k)
            pred = np.argmax(x @ kernel[k], axis=1)
            recall = [np.mean(pred[y == c] == c) for c in (0, 1) if (y == c).any()]
            np.testing.assert_allclose(per_node["balanced_accuracy"][k], np.mean(recall),
                                       rtol=1e-6)
            np.testing.assert_allclose(per_node["accuracy"][k], np.mean(pred == y), rtol=1e-6)
        assert np.isnan(per_node["balanced_accuracy"][3])
    # fine-tuning moved the personalized scores: the AUCs are each model's own
    assert not np.allclose(result["global"]["loss"][:3], result["personalized"]["loss"][:3])


def test_engine_still_names_a_node_with_non_finite_scores():
    data = _binary_data()
    engine = Engine(algorithms.local(models.build("linear", (3,), 2), local_optimizer=0.1),
                    data, Federation(rounds=1, batch_size=4, rounds_per_sync=1))
    state = engine.init()
    nodes = jax.tree.map(lambda leaf: leaf.at[2].set(jnp.nan), state.nodes)
    with pytest.raises(DivergenceError, match=r"local model has non-finite test .*'2'"):
        engine.evaluate(state._replace(nodes=nodes))
