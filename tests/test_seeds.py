"""Seed sweeps (`compare_seeds`, `fedmtl compare --seeds S`): each seed's results equal its own
run, the summary is the mean ± standard error over seeds, and the CLI writes a folder per
seed that `fedmtl rerun` reproduces."""

import dataclasses
import json

import numpy as np
import pytest
from rich.console import Console
from tiny import BASE, CLASSES, DIM, assert_close, assert_equal, data, host_copy

from fedmtl import algorithms, cli, cli_tooling
from fedmtl.cli_seeds import seeds_of
from fedmtl.experiment import SeedComparison, compare_seeds, run_algorithm
from fedmtl.models import MLP
from fedmtl.output import ResultsFolder
from fedmtl.report import mean_se, seeds_table, summarize, summarize_seeds

# The tiny problem of test_report_cli.py and test_tooling_cli.py.
TINY = ["--nodes", "3", "--max-node-size", "60", "--rounds", "2", "--hidden", "4"]
FED = BASE._replace(eval_every=1)  # learning curves: the history with a node axis


def _algorithm(name: str, **kwargs) -> algorithms.Algorithm:
    from flax import nnx

    return algorithms.ALGORITHMS[name](MLP(DIM, (8,), CLASSES, rngs=nnx.Rngs(0)),
                                       local_optimizer=0.1, **kwargs)


def test_each_seed_equals_its_own_run_and_a_diverging_algorithm_fails_alone():
    """Per seed s: state and history (learning curves included) bit for bit those of
    `run_algorithm` with federation seed s, test metrics to rtol 1e-6 (the vmapped evaluation
    sums in another order). A broken FedAvg (server learning rate 1e30) run first fails as a
    whole, naming the seed, and the sound one still runs (one test: compiling is the cost)."""
    tiny, algo = data(), _algorithm("fedavg")
    broken = _algorithm("fedavg", server_optimizer=1e30)._replace(name="broken")
    rounds, done = [], []
    sweep = compare_seeds([broken, algo], tiny, FED, [0, 3],
                          lambda n, r, m: rounds.append((n, r, m)),
                          on_done=lambda s: done.append((s.names, len(s.failures))))
    assert sweep.seeds == (0, 3) and sweep.names == ["fedavg"]
    (failure,) = sweep.failures
    assert failure.name == "broken" and "training diverged" in failure.error
    assert "(seed 0)" in failure.error and failure.seconds > 0
    assert all(run.failures == (failure,) for run in sweep.runs)
    assert done == [([], 1), (["fedavg"], 1)]
    assert [r[:2] for r in rounds if r[0] == "fedavg"] == [("fedavg", 1), ("fedavg", 2)]
    assert sweep.run(3) is sweep.runs[1]
    with pytest.raises(KeyError, match="no training seed 5"):
        sweep.run(5)
    losses = []
    for seed, run in zip(sweep.seeds, sweep.runs, strict=True):
        assert run.data is tiny and run.federation == FED
        alone = run_algorithm(algo, tiny, FED._replace(seed=seed))
        got = run.result(algo.name)
        assert set(got.history) == set(alone.history) and "eval_round" in got.history
        assert_equal(got.history, alone.history)
        assert_equal(host_copy(got.state), host_copy(alone.state))
        assert_close(got.per_node, alone.per_node, rtol=1e-6, atol=0)
        assert got.real_share == alone.real_share and got.privacy == alone.privacy == {}
        assert got.seconds > 0
        losses.append(got.history["train_loss"])
    # the runs differ (the seed drives shuffling and fine-tuning); progress shows their mean
    assert not np.array_equal(*losses)
    assert rounds[-1][2]["train_loss"] == pytest.approx(np.mean([v[-1] for v in losses]))
    with pytest.raises(ValueError, match="distinct seeds"):
        compare_seeds([algo], tiny, FED, [2, 2])


def _other_metrics(comparison, rng):
    """`comparison` with every per-node metric moved a little (another seed's results)."""
    moved = lambda v: np.clip(v + rng.normal(0, 0.05, v.shape), 0, 1)
    results = tuple(dataclasses.replace(r, per_node={
        kind: {m: moved(v) for m, v in metrics.items()} for kind, metrics in r.per_node.items()})
        for r in comparison.results)
    return dataclasses.replace(comparison, results=results)


def test_the_seeds_summary_is_the_mean_and_standard_error_over_seeds(comparison):
    rng = np.random.default_rng(1)
    runs = (comparison, _other_metrics(comparison, rng), _other_metrics(comparison, rng))
    sweep = SeedComparison((4, 5, 6), runs)
    rows = summarize_seeds(sweep)
    per_seed = [summarize(run) for run in runs]
    assert len(rows) == len(per_seed[0])
    for i, row in enumerate(rows):
        assert row["seeds"] == 3
        for stat in ("node_mean", "worst10", "beats_local"):
            values = [seed_rows[i][stat] for seed_rows in per_seed]
            if values[0] is None:
                assert row[stat] == {"mean": None, "se": None}, (row, stat)
                continue
            v = np.array(values)
            np.testing.assert_allclose(row[stat]["mean"], v.mean(), rtol=1e-12)
            np.testing.assert_allclose(row[stat]["se"], v.std(ddof=1) / np.sqrt(3), rtol=1e-12)
    pers = [r for r in rows if r["kind"] == "personalized" and r["metric"] == "accuracy"]
    assert pers and pers[0]["beats_local"]["se"] > 0  # the moved metrics differ by seed
    assert mean_se([0.5]) == {"mean": 0.5, "se": None}
    assert mean_se([0.5, None]) == {"mean": None, "se": None}
    console = Console(record=True, width=120)
    console.print(seeds_table(sweep, "accuracy"))
    text = console.export_text()
    assert "Test accuracy: mean ± s.e. over 3 seeds (higher is better)" in text
    mean, se = pers[0]["node_mean"]["mean"], pers[0]["node_mean"]["se"]
    assert f"{100 * mean:.1f}% ± {100 * se:.1f}%" in text
    assert "over training seeds 4, 5, 6" in " ".join(text.split())


def test_seeds_one_is_the_plain_run_and_checkpoints_are_refused(tmp_path, capsys):
    parser = cli.make_parser()
    for argv in (["compare"], ["compare", "--seeds", "1"]):
        assert seeds_of(parser.parse_args(argv)) is None
    assert seeds_of(parser.parse_args(["compare", "--seeds", "3", "--seed", "7"])) == [7, 8, 9]
    out = tmp_path / "r"
    assert cli.main(["compare", *TINY, "--seeds", "2", "--checkpoint-every", "1",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fedmtl: error: --checkpoint-every is not supported with --seeds yet; drop "
                   "one of them")
    assert list(out.iterdir()) == []  # refused before anything was written
    assert cli.main(["compare", *TINY, "--seeds", "0", "--out", str(out)]) == 2
    assert "seeds: must be >= 1" in capsys.readouterr().err


@pytest.mark.slow  # two sweeps compiled and run from the CLI: the slow pass
def test_cli_seeds_writes_a_folder_per_seed_and_rerun_reproduces_it(tmp_path, capsys):
    first = tmp_path / "first"
    assert cli.main(["compare", *TINY, "--algorithms", "local", "--seeds", "2", "--seed", "3",
                     "--eval-every", "2", "--out", str(first)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "seed 3: accuracy local/local" in out and "seed 4: accuracy" in out
    assert "Test accuracy: mean ± s.e. over 2 seeds (higher is better)" in out
    assert sorted(p.name for p in first.iterdir()) == [
        "config.toml", "run.json", "seed-3", "seed-4", "seeds.json"]
    for seed in (3, 4):
        sub = first / f"seed-{seed}"
        assert sorted(p.name for p in sub.iterdir()) == [
            "curves.jsonl", "per_node.csv", "results.json", "run.json"]
        doc = json.loads((sub / "results.json").read_text())
        assert doc["status"] == "complete" and doc["config"]["training_seed"] == seed
        assert doc["config"]["options"]["seeds"] == 2 and doc["federation"]["seed"] == 3
    assert "seeds = 2" in (first / "config.toml").read_text().splitlines()
    run = json.loads((first / "run.json").read_text())
    assert run["status"] == "complete" and run["seeds"] == [3, 4]
    assert set(run["seconds"]) == {"local"}
    seeds = json.loads((first / "seeds.json").read_text())
    assert seeds["seeds"] == [3, 4] and seeds["failed"] == {}
    per_seed = [json.loads((first / f"seed-{s}/results.json").read_text())["summary"]
                for s in (3, 4)]
    for i, row in enumerate(seeds["summary"]):
        v = np.array([rows[i]["node_mean"] for rows in per_seed])
        assert row["node_mean"]["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert row["node_mean"]["se"] == pytest.approx(v.std(ddof=1) / np.sqrt(2), abs=1e-15)
    # each seed draws its own initial weights: the first seed's run is `--seed 3` alone
    plain = tmp_path / "plain"
    assert cli.main(["compare", *TINY, "--algorithms", "local", "--seed", "3", "--quiet",
                     "--eval-every", "2", "--out", str(plain)]) == 0
    alone = json.loads((plain / "results.json").read_text())["algorithms"]["local"]
    swept = [json.loads((first / f"seed-{s}/results.json").read_text())["algorithms"]["local"]
             for s in (3, 4)]
    # to float tolerance: the sweep's program (vmapped, the weights drawn inside it) fuses
    # other multiply-adds at this suite's optimization level (equal bit for bit by hand at
    # the default level)
    for name, values in alone["history"].items():
        assert swept[0]["history"][name] == pytest.approx(values, rel=1e-6), name
    assert swept[1]["history"]["train_loss"][0] != alone["history"]["train_loss"][0]
    assert seeds["weights_per_seed"] is True
    # rerun reproduces every seed's folder; a changed one is named
    assert cli.main(["rerun", str(first), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert "reproduced" in capsys.readouterr().out
    doc = json.loads((first / "seed-4/results.json").read_text())
    doc["algorithms"]["local"]["history"]["train_loss"][0] += 1e-7
    (first / "seed-4/results.json").write_text(json.dumps(doc))
    assert cli_tooling.differences(first, tmp_path / "again") == [
        "seed-4/results.json: algorithm local"]
    # a seed sweep cannot resume; a plain run into the folder removes the sweep's files
    assert cli.main(["compare", "--resume", str(first)]) == 2
    assert "--resume is not supported with --seeds yet" in capsys.readouterr().err
    ResultsFolder.open(first).close()
    assert sorted(p.name for p in first.iterdir()) == ["config.toml", "run.json"]
