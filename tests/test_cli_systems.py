"""The systems options of `fedmtl run` / `compare`: they reach `Federation.systems`, bad
values stop the run in one named line before anything trains, and a tiny run with stragglers
and dropouts records the participation history."""

import json

import numpy as np
import pytest
from cli_checks import TINY, assert_stops_before_training

from fedmtl import cli, systems
from fedmtl.systems import Systems


def _federation(*options, num_nodes=5):
    args = cli.make_parser().parse_args(["compare", *options])
    cli.check_systems_options(args)
    return cli.federation(args, num_nodes)


def test_no_systems_option_is_the_plain_federation():
    fed = _federation()
    assert fed.systems == Systems() and fed.systems.is_neutral
    assert _federation("--stragglers", "0", "--join-by", "0").systems.is_neutral


def test_systems_options_reach_the_federation():
    s = _federation(
        "--sampling", "poisson", "--sample-rate", "0.3", "--stragglers", "0.9",
        "--straggler-work", "0.25", "0.75", "--straggler-unit", "epoch", "--straggler-policy",
        "keep", "--dropout", "0.2", "--period", "4", "--uptime", "0.5", "--bandwidth", "1e6",
        "--deadline", "30", "--capacity", "4", "--seed", "3").systems
    assert s == Systems(sampling="poisson", sample_rate=0.3, stragglers=0.9,
                        straggler_work=(0.25, 0.75), straggler_unit="epoch",
                        straggler_policy="keep", dropout=0.2, period=4, uptime=0.5,
                        bandwidth=1e6, deadline=30.0, capacity=4)
    assert not s.is_neutral


def test_churn_and_speeds_are_drawn_per_node_from_the_seed():
    s = _federation("--join-by", "3", "--stay", "4", "--speed-spread", "0.5", "--seed", "7",
                    num_nodes=6).systems
    join, leave = systems.churn(6, join_by=3, stay=4, seed=7)
    np.testing.assert_array_equal(s.join, join)
    np.testing.assert_array_equal(s.leave, leave)
    np.testing.assert_array_equal(s.speed, systems.lognormal_speeds(6, 0.5, seed=7))
    stay = _federation("--stay", "2", num_nodes=4).systems  # everyone from round 0
    np.testing.assert_array_equal(stay.join, np.zeros(4))
    np.testing.assert_array_equal(stay.leave, np.full(4, 2))


@pytest.mark.parametrize(
    "options, match",
    [
        (["--stragglers", "1.5"], "argument --stragglers: must be <= 1"),
        (["--dropout", "-0.1"], "argument --dropout: must be >= 0"),
        (["--sampling", "poisson", "--sample-rate", "0"], "argument --sample-rate: must be > 0"),
        (["--deadline", "0"], "argument --deadline: must be > 0"),
        (["--stay", "0"], "argument --stay: must be >= 1"),
        (["--sample-rate", "0.5"], "--sample-rate applies to --sampling poisson only"),
        (["--sampling", "poisson"], "--sampling poisson needs --sample-rate"),
        (["--sampling", "poisson", "--sample-rate", "0.5", "--cohort-size", "2"],
         "--cohort-size does not apply to --sampling poisson"),
        (["--capacity", "2"], "--capacity applies to --sampling poisson only"),
        (["--sampling", "weighted"], "--sampling weighted needs --cohort-size"),
        (["--uptime", "0.5"], "--uptime needs --period"),
        (["--straggler-work", "0", "0.5"], "--straggler-work applies to --stragglers only"),
        (["--stragglers", "0.5", "--straggler-work", "0.8", "0.2"],
         "--straggler-work 0.8 0.2: expected A <= B"),
        (["--dropout", "1"], "cohort would be empty in every round: every node that could "
         "take part drops out"),
        (["--stragglers", "1"], "every node straggles (stragglers 1) and the drop policy"),
        (["--deadline", "0.5"], "no node can take a step and upload its 0 bytes within the "
         "deadline 0.5"),
        # local uploads nothing, fedavg its model: the deadline is fedavg's alone
        (["--deadline", "3", "--bandwidth", "100"], "the cohort would be empty in every round"),
        # round(0.6 x 1) = 1: the one sampled node straggles in every round, and is dropped
        (["--cohort-size", "1", "--stragglers", "0.6"], "no node reports in any of the 2 rounds "
         "(per round 1.0 sampled, 1.0 dropped; under straggler_policy 'drop' a cohort of "
         "stragglers reports nothing)"),
        (["--sampling", "poisson", "--sample-rate", "1", "--capacity", "2"],
         "round 1 would sample more nodes than the Poisson cohort's 2 slots; raise "
         "Systems.capacity (CLI: --capacity)"),
    ],
)
def test_bad_systems_options_stop_before_training_in_one_line(options, match, capsys,
                                                              tmp_path, monkeypatch):
    assert_stops_before_training(options, match, "systems", capsys, tmp_path, monkeypatch)


def test_systems_line_summarises_the_history():
    """Means per round; the work share skips round 3, which assigned nothing."""
    history = {"train_loss": np.array([1.0, 0.5, 0.0]), "sampled": np.array([3, 3, 0]),
               "participants": np.array([1, 2, 0]), "dropped": np.array([2, 1, 0]),
               "stragglers": np.array([0, 1, 0]), "work": np.array([0.25, 0.5, 0.0]),
               "round_time": np.array([5.0, 4.0, 0.0]), "time": np.array([5.0, 9.0, 9.0])}
    assert cli.systems_line("fedavg", history) == (
        "fedavg: per round 2.0 sampled, 1.0 reported, 1.0 dropped, 0.3 stragglers, 38% of the "
        "assigned work done; simulated time 9 (3 per round)")
    nobody = {k: v[2:] for k, v in history.items()}
    assert "0.0 sampled" in cli.systems_line("fedavg", nobody)
    assert "no work assigned" in cli.systems_line("fedavg", nobody)
    assert cli.systems_line("fedavg", {"train_loss": np.zeros(0)}) is None


def test_run_checks_the_systems_options_too(capsys, tmp_path):
    assert cli.main(["run", *TINY, "--dropout", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedmtl: error: systems: the cohort would be empty")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_compare_with_stragglers_and_dropouts_records_participation(tmp_path, capsys):
    """The local baseline alone (one compilation: the suite's budget is tight) runs under the
    systems model like any algorithm; results.json records its participation per round."""
    out = tmp_path / "results"
    argv = ["compare", "--algorithms", "local", *TINY, "--stragglers", "0.5",
            "--straggler-policy", "keep", "--dropout", "0.2", "--out", str(out)]
    assert cli.main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stdout + stderr
    assert "systems: local: per round 3.0 sampled" in " ".join(stdout.split())
    doc = json.loads((out / "results.json").read_text())
    s = doc["federation"]["systems"]
    assert (s["stragglers"], s["straggler_policy"], s["dropout"]) == (0.5, "keep", 0.2)
    assert s["bandwidth"] == "inf"  # strict JSON: no Infinity
    history = doc["algorithms"]["local"]["history"]
    keys = ("sampled", "participants", "dropped", "stragglers", "work", "round_time", "time")
    assert all(len(history[k]) == 2 for k in keys), history
    assert history["sampled"] == [3, 3]
    for r in range(2):
        assert history["participants"][r] + history["dropped"][r] == 3  # every node has data
        assert 0 <= history["work"][r] <= 1
    assert history["time"][-1] == pytest.approx(sum(history["round_time"]))
