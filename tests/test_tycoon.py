"""Turbofan Tycoon: the replay economics on hand-made engines, and a smoke run of the CLI."""

import json

import jax
import numpy as np
import pytest

from fedmtl import cli, tycoon
from fedmtl.models import Model, build
from fedmtl.tycoon import (
    Economics,
    Predictor,
    corrective_stops,
    episodes_needed,
    predictive_stop,
    preventive_stops,
    replay,
    slot_orders,
)

ECON = Economics()  # $250 per cycle; failure $60k + 60 down; maintenance $10k + 20 down


def one_slot(stops, lives, horizon, economics=ECON):
    """Replay of one factory with one slot cycling through the given pool."""
    stops, lives = np.atleast_2d(stops), np.asarray(lives)
    orders = slot_orders(1, 1, lives.size, episodes_needed(horizon, economics))
    return replay(stops, lives, orders, economics, horizon)


def test_corrective_profit_by_hand():
    lives = np.array([100])
    # Engine 1 runs cycles 0-99 and fails (-$60k), the slot is down in cycles 100-159, and
    # engine 2 runs cycles 160-259 and fails at the end of cycle 259.
    r = one_slot(corrective_stops(lives), lives, horizon=260)
    assert r.profit[0] == 2 * (100 * 250 - 60_000)
    assert r.failures[0] == 2 and r.maintenances[0] == 0
    assert r.running[0] == 200
    # Cut at 250 cycles: the second engine ran 90 cycles and has not failed yet.
    r = one_slot(corrective_stops(lives), lives, horizon=250)
    assert r.profit[0] == 100 * 250 - 60_000 + 90 * 250
    assert r.failures[0] == 1


def test_cumulative_profit_ends_at_the_total():
    lives = np.array([120, 250, 90])
    stops = np.array([[120, 193, 90], [100, 240, 85]])
    orders = slot_orders(2, 4, 3, episodes_needed(1000, ECON), seed=3)
    r = replay(stops, lives, orders, ECON, 1000)
    assert r.cumulative.shape == (1000,)
    assert r.cumulative[-1] == pytest.approx(r.profit.sum())
    # The first cycles only earn: 2 factories x 4 slots x $250 per cycle.
    np.testing.assert_allclose(r.cumulative[:5], 8 * 250 * np.arange(1, 6))


def test_preventive_maintains_at_the_interval():
    lives = np.array([300, 150, 193])
    stops = preventive_stops(lives, 193)
    np.testing.assert_array_equal(stops, [193, 150, 193])
    # 300-cycle engine: maintained after 193 cycles, never fails.
    r = one_slot(stops[:1], lives[:1], horizon=213)
    assert (r.maintenances[0], r.failures[0]) == (1, 0)
    assert r.profit[0] == 193 * 250 - 10_000
    # An engine whose life equals the interval fails before it can be maintained.
    r = one_slot(stops[2:], lives[2:], horizon=193)
    assert (r.maintenances[0], r.failures[0]) == (0, 1)


def test_perfect_oracle_never_fails():
    lives = np.arange(2, 400)
    stops = np.array([predictive_stop(life - 1 - np.arange(life), 10.0) for life in lives])
    assert np.all(stops < lives)
    # Maintained in the first cycle whose true RUL is below 10: RUL 9 (or earlier if short).
    np.testing.assert_array_equal(lives - stops, np.minimum(9, lives - 1))
    orders = slot_orders(3, 4, lives.size, episodes_needed(5000, ECON), seed=1)
    r = replay(np.broadcast_to(stops, (3, lives.size)), lives, orders, ECON, 5000)
    assert r.failures.sum() == 0 and r.maintenances.sum() > 0


def test_predictor_that_never_alarms_runs_to_failure():
    assert predictive_stop(np.full(50, 30.0), 10.0) == 50
    assert predictive_stop(np.array([40.0, 5.0, 3.0]), 10.0) == 2
    # A one-cycle engine fails in its only cycle whatever the prediction.
    assert predictive_stop(np.array([0.0]), 10.0) == 1


def test_slot_orders_cycle_through_the_pool():
    orders = slot_orders(2, 4, 10, 6, seed=0)
    assert orders.shape == (2, 4, 6)
    for f in range(2):
        seq = orders[f].T.ravel()  # engines in the order the 4 slots draw them
        np.testing.assert_array_equal(np.sort(seq[:10]), np.arange(10))


def test_replay_rejects_impossible_stops():
    with pytest.raises(ValueError, match="stop cycles"):
        one_slot(np.array([[101]]), np.array([100]), 200)


def test_diverged_model_raises_instead_of_never_alarming():
    model = Model.of(build("mlp", (16,), 1, hidden=(4,)), personal=None)
    nan = jax.tree.map(lambda a: a * np.nan, model.shared)
    predictor = Predictor("fedavg", model, ((nan, model.personal),), y_mean=0.0, y_scale=100.0,
                          seconds=0.0)
    with pytest.raises(FloatingPointError, match="fedavg: non-finite"):
        predictor.predict(0, np.zeros((3, 16), np.float32))


def test_predictions_come_back_in_the_units_of_the_raw_targets():
    """The Tycoon scales targets with FederatedData's one mechanism (y_mean, y_scale): a model
    that outputs 0 predicts y_mean cycles, one that outputs 1 predicts y_mean + y_scale."""
    model = Model.of(build("mlp", (16,), 1, hidden=(4,)), personal=None)
    zero = jax.tree.map(np.zeros_like, model.shared)
    predictor = Predictor("fedavg", model, ((zero, model.personal),), y_mean=120.0, y_scale=70.0,
                          seconds=0.0)
    np.testing.assert_allclose(predictor.predict(0, np.ones((3, 16), np.float32)), 120.0)
    assert not hasattr(tycoon, "scale_targets")  # no second scaling mechanism


@pytest.mark.slow
def test_cli_smoke(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDMTL_DATA", raising=False)  # FD001/FD003 are shipped
    plot = tmp_path / "plot.png"
    code = cli.main([
        "turbofan", "--factories", "4", "--rounds", "1", "--finetune-steps", "2",
        "--horizon", "300", "--out", str(tmp_path), "--plot", str(plot),
    ])
    assert code == 0
    assert plot.stat().st_size > 0
    result = json.loads((tmp_path / "turbofan_tycoon.json").read_text())
    assert set(result["strategies"]) == {
        "corrective", "preventive", "local", "federated", "fedper", "fine-tuned", "oracle"
    }
    assert result["strategies"]["corrective"]["maintenances"] == 0
    assert result["strategies"]["oracle"]["failures"] == 0


def test_cli_rejects_bad_plot_name(tmp_path, capsys):
    code = cli.main(["turbofan", "--out", str(tmp_path), "--plot", str(tmp_path / "p.txt")])
    assert code == 2
    assert "--plot" in capsys.readouterr().err
