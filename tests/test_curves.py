"""Learning curves (`Federation.eval_every`) and checkpoint chunks (`run(checkpoint_every=)`):
measured inside the fused scan, they change nothing else about a run."""

import jax
import numpy as np
import pytest
from tiny import BASE, data, host_copy, mlp

from fedmtl import algorithms
from fedmtl.engine import Engine, curves

ALGORITHMS = {"fedavg": lambda: algorithms.fedavg(mlp()),
              "mocha": lambda: algorithms.mocha(mlp())}


@pytest.mark.parametrize("name", ["fedavg", pytest.param("mocha", marks=pytest.mark.slow)])
def test_curves_equal_evaluation_after_those_rounds_and_change_nothing(name):
    d = data()
    fed = BASE._replace(rounds=5)
    plain = Engine(ALGORITHMS[name](), d, fed)
    state, history = plain.run(plain.init())
    state = host_copy(state)
    traced = Engine(ALGORITHMS[name](), d, fed._replace(eval_every=2))
    state_c, history_c = traced.run(traced.init())
    # training is untouched: same state, same per-round metrics
    jax.tree.map(np.testing.assert_array_equal, state, host_copy(state_c))
    for key, values in history.items():
        np.testing.assert_array_equal(values, history_c[key])
    found = curves(history_c)
    np.testing.assert_array_equal(found["round"], [2, 4])
    for rounds, column in ((2, 0), (4, 1)):
        at = plain.evaluate(plain.run(plain.init(), rounds)[0])
        assert set(found) - {"round"} == set(at)
        for kind, metrics in found.items():
            if kind == "round":
                continue
            assert set(metrics) == set(at[kind]) - {"auc"}
            for metric, values in metrics.items():
                assert values.shape == (d.num_nodes, 2)
                np.testing.assert_allclose(values[:, column], at[kind][metric], rtol=1e-6)


def test_no_curves_without_eval_every():
    engine = Engine(algorithms.fedavg(mlp()), data(), BASE)
    assert curves(engine.run(engine.init())[1]) == {}


def test_progress_callback_reports_the_latest_curve_point():
    engine = Engine(algorithms.fedavg(mlp()), data(), BASE._replace(rounds=3, eval_every=2))
    # BASE syncs after every round
    seen = []
    engine.run(engine.init(), callback=lambda r, m: seen.append((r, m)))
    assert [r for r, _ in seen] == [1, 2, 3]
    assert "eval/global/accuracy" not in seen[0][1]
    assert 0 <= seen[1][1]["eval/global/accuracy"] <= 1
    assert seen[1][1]["eval_round"] == 2


@pytest.mark.slow
def test_sweep_curves_carry_the_seed_axis():
    d = data()
    engine = Engine(algorithms.fedavg(mlp()), d, BASE._replace(rounds=2, eval_every=1))
    _, history = engine.sweep([0, 1])
    found = curves(history)
    assert found["round"].shape == (2, 2)
    assert found["global"]["accuracy"].shape == (2, d.num_nodes, 2)
    # whether a round is evaluated is one decision for all seeds: a real conditional, not a
    # select that would evaluate every round
    states = engine._init_many(np.stack([engine._seed(s) for s in (0, 1)]), {})
    program = engine._run_many.lower(states, *engine._inputs(), np.int32(0), 1).as_text()
    assert "stablehlo.case" in program
    one = Engine(algorithms.fedavg(mlp()), d, BASE._replace(rounds=2, eval_every=1, seed=1))
    single = curves(one.run(one.init())[1])
    np.testing.assert_allclose(found["global"]["loss"][1], single["global"]["loss"], rtol=1e-6)


def test_checkpoint_chunks_change_nothing_and_hook_at_every_k_and_the_end():
    d = data()
    fed = BASE._replace(rounds=5, rounds_per_sync=3)
    engine = Engine(algorithms.fedavg(mlp()), d, fed)
    state, history = engine.run(engine.init())
    state = host_copy(state)
    saved = []
    hooked = Engine(algorithms.fedavg(mlp()), d, fed)
    state_k, history_k = hooked.run(
        hooked.init(), checkpoint_every=2,
        on_checkpoint=lambda s, h: saved.append((int(s.round), len(h["train_loss"]))))
    assert saved == [(2, 2), (4, 4), (5, 5)]
    jax.tree.map(np.testing.assert_array_equal, state, host_copy(state_k))
    assert history.keys() == history_k.keys()
    for key, values in history.items():
        np.testing.assert_array_equal(values, history_k[key])


def test_bad_eval_and_checkpoint_intervals_are_named():
    with pytest.raises(ValueError, match="eval_every must be >= 0"):
        Engine(algorithms.fedavg(mlp()), data(), BASE._replace(eval_every=-1))
    engine = Engine(algorithms.fedavg(mlp()), data(), BASE)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        engine.run(engine.init(), checkpoint_every=0)
    with pytest.raises(ValueError, match="on_checkpoint needs checkpoint_every"):
        engine.run(engine.init(), on_checkpoint=lambda s, h: None)
