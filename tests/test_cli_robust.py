"""The robustness options of `fedmtl run` / `compare`: they reach `Federation.aggregator` and
`Federation.attack`, options that do not apply or rules that cannot work stop the run in one
named line before anything trains, and a tiny run under attack writes a strict-JSON
results.json with the rule, the attack and the attackers per round."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_checks import TINY, assert_stops_before_training

from fedmtl import attacks, cli, robust
from fedmtl.data import FederatedData

UPLOADS = {"a": np.arange(12, dtype=np.float32).reshape(6, 2) - 5.0}


def _federation(*options, num_nodes=10):
    args = cli.make_parser().parse_args(["compare", *options])
    cli.check_systems_options(args)
    cli.check_robustness_options(args)
    return cli.federation(args, num_nodes)


def _record(*options, num_nodes=10):
    args = cli.make_parser().parse_args(["compare", *options])
    return cli.robustness(args, num_nodes)[2]


def _same_rule(got: robust.Aggregator, want: robust.Aggregator):
    """Equal names and equal results on a fixed round (factories return new closures)."""
    assert got.name == want.name
    w = jnp.asarray([1.0, 2.0, 0.0, 1.0, 1.0, 3.0])
    up = {"a": jnp.asarray(UPLOADS["a"])}
    key = jax.random.key(0)
    np.testing.assert_allclose(np.asarray(got.aggregate(up, w, key)["a"]),
                               np.asarray(want.aggregate(up, w, key)["a"]), rtol=1e-6)


def test_no_robustness_option_is_the_plain_federation():
    fed = _federation()
    assert fed.aggregator is None and fed.attack is None
    assert _record() == {"aggregator": None, "attack": None}


@pytest.mark.parametrize("options, want, record", [
    (["--aggregator", "mean"], robust.mean(), {"name": "mean"}),
    (["--aggregator", "median"], robust.median(), {"name": "median"}),
    (["--aggregator", "trimmed_mean"], robust.trimmed_mean(0.1),
     {"name": "trimmed_mean", "trim": 0.1}),
    (["--aggregator", "trimmed_mean", "--trim", "0.3"], robust.trimmed_mean(0.3),
     {"name": "trimmed_mean", "trim": 0.3}),
    (["--aggregator", "krum"], robust.krum(1), {"name": "krum", "byzantine": 1}),
    (["--aggregator", "multi_krum", "--byzantine", "2"], robust.multi_krum(2),
     {"name": "multi_krum", "byzantine": 2, "select": None}),
    (["--aggregator", "geometric_median"], robust.geometric_median(),
     {"name": "geometric_median", "iterations": 10, "nu": 1e-6}),
    (["--aggregator", "norm_bound", "--max-norm", "2.5"], robust.norm_bound(2.5),
     {"name": "norm_bound", "max_norm": 2.5}),
    (["--aggregator", "centered_clip", "--tau", "0.5"], robust.centered_clip(0.5),
     {"name": "centered_clip", "tau": 0.5, "iterations": 3}),
])
def test_aggregator_options_reach_the_federation(options, want, record):
    with jax.numpy_rank_promotion("allow"):  # a known bug: see test_robust.py
        _same_rule(_federation(*options).aggregator, want)
    assert _record(*options) == {"aggregator": record, "attack": None}


@pytest.mark.parametrize("options, params", [
    (["--attack", "sign_flip", "--attackers", "0.2"], {"fraction": 0.2, "scale": 1.0}),
    (["--attack", "sign_flip", "--attackers", "0.2", "--attack-scale", "3"],
     {"fraction": 0.2, "scale": 3.0}),
    (["--attack", "scaled", "--attackers", "0.3", "--attack-scale", "5"],
     {"fraction": 0.3, "scale": 5.0}),
    (["--attack", "gaussian", "--attackers", "0.1", "--attack-std", "2"],
     {"fraction": 0.1, "std": 2.0}),
    (["--attack", "little_is_enough", "--attackers", "0.4"], {"fraction": 0.4, "z": None}),
    (["--attack", "label_flip", "--attackers", "0.2"], {"fraction": 0.2}),
])
def test_attack_options_reach_the_federation(options, params):
    fed = _federation(*options, "--seed", "3")
    name = options[1]
    want = attacks.ATTACKS[name](**params)
    assert (fed.attack.name, fed.attack.fraction) == (want.name, want.fraction)
    assert (fed.attack.corrupt is None) == (name == "label_flip")
    if name in ("sign_flip", "scaled"):  # the scale reached the closure
        up = {"a": jnp.asarray(UPLOADS["a"])}
        on = jnp.ones(6, bool)
        np.testing.assert_allclose(
            np.asarray(fed.attack.corrupt(up, jnp.ones(6), on, jax.random.key(0))["a"]),
            np.asarray(want.corrupt(up, jnp.ones(6), on, jax.random.key(0))["a"]))
    count = int(attacks.attackers(params["fraction"], 10, 3).sum())
    assert _record(*options, "--seed", "3")["attack"] == {"name": name, **params,
                                                          "attackers": count}


def test_krum_tolerates_the_attackers_by_default():
    record = _record("--aggregator", "krum", "--attack", "sign_flip", "--attackers", "0.3",
                     num_nodes=20)
    assert record["aggregator"] == {"name": "krum", "byzantine": 6}
    assert record["attack"]["attackers"] == 6
    given = _record("--aggregator", "krum", "--byzantine", "2", "--attack", "sign_flip",
                    "--attackers", "0.3", num_nodes=20)
    assert given["aggregator"]["byzantine"] == 2


def test_the_robustness_line():
    assert cli.robustness_line({"aggregator": None, "attack": None}) is None
    record = _record("--aggregator", "trimmed_mean", "--attack", "sign_flip", "--attackers",
                     "0.2", num_nodes=10)
    assert cli.robustness_line(record) == ("aggregator trimmed_mean, trim 0.1; sign_flip, "
                                           "scale 1 by 2 node(s) (20%)")
    record = _record("--aggregator", "multi_krum", "--attack", "little_is_enough",
                     "--attackers", "0.2", num_nodes=10)  # None parameters are left out
    assert cli.robustness_line(record) == ("aggregator multi_krum, byzantine 2; "
                                           "little_is_enough by 2 node(s) (20%)")


@pytest.mark.parametrize(
    "options, match",
    [
        (["--aggregator", "krum_mean"], "argument --aggregator: invalid choice: 'krum_mean'"),
        (["--trim", "0.5", "--aggregator", "trimmed_mean"], "argument --trim: must be < 0.5"),
        (["--attackers", "1", "--attack", "sign_flip"], "argument --attackers: must be < 1"),
        (["--attackers", "-0.1", "--attack", "sign_flip"],
         "argument --attackers: must be >= 0"),
        (["--attack-std", "-1", "--attack", "gaussian", "--attackers", "0.2"],
         "argument --attack-std: must be >= 0"),
        (["--aggregator", "norm_bound", "--max-norm", "0"], "argument --max-norm: must be > 0"),
        (["--trim", "0.2"], "--trim applies to --aggregator trimmed_mean only"),
        (["--aggregator", "median", "--trim", "0.2"],
         "--trim applies to --aggregator trimmed_mean only, not median"),
        (["--aggregator", "trimmed_mean", "--byzantine", "1"],
         "--byzantine applies to --aggregator krum / multi_krum only, not trimmed_mean"),
        (["--max-norm", "1"], "--max-norm applies to --aggregator norm_bound only"),
        (["--aggregator", "krum", "--tau", "1"],
         "--tau applies to --aggregator centered_clip only, not krum"),
        (["--aggregator", "norm_bound"], "--aggregator norm_bound needs --max-norm M"),
        (["--aggregator", "centered_clip"], "--aggregator centered_clip needs --tau T"),
        (["--attack", "sign_flip"], "--attack sign_flip needs --attackers FRACTION"),
        (["--attackers", "0.2"], "--attackers applies with --attack only"),
        (["--attack-scale", "2"], "--attack-scale applies to --attack sign_flip / scaled only"),
        (["--attack", "gaussian", "--attackers", "0.2", "--attack-scale", "2"],
         "--attack-scale applies to --attack sign_flip / scaled only, not gaussian"),
        (["--attack", "sign_flip", "--attackers", "0.2", "--attack-std", "2"],
         "--attack-std applies to --attack gaussian only, not sign_flip"),
        # 3 nodes per round <= 2f + 2 = 4
        (["--aggregator", "krum"], "krum: Krum needs more nodes per round than 2f + 2 = 4 "
         "(f = 1 Byzantine nodes), the cohort has 3"),
        (["--aggregator", "multi_krum", "--byzantine", "0", "--cohort-size", "2"],
         "multi_krum: Krum needs more nodes per round than 2f + 2 = 2"),
    ],
)
def test_bad_robustness_options_stop_before_training_in_one_line(options, match, capsys,
                                                                 tmp_path, monkeypatch):
    assert_stops_before_training(options, match, "robustness", capsys, tmp_path, monkeypatch)


def test_label_flip_on_regression_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    """The data attack needs class labels: the engine's AttackError, before training."""
    rng = np.random.default_rng(0)
    regression = FederatedData.from_nodes(
        [rng.normal(size=(8, 4)).astype(np.float32) for _ in range(2)],
        [rng.normal(size=8).astype(np.float32) for _ in range(2)], task="regression")
    monkeypatch.setattr(cli, "load_data", lambda args: regression)
    monkeypatch.setattr(cli, "compare", lambda *a, **k: pytest.fail("trained"))
    argv = ["run", "--algorithm", "local", "--model", "linear", "--rounds", "1",
            "--attack", "label_flip", "--attackers", "0.5", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == ("fedmtl: error: label_flip: flips class labels; the data's task is "
                   "regression\n")


@pytest.mark.slow  # a full CLI run; the systems CLI test runs one in the default suite
def test_compare_under_attack_records_the_rule_the_attack_and_the_attackers(tmp_path,
                                                                             capsys):
    """One tiny end-to-end run (fedavg beside the local baseline): results.json is strict
    JSON and records the rule, the attack and the attacking reporters per round."""
    out = tmp_path / "results"
    argv = ["compare", "--algorithms", "fedavg", *TINY, "--nodes", "5", "--aggregator",
            "trimmed_mean", "--attack", "sign_flip", "--attackers", "0.2", "--out", str(out)]
    assert cli.main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stdout + stderr
    assert ("robustness: aggregator trimmed_mean, trim 0.1; sign_flip, scale 1 by 1 node(s) "
            "(20%)"
            in " ".join(stdout.split()))
    text = (out / "results.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    rule = {"name": "trimmed_mean", "trim": 0.1}
    attack = {"name": "sign_flip", "fraction": 0.2, "scale": 1.0, "attackers": 1}
    assert doc["federation"]["aggregator"] == rule
    assert doc["federation"]["attack"] == attack
    assert doc["config"]["robustness"] == {"aggregator": rule, "attack": attack}
    options = doc["config"]["options"]
    assert (options["aggregator"], options["attack"], options["attackers"]) == (
        "trimmed_mean", "sign_flip", 0.2)
    for name in ("local", "fedavg"):
        assert doc["algorithms"][name]["history"]["attackers"] == [1, 1], name
