"""The privacy options of `fedmtl run` / `compare`: they reach `Federation.privacy` and
`Federation.secure_aggregation`, bad or contradictory options stop the run in one named line
before anything trains, and a tiny private run states its ε in the table, in one line per
algorithm and in a strict-JSON results.json."""

import json
import math

import pytest
from cli_checks import TINY, assert_stops_before_training

from fedmtl import cli, privacy
from fedmtl.cli_privacy import check_privacy_options, privacy_line
from fedmtl.secagg import SecureAggregation


def _federation(*options, num_nodes=10):
    args = cli.make_parser().parse_args(["compare", *options])
    check_privacy_options(args)
    return cli.federation(args, num_nodes)


def test_no_privacy_option_is_the_plain_federation():
    fed = _federation()
    assert fed.privacy is None and fed.secure_aggregation is None


@pytest.mark.parametrize("options, want", [
    (["--dp", "central", "--epsilon", "4"], privacy.central(epsilon=4.0)),
    (["--dp", "central", "--noise-multiplier", "1.1", "--clip", "0.5", "--delta", "1e-6",
      "--adaptive-clip", "0.5", "--weight-cap", "100", "--accountant", "pld",
      "--per-layer-clip"],
     privacy.central(clip=0.5, noise_multiplier=1.1, delta=1e-6, per_layer=True,
                     weight_cap=100.0, target_quantile=0.5, accountant="pld")),
    (["--dp", "local", "--noise-multiplier", "0"], privacy.local(noise_multiplier=0.0)),
])
def test_dp_options_reach_the_federation(options, want):
    assert _federation(*options).privacy == want


def test_secure_aggregation_options_reach_the_federation():
    fed = _federation("--secure-aggregation", "--secagg-neighbours", "4", "--secagg-bits",
                      "24", "--secagg-clip", "3")
    assert fed.secure_aggregation == SecureAggregation(neighbours=4, bits=24, clip=3.0)
    assert _federation("--secure-aggregation").secure_aggregation == SecureAggregation(
        clip=10.0)


@pytest.mark.parametrize(
    "options, match",
    [
        (["--epsilon", "4"], "--epsilon need(s) --dp central or --dp local"),
        (["--clip", "1", "--delta", "1e-5"], "--delta, --clip need(s) --dp"),
        (["--dp", "central"], "--dp central needs exactly one of --epsilon E"),
        (["--dp", "local", "--epsilon", "1", "--noise-multiplier", "1"], "exactly one of"),
        (["--dp", "local", "--noise-multiplier", "1", "--adaptive-clip", "0.5"],
         "--adaptive-clip applies to --dp central only"),
        (["--dp", "central", "--epsilon", "0"], "argument --epsilon: must be > 0"),
        (["--dp", "central", "--noise-multiplier", "-1"],
         "argument --noise-multiplier: must be >= 0"),
        (["--dp", "central", "--epsilon", "1", "--delta", "1"], "argument --delta: must be < 1"),
        (["--dp", "central", "--epsilon", "1", "--clip", "0"], "argument --clip: must be > 0"),
        (["--secagg-neighbours", "2"], "--secagg-neighbours need(s) --secure-aggregation"),
        (["--secure-aggregation", "--dp", "central", "--epsilon", "4"],
         "use --dp local with it"),
        (["--secure-aggregation", "--secagg-bits", "40"], "argument --secagg-bits"),
        # reached only once the engine is built, still before training
        (["--dp", "central", "--epsilon", "1e-4", "--delta", "1e-10"], "out of reach"),
        (["--dp", "central", "--epsilon", "4", "--aggregator", "median"],
         "cannot be combined with the median rule"),
        (["--dp", "central", "--epsilon", "4", "--accountant", "pld", "--cohort-size", "2"],
         "pld accountant does not cover a fixed-size cohort"),
        (["--secure-aggregation", "--secagg-neighbours", "3"], "neighbours"),
        (["--secure-aggregation", "--aggregator", "median"], "the median rule needs each"),
    ],
)
def test_bad_privacy_options_stop_before_training_in_one_line(options, match, capsys,
                                                              tmp_path, monkeypatch):
    assert_stops_before_training(options, match, "privacy", capsys, tmp_path, monkeypatch)


def test_the_privacy_line_states_the_guarantee():
    report = {"where": "central", "noise_multiplier": 1.4581, "clip": 1.0, "adaptive": False,
              "delta": 1e-5, "epsilon": 3.99999, "accountant": "rdp", "rounds": 20,
              "sampling": "Poisson sampling, q = 0.2"}
    assert privacy_line(report) == (
        "central DP, noise multiplier 1.458, clip 1: ε = 4 at δ = 1e-05 after 20 rounds "
        "(rdp; Poisson sampling, q = 0.2)")
    assert "∞ (no noise)" in privacy_line({**report, "epsilon": math.inf})
    assert privacy_line({}) is None


@pytest.mark.slow  # a full CLI run; test_privacy.py runs the engine under DP by default
def test_compare_under_dp_reports_epsilon(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["compare", "--algorithms", "fedavg", *TINY, "--dp", "central", "--epsilon", "8",
            "--out", str(out)]
    assert cli.main(argv) == 0
    stdout = " ".join(capsys.readouterr().out.split())
    assert "privacy: local: ε = 0: nothing leaves the nodes" in stdout
    assert "privacy: fedavg: central DP, noise multiplier" in stdout and "ε = 8" in stdout
    doc = json.loads((out / "results.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert doc["federation"]["privacy"]["epsilon"] == 8.0
    fedavg = doc["algorithms"]["fedavg"]
    assert fedavg["privacy"]["epsilon"] <= 8.0
    assert len(fedavg["history"]["epsilon"]) == 2
    assert fedavg["history"]["epsilon"][-1] == pytest.approx(fedavg["privacy"]["epsilon"])
