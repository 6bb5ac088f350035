"""Split-model algorithms (FedRep, LG-FedAvg, FedBABU, FedBN) and the models' normalization
layers: one node's round against gradient descent written from the papers' update rules,
uploads that hold exactly the shared parameters, and the factories' named errors.

The problem is tests/test_engine.py's tiny one (4 features, 3 classes, an MLP with 8 hidden
units); one node's round runs under `jax.jit` rather than through an Engine.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fedmtl import models
from fedmtl.algorithms import AlgorithmError, fedavg
from fedmtl.algorithms.split import fedbabu, fedbn, fedper, fedrep, lg_fedavg
from fedmtl.data import FederatedData
from fedmtl.engine import Engine, Federation
from fedmtl.models import MLP, Conv1D, LogisticRegression, UnsupportedModel
from fedmtl.training import Batch, Schedule, node_round

DIM, CLASSES = 4, 3
FACTORIES = {"fedrep": fedrep, "lg_fedavg": lg_fedavg, "fedbabu": fedbabu, "fedbn": fedbn}


def _mlp(norm=None):
    return MLP(DIM, (8,), CLASSES, norm=norm, rngs=nnx.Rngs(0))


def _build(name, lr=0.1, **kwargs):
    module = _mlp("layer") if name == "fedbn" else _mlp()
    return FACTORIES[name](module, local_optimizer=lr, **kwargs)


def _node(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(n, DIM)), jnp.float32),
            jnp.asarray(rng.integers(0, CLASSES, n), jnp.int32))


def _paths(tree) -> set[str]:
    return {jax.tree_util.keystr(p, simple=True, separator="/")
            for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _close(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _round(algo, x, y, *, epochs=1, batch_size=4, node_state=None):
    """One node's round (server freshly initialized): (upload, new node state)."""
    node_state = algo.init_node(jax.random.key(0)) if node_state is None else node_state
    broadcast = algo.broadcast(algo.init(jax.random.key(0), 1))
    schedule = Schedule(batch_size=batch_size, epochs=epochs)
    run = jax.jit(lambda b, s, x, y, k: node_round(algo, b, s, x, y, k, schedule)[:2])
    return run(broadcast, node_state, x, y, jax.random.key(1))


def _cross_entropy(model, x, y):
    """Mean cross-entropy of (shared, personal) on all of x, written from its definition."""

    def loss(shared, personal):
        logits = model.apply(shared, personal, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    return loss


def _full_gradient(model, x, y, params):
    """∇ of the mean cross-entropy with respect to (shared, personal)."""
    return jax.jit(jax.grad(lambda p, x, y: _cross_entropy(model, x, y)(*p)))(params, x, y)


def _plus(a, b):
    return jax.tree.map(jnp.add, a, b)


# ----- FedRep -----


def _fedrep_reference(model, x, y, lr, head_epochs, epochs, momentum=0.0):
    """FedRep's node update with full batches: head_epochs steps on the head (body fixed),
    then `epochs` steps on the body (head fixed); each part with its own momentum buffer."""
    return jax.jit(lambda x, y, body, head: _fedrep_steps(model, x, y, body, head, lr,
                                                          head_epochs, epochs, momentum))(
        x, y, model.shared, model.personal)


def _fedrep_steps(model, x, y, body, head, lr, head_epochs, epochs, momentum):
    loss = _cross_entropy(model, x, y)
    velocity = jax.tree.map(jnp.zeros_like, head)
    for _ in range(head_epochs):
        g = jax.grad(loss, argnums=1)(body, head)
        velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, g)
        head = jax.tree.map(lambda p, v: p - lr * v, head, velocity)
    velocity = jax.tree.map(jnp.zeros_like, body)
    for _ in range(epochs):
        g = jax.grad(loss, argnums=0)(body, head)
        velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, g)
        body = jax.tree.map(lambda p, v: p - lr * v, body, velocity)
    return body, head


@pytest.mark.parametrize("head_epochs, epochs", [(0, 2), (3, 2)])
def test_fedrep_round_is_head_steps_then_body_steps(head_epochs, epochs):
    """head_epochs = 0 is the limit case: the body alone trains, the head stays as it was."""
    lr = 0.3
    algo = fedrep(_mlp(), head_epochs=head_epochs, local_optimizer=lr)
    assert algo.prologue_epochs == head_epochs
    x, y = _node()
    upload, head = _round(algo, x, y, epochs=epochs, batch_size=8)  # one batch per epoch
    body_ref, head_ref = _fedrep_reference(algo.model, x, y, lr, head_epochs, epochs)
    _close(_plus(algo.model.shared, upload), body_ref)
    _close(head, head_ref)
    if head_epochs == 0:
        for a, b in zip(jax.tree.leaves(head), jax.tree.leaves(algo.model.personal), strict=True):
            np.testing.assert_array_equal(a, b)


def test_fedrep_parts_keep_their_own_optimizer_state():
    """With momentum, a single optimizer state would keep moving the head after its epochs;
    FedRep's head is frozen while the body trains (and the other way round)."""
    lr = 0.2
    algo = fedrep(_mlp(), head_epochs=2, local_optimizer=optax.sgd(lr, momentum=0.9))
    x, y = _node()
    upload, head = _round(algo, x, y, epochs=3, batch_size=8)
    body_ref, head_ref = _fedrep_reference(algo.model, x, y, lr, 2, 3, momentum=0.9)
    _close(_plus(algo.model.shared, upload), body_ref)
    _close(head, head_ref)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", None], ids=repr)
def test_fedrep_rejects_bad_head_epochs(bad):
    with pytest.raises(AlgorithmError, match=r"^fedrep: head_epochs must be an integer >= 0"):
        fedrep(_mlp(), head_epochs=bad)


# ----- LG-FedAvg -----


def test_lg_fedavg_is_fedper_with_the_split_the_other_way_round():
    """Both train (body, head) jointly; LG-FedAvg uploads the head and keeps the body."""
    x, y = _node(11)
    lg, per = lg_fedavg(_mlp(), local_optimizer=0.1), fedper(_mlp(), local_optimizer=0.1)
    assert _paths(lg.model.personal) == _paths(per.model.shared) == {
        "body/0/kernel/value", "body/0/bias/value"}
    lg_upload, lg_body = _round(lg, x, y, epochs=2)
    per_upload, per_head = _round(per, x, y, epochs=2)
    _close(_plus(lg.model.shared, lg_upload), per_head)
    _close(_plus(per.model.shared, per_upload), lg_body)


def test_lg_fedavg_keeps_normalization_layers_local():
    algo = lg_fedavg(_mlp("layer"))
    assert _paths(algo.model.shared) == {"head/kernel/value", "head/bias/value"}
    assert {p.split("/")[0] for p in _paths(algo.model.personal)} == {"body", "norms"}


# ----- FedBABU -----


def test_fedbabu_trains_the_body_under_the_initial_head():
    lr = 0.3
    algo = fedbabu(_mlp(), local_optimizer=lr)
    x, y = _node()
    upload, node = _round(algo, x, y, epochs=2, batch_size=8)
    body_ref, _ = _fedrep_reference(algo.model, x, y, lr, 0, 2)
    _close(_plus(algo.model.shared, upload), body_ref)
    assert node == ()
    kinds = algo.models(_plus(algo.model.shared, upload), node)
    assert set(kinds) == {"global"}
    for a, b in zip(jax.tree.leaves(kinds["global"][1]),
                    jax.tree.leaves(_mlp().head), strict=True):
        np.testing.assert_array_equal(a, b)  # the head is the module's initial one


def test_fedbabu_finetune_trains_body_and_head():
    lr = 0.3
    algo = fedbabu(_mlp(), local_optimizer=lr)
    x, y = _node(8)
    params = (algo.model.shared, algo.model.personal)
    state = algo.finetune.init(params)
    state, _ = algo.finetune.step(state, Batch(x, y, jnp.ones(8, bool), 0), jax.random.key(0),
                                  "classification")
    grads = _full_gradient(algo.model, x, y, params)
    _close(state.params, jax.tree.map(lambda p, g: p - lr * g, params, grads))
    for new, old in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
        assert not np.allclose(new, old)


def test_fedbabu_engine_keeps_the_head_and_personalizes_it_by_finetuning():
    rng = np.random.default_rng(0)
    sizes = (5, 6, 14)
    data = FederatedData.from_nodes(
        [rng.normal(size=(n, DIM)).astype(np.float32) for n in sizes],
        [rng.integers(0, CLASSES, n).astype(np.int32) for n in sizes], num_classes=CLASSES)
    algo = fedbabu(_mlp(), local_optimizer=0.1)
    engine = Engine(algo, data, Federation(rounds=2, batch_size=4, finetune_steps=2, seed=0,
                                           rounds_per_sync=1))
    state, _ = engine.run(engine.init())
    kinds = engine.node_models(state)
    assert set(kinds) == {"global", "personalized"}
    for leaf, initial in zip(jax.tree.leaves(kinds["global"][1]),
                             jax.tree.leaves(algo.model.personal), strict=True):
        np.testing.assert_array_equal(leaf, np.broadcast_to(initial, leaf.shape))
    assert not np.allclose(jax.tree.leaves(kinds["global"][0])[0],
                           jax.tree.leaves(algo.model.shared)[0])  # the body trained
    for part in (0, 1):  # fine-tuning moved both the body and the head
        for tuned, trained in zip(jax.tree.leaves(kinds["personalized"][part]),
                                  jax.tree.leaves(kinds["global"][part]), strict=True):
            assert not np.allclose(tuned, trained)


# ----- FedBN -----


def test_fedbn_personal_parameters_are_the_normalization_layers():
    algo = fedbn(_mlp("layer"))
    assert _paths(algo.model.personal) == {"norms/0/scale/value", "norms/0/bias/value"}
    conv = fedbn(Conv1D(3, CLASSES, channels=4, kernel=3, norm="layer", rngs=nnx.Rngs(0)))
    assert {p.split("/")[0] for p in _paths(conv.model.personal)} == {"norms"}
    assert len(_paths(conv.model.personal)) == 4
    assert not any(p.startswith("norms") for p in _paths(conv.model.shared))


def test_fedbn_round_is_fedavg_with_the_norms_kept():
    """One full-batch step: the upload plus the kept norms are FedAvg's gradient step."""
    lr = 0.3
    algo = fedbn(_mlp("layer"), local_optimizer=lr)
    x, y = _node()
    upload, norms = _round(algo, x, y, epochs=1, batch_size=8)
    params = (algo.model.shared, algo.model.personal)
    grads = _full_gradient(algo.model, x, y, params)
    want = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    _close((_plus(algo.model.shared, upload), norms), want)


# ----- uploads hold the shared parameters only -----


PERSONAL = {
    "fedrep": {"head/kernel/value", "head/bias/value"},
    "fedbabu": {"head/kernel/value", "head/bias/value"},
    "lg_fedavg": {"body/0/kernel/value", "body/0/bias/value"},
    "fedbn": {"norms/0/scale/value", "norms/0/bias/value"},
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_uploads_hold_exactly_the_shared_parameters(name):
    algo = _build(name)
    shared, personal = _paths(algo.model.shared), _paths(algo.model.personal)
    assert personal == PERSONAL[name] and shared and not shared & personal
    x, y = _node()
    upload, node = jax.eval_shape(
        lambda s, x, y: node_round(algo, algo.broadcast(algo.init(jax.random.key(0), 1)), s, x,
                                   y, jax.random.key(1), Schedule(batch_size=4))[:2],
        algo.init_node(jax.random.key(0)), x, y)
    assert _paths(upload) == shared
    assert _paths(algo.init(jax.random.key(0), 3).params) == shared
    assert _paths(node) == (set() if name == "fedbabu" else personal)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_factories_take_the_cli_keywords(name):
    algo = _build(name, lr=0.1, server_optimizer=1.0, loss="hinge",
                  class_weights=np.ones(CLASSES, np.float32))
    x, y = _node()
    upload, _ = _round(algo, x, y)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(upload))


# ----- named errors -----


class _WithBatchNorm(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.body = nnx.Linear(DIM, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.bn(self.body(x))))


def test_factories_name_a_split_with_nothing_shared_or_nothing_personal():
    logreg = LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0))
    for name in ("fedrep", "fedbabu"):
        with pytest.raises(AlgorithmError, match=rf"^{name}: personal='head' matches every "
                                                 r"parameter of LogisticRegression"):
            FACTORIES[name](logreg)
        with pytest.raises(AlgorithmError, match=rf"^{name}: personal='nope' matches no "):
            FACTORIES[name](_mlp(), personal="nope")
    with pytest.raises(AlgorithmError, match=r"^lg_fedavg: personal=<all but 'head'> matches "
                                             r"no parameter of LogisticRegression"):
        lg_fedavg(logreg)
    with pytest.raises(AlgorithmError, match=r"^lg_fedavg: personal=True matches every "):
        lg_fedavg(_mlp(), personal=True)


def test_fedbn_without_normalization_layers_is_an_error():
    with pytest.raises(AlgorithmError,
                       match=r"^fedbn: MLP has no normalization layers \(LayerNorm, .*\), so "
                             r"every parameter would be shared and fedbn would be FedAvg; use "
                             r"a model with normalization layers, e\.g\. MLP\(\.\.\., "
                             r"norm=\"layer\"\)"):
        fedbn(_mlp())
    with pytest.raises(AlgorithmError, match="^fedbn: LogisticRegression has no normalization"):
        fedbn(LogisticRegression(DIM, CLASSES, rngs=nnx.Rngs(0)))


def test_batchnorm_modules_are_rejected_with_the_supported_layers_named():
    match = (r"^_WithBatchNorm keeps running statistics \(BatchStat variables bn/mean, bn/var, "
             r".*use nnx\.LayerNorm or nnx\.GroupNorm")
    for factory in (fedbn, fedavg, fedper):
        with pytest.raises(UnsupportedModel, match=match):
            factory(_WithBatchNorm())
    with pytest.raises(ValueError, match=match):  # a ValueError: the CLI prints it in one line
        models.Model.of(_WithBatchNorm())


# ----- normalization layers of the built-in models -----


def test_models_without_norm_keep_their_parameters():
    """norm=None is the model as it always was: same parameters, same initial values."""
    rngs = nnx.Rngs(0)
    first, second = nnx.Linear(DIM, 8, rngs=rngs), nnx.Linear(8, 5, rngs=rngs)
    head = nnx.Linear(5, CLASSES, rngs=rngs)
    mlp = MLP(DIM, (8, 5), CLASSES, rngs=nnx.Rngs(0))
    assert not hasattr(mlp, "norms")
    want = {"body": {0: nnx.state(first), 1: nnx.state(second)}, "head": nnx.state(head)}
    got = nnx.state(mlp)
    assert _paths(got) == _paths(want) and len(jax.tree.leaves(got)) == 6
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    conv = Conv1D(3, CLASSES, rngs=nnx.Rngs(0))
    assert {p.split("/")[0] for p in _paths(nnx.state(conv))} == {"body", "head"}
    assert _paths(nnx.state(models.build("mlp", (DIM,), CLASSES))) == _paths(nnx.state(
        MLP(DIM, (64,), CLASSES, rngs=nnx.Rngs(0))))


def test_layer_norm_adds_norms_and_keeps_the_other_initial_values():
    plain, normed = _mlp(), _mlp("layer")
    for a, b in zip(jax.tree.leaves(nnx.state(plain.body)), jax.tree.leaves(nnx.state(
            normed.body)), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(nnx.state(plain.head)), jax.tree.leaves(nnx.state(
            normed.head)), strict=True):
        np.testing.assert_array_equal(a, b)
    x = _node()[0] * 10 + 3
    hidden = x @ normed.body[0].kernel[...] + normed.body[0].bias[...][None]
    hidden = (hidden - hidden.mean(-1, keepdims=True)) / jnp.sqrt(
        hidden.var(-1, keepdims=True) + 1e-6)  # LayerNorm at its initial scale 1, bias 0
    np.testing.assert_allclose(normed(x), normed.head(jax.nn.relu(hidden)), rtol=1e-4,
                               atol=1e-5)
    windows = jnp.ones((2, 16, 3))
    conv = models.build("conv1d", (16, 3), CLASSES, norm="layer")
    assert conv(windows).shape == (2, CLASSES) and len(conv.norms) == 2
    with pytest.raises(ValueError, match=r"^logreg has no hidden layers to normalize"):
        models.build("logreg", (DIM,), CLASSES, norm="layer")
    with pytest.raises(ValueError, match=r"^unknown norm 'batch'; expected None or one of: "
                                         r"layer$"):
        models.build("mlp", (DIM,), CLASSES, norm="batch")
