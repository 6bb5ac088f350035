"""Reports: summaries by hand on a built Comparison; the CLI: one-line errors with status 2, a
newcomer's help, and a tiny end-to-end comparison that writes its files."""

import csv
import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
from cli_checks import assert_one_line_error
from rich.console import Console

import fedmtl
from fedmtl import cli, progress, report
from fedmtl.data import FederatedData
from fedmtl.engine import Federation
from fedmtl.experiment import AlgorithmResult, Comparison


def _row(rows, algorithm, kind, metric):
    (row,) = [r for r in rows if (r["algorithm"], r["kind"], r["metric"]) ==
              (algorithm, kind, metric)]
    return row


def test_summarize_by_hand(comparison):
    comp = comparison
    rows = report.summarize(comp)
    assert len(rows) == 2 * 4  # (accuracy, loss) x 4 (algorithm, kind) columns
    w = comp.data.test.counts / comp.data.test.counts.sum()
    for result in comp.results:
        for kind, metrics in result.per_node.items():
            for metric, v in metrics.items():
                row = _row(rows, result.name, kind, metric)
                assert row["weighted_mean"] == pytest.approx(float(np.sum(w * v)), rel=1e-12)
                assert row["node_mean"] == pytest.approx(float(np.mean(v)), rel=1e-12)
                assert row["node_std"] == pytest.approx(float(np.std(v)), rel=1e-12)
                # worst decile of 20 nodes = the 2 worst: lowest accuracy, highest loss
                worst = np.sort(v)[:2] if metric == "accuracy" else np.sort(v)[-2:]
                assert row["worst10"] == pytest.approx(float(np.mean(worst)), rel=1e-12)
                if kind != "personalized":
                    assert row["beats_local"] is None and row["beats_global"] is None


def test_summarize_counts_strictly_better_nodes(comparison):
    comp = comparison
    rows = report.summarize(comp)
    for metric in ("accuracy", "loss"):
        row = _row(rows, "fedavg", "personalized", metric)
        assert row["beats_local"] == pytest.approx(7 / len(comp.data.names))  # ties do not count
        pers = comp.result("fedavg").per_node["personalized"][metric]
        glob = comp.result("fedavg").per_node["global"][metric]
        better = pers > glob if metric == "accuracy" else pers < glob
        assert row["beats_global"] == pytest.approx(better.sum() / len(comp.data.names))
        fedper = _row(rows, "fedper", "personalized", metric)
        assert fedper["beats_global"] is None  # fedper has no global model
        local = comp.result("local").per_node["local"][metric]
        mine = comp.result("fedper").per_node["personalized"][metric]
        better = mine > local if metric == "accuracy" else mine < local
        assert fedper["beats_local"] == pytest.approx(better.sum() / len(comp.data.names))


def test_worst10_takes_at_least_one_node(comparison):
    comp = comparison
    small = Comparison(comp.data.subset(range(5)), comp.federation, tuple(
        AlgorithmResult(r.name, {k: {m: v[:5] for m, v in ms.items()}
                                 for k, ms in r.per_node.items()}, r.history, 0.0, 1.0)
        for r in comp.results
    ))
    acc = small.result("local").per_node["local"]["accuracy"]
    assert _row(report.summarize(small), "local", "local", "accuracy")["worst10"] == acc.min()


# ----- binary tasks: balanced accuracy and AUC, undefined AUC left out per metric -----

NAN = np.nan


def binary_comparison() -> Comparison:
    """6 binary nodes with hand-chosen metrics: node 2 tests negatives only (AUC undefined),
    node 5 has no test example (every metric NaN)."""
    rng = np.random.default_rng(1)
    test_counts = (4, 5, 3, 6, 2, 0)
    xs = [rng.normal(size=(6, 2)).astype(np.float32) for _ in test_counts]
    ys = [np.arange(6, dtype=np.int32) % 2 for _ in test_counts]
    txs = [rng.normal(size=(c, 2)).astype(np.float32) for c in test_counts]
    tys = [np.arange(c, dtype=np.int32) % 2 for c in test_counts]
    tys[2] = np.zeros(3, np.int32)
    data = FederatedData.from_splits(xs, ys, txs, tys, num_classes=2)

    def metrics(accuracy, balanced, auc, loss):
        return {"accuracy": np.array(accuracy), "balanced_accuracy": np.array(balanced),
                "auc": np.array(auc), "loss": np.array(loss)}

    local = metrics([0.75, 0.6, 1.0, 0.5, 0.5, NAN], [0.75, 0.5, 1.0, 0.5, 0.5, NAN],
                    [0.75, 0.5, NAN, 0.25, 1.0, NAN], [0.5, 0.7, 0.1, 0.9, 0.6, NAN])
    glob = metrics([0.5, 0.6, 1.0, 0.5, 0.5, NAN], [0.5, 0.5, 1.0, 0.5, 0.5, NAN],
                   [0.5, 0.6, NAN, 0.5, 0.0, NAN], [0.6, 0.7, 0.2, 0.8, 0.7, NAN])
    pers = metrics([0.75, 0.8, 1.0, 0.5, 0.5, NAN], [0.75, 0.75, 1.0, 0.5, 0.5, NAN],
                   [1.0, 0.5, NAN, 0.75, 0.5, NAN], [0.4, 0.6, 0.2, 0.8, 0.6, NAN])
    history = {"train_loss": np.array([1.0, 0.5]), "participants": np.array([6, 6])}
    results = (
        AlgorithmResult("local", {"local": local}, history, 1.0, 1.0),
        AlgorithmResult("fedavg", {"global": glob, "personalized": pers}, history, 2.0, 0.5),
    )
    return Comparison(data, Federation(rounds=2), results)


def test_summaries_of_a_binary_task_skip_undefined_auc():
    comp = binary_comparison()
    rows = report.summarize(comp)
    assert len(rows) == 4 * 3  # (accuracy, balanced accuracy, AUC, loss) x 3 columns
    counts = comp.data.test.counts
    for name, kind in report.columns(comp):
        for metric in ("accuracy", "balanced_accuracy", "auc", "loss"):
            row = _row(rows, name, kind, metric)
            v = comp.result(name).per_node[kind][metric]
            ok = np.isfinite(v)  # AUC: nodes 0, 1, 3, 4; the others: nodes 0-4
            assert row["untested_nodes"] == 1
            assert row["undefined_nodes"] == (1 if metric == "auc" else 0)
            w = counts[ok] / counts[ok].sum()
            assert row["weighted_mean"] == pytest.approx(float(np.sum(w * v[ok])), rel=1e-12)
            assert row["node_mean"] == pytest.approx(float(np.mean(v[ok])), rel=1e-12)
            assert row["node_std"] == pytest.approx(float(np.std(v[ok])), rel=1e-12)
            worst = v[ok].max() if metric == "loss" else v[ok].min()
            assert row["worst10"] == worst  # at least one node: the worst
    auc = _row(rows, "fedavg", "personalized", "auc")
    assert auc["node_mean"] == pytest.approx((1.0 + 0.5 + 0.75 + 0.5) / 4)
    assert auc["beats_global"] == pytest.approx(3 / 4)  # nodes 0, 3, 4 of the 4 defined
    assert auc["beats_local"] == pytest.approx(2 / 4)  # nodes 0 and 3
    assert _row(rows, "fedavg", "personalized", "balanced_accuracy")["beats_local"] == 1 / 5


def test_a_metric_defined_nowhere_summarizes_to_none():
    comp = binary_comparison()
    for result in comp.results:
        for metrics in result.per_node.values():
            metrics["auc"][:] = NAN
    row = _row(report.summarize(comp), "fedavg", "personalized", "auc")
    assert row["undefined_nodes"] == 5 and row["beats_global"] is None
    assert row["weighted_mean"] is row["node_mean"] is row["worst10"] is None
    report.summary_table(comp, "auc")  # renders "—"


def test_report_of_a_binary_task_shows_balanced_accuracy_and_auc():
    comp = binary_comparison()
    assert report.headline_metrics("classification", 2) == ("accuracy", "balanced_accuracy",
                                                            "auc")
    assert report.headline_metrics("classification", 3) == ("accuracy",)
    assert report.primary_metric("classification") == "accuracy"
    console = Console(record=True, width=200)
    report.print_report(comp, console)
    text = " ".join(console.export_text().split())
    for words in ("Test accuracy per node", "Test auc per node",
                  "Test balanced_accuracy summary over 5 nodes with test data",
                  "Test auc summary over 4 of 5 nodes with test data (1 with one test class "
                  "only: AUC undefined) (higher is better)",
                  "62.5%"):  # local's balanced accuracy weighted by test examples
        assert words in text, words
    node_auc = report.node_table(comp, -1, "auc")
    assert list(node_auc.columns[3]._cells) == ["0.750", "0.500", "—", "0.250", "1.000", "—"]


# ----- CLI -----

# Every end-to-end CLI test runs this same tiny problem: one compilation serves them all.
TINY = ["--nodes", "3", "--max-node-size", "60", "--rounds", "2", "--hidden", "4"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["run", "--algorithm", "bogus", *TINY], "unknown algorithm"),
        (["compare", "--algorithms", "fedavg,nope", *TINY], "unknown algorithm"),
        (["compare", "--rounds", "-1"], "rounds"),
        (["compare", *TINY, "--cohort-size", "5"], "cohort"),
        (["compare", "--dataset", "no-such-data"], "dataset"),
        (["compare", "--nodes", "0"], "nodes"),
        (["frobnicate"], "invalid choice"),
        (["compare", "--loss", "svm"], "invalid choice"),
        (["compare", "--dataset", "turbofan", "--loss", "hinge"], "--loss hinge is for "
         "classification"),
        (["compare", *TINY, "--param", "fedavg-lr=1"], "expected ALGORITHM.KEY=VALUE"),
        (["compare", *TINY, "--param", "ditto.lam=1"], "ditto is not among the algorithms run"),
        (["compare", *TINY, "--param", "fedavg.mu=1"], "fedavg takes no 'mu'; it takes "
         "local_optimizer"),
        (["compare", *TINY, "--algorithms", "fedper", "--model", "logreg"], "fedper: "
         "personal='head' matches every parameter of LogisticRegression"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(argv, match, capsys, tmp_path):
    status = cli.main([*argv, "--out", str(tmp_path)] if argv[0] != "frobnicate" else argv)
    assert_one_line_error(status, capsys, match, tmp_path)


def test_cli_compare_writes_results(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["compare", *TINY, "--out", str(out)]
    assert cli.main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stdout + stderr
    # one line on what the reader should see in the tables
    assert "Notice, accuracy per node on average: " in " ".join(stdout.split())
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["algorithms"]) == {"local", "fedavg", "fedper"}
    assert doc["federation"]["rounds"] == 2 and doc["data"]["num_nodes"] == 3
    rows = list(csv.reader(io.StringIO((out / "per_node.csv").read_text())))
    assert len(rows) == 1 + 3
    header = rows[0]
    for column in ("local/local/accuracy", "fedavg/global/accuracy",
                   "fedavg/personalized/accuracy", "fedper/personalized/accuracy"):
        accuracy = [float(r[header.index(column)]) for r in rows[1:]]
        assert all(0.0 <= a <= 1.0 for a in accuracy), column


def test_node_table_spans_the_federation_by_size(comparison):
    counts = np.array([50, 10, 40, 20, 30, 60, 70])
    assert report.shown_nodes(counts, 3).tolist() == [1, 2, 6]  # sizes 10, 40, 70
    assert report.shown_nodes(counts, -1).tolist() == list(range(7))
    assert report.shown_nodes(counts, 7).tolist() == list(range(7))
    table = report.node_table(comparison, 5)
    counts = comparison.data.train.counts
    assert "5 of 20, smallest to largest training set" in table.title
    shown = [int(c) for c in table.columns[1]._cells]
    assert shown == sorted(shown) and shown[0] == counts.min() and shown[-1] == counts.max()


def test_cli_diverging_algorithm_keeps_the_others_results(tmp_path, capsys):
    """--server-lr 1e30 breaks fedavg (not local): its failure is reported in one line naming
    the round, and local's results are written all the same."""
    argv = ["compare", "--algorithms", "fedavg", *TINY, "--server-lr", "1e30", "--out",
            str(tmp_path)]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "1 of 2 algorithm(s) failed (fedavg)" in lines[0], err
    assert "Traceback" not in out + err
    assert "fedavg: training diverged: non-finite training loss in round" in " ".join(out.split())
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["status"] == "complete"
    assert doc["algorithms"]["local"]["status"] == "complete"
    assert doc["algorithms"]["fedavg"]["status"] == "failed"
    assert "round" in doc["failed"]["fedavg"]
    header = next(csv.reader(io.StringIO((tmp_path / "per_node.csv").read_text())))
    assert "local/local/accuracy" in header and not any("fedavg" in h for h in header)


def test_cli_without_a_command_lists_the_commands(capsys):
    assert cli.main([]) == 0
    out, _ = capsys.readouterr()
    for command, words in (("compare", "several algorithms"), ("run", "one algorithm"),
                           ("turbofan", "")):
        (line,) = [ln for ln in out.splitlines() if ln.strip().startswith(command + " ")]
        assert words in line


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedmtl {fedmtl.__version__}"


@pytest.mark.parametrize("command", ["compare", "run"])
def test_cli_help_describes_the_command_and_explains_the_table(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Train " in out and "side by side" in out
    for words in ("fedper / personalized", "FedPer has no global row", "worst10", "run.json"):
        assert words in out, words


def test_each_progress_bar_times_its_own_algorithm(tmp_path, monkeypatch):
    bars = []
    real = progress.Bars
    monkeypatch.setattr(progress, "Bars", lambda *a: bars.append(real(*a)) or bars[-1])
    assert cli.main(["compare", *TINY, "--out", str(tmp_path)]) == 0
    tasks = bars[0].progress.tasks
    assert [t.description for t in tasks] == ["local", "fedavg", "fedper"]
    for before, after in zip(tasks, tasks[1:], strict=False):
        # a bar's clock starts when its algorithm starts, after the previous one stopped
        assert before.stop_time is not None and after.start_time >= before.stop_time


def _algorithms_run(monkeypatch, argv) -> tuple[list, str]:
    """The algorithms `fedmtl compare` would train (training itself is skipped)."""
    seen = []

    def fake_compare(algorithms, data, fed, *args, **kwargs):
        seen.extend(algorithms)
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(cli, "compare", fake_compare)
    console = io.StringIO()
    monkeypatch.setattr(cli, "Console", lambda: Console(file=console, width=200))
    assert cli.main(argv) == 130
    return seen, console.getvalue()


def test_cli_all_runs_every_algorithm_that_applies_to_the_model(monkeypatch, tmp_path):
    seen, _ = _algorithms_run(monkeypatch, ["compare", "--algorithms", "all", *TINY,
                                            "--out", str(tmp_path)])
    applies = [n for n in fedmtl.algorithms.ALGORITHMS if n not in ("fedbn",)]
    assert [a.name for a in seen][: len(applies)] == applies
    seen, out = _algorithms_run(monkeypatch, ["compare", "--algorithms", "all", *TINY,
                                              "--model", "logreg", "--out", str(tmp_path)])
    assert "fedavg" in [a.name for a in seen] and "fedper" not in [a.name for a in seen]
    assert "note: fedper left out: fedper: personal='head' matches every parameter" in out


def test_cli_param_reaches_the_factory(monkeypatch, tmp_path):
    seen, _ = _algorithms_run(monkeypatch, [
        "compare", "--algorithms", "ditto", *TINY, "--param", "ditto.lam=0.25",
        "--param", "ditto.personal_optimizer=0.5", "--out", str(tmp_path)])
    calls = []
    real = fedmtl.algorithms.ALGORITHMS["ditto"]

    @functools.wraps(real)
    def recorded(module, **kwargs):
        calls.append(kwargs)
        return real(module, **kwargs)

    monkeypatch.setitem(fedmtl.algorithms.ALGORITHMS, "ditto", recorded)
    _algorithms_run(monkeypatch, ["compare", "--algorithms", "ditto", *TINY, "--param",
                                  "ditto.lam=0.25", "--out", str(tmp_path)])
    assert calls[0]["lam"] == 0.25 and "server_optimizer" not in calls[0]
    assert [a.name for a in seen] == ["local", "ditto"]


def test_cli_help_lists_every_algorithm_with_one_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    lines = capsys.readouterr().out.splitlines()
    for name, summary in fedmtl.algorithms.SUMMARIES.items():
        assert any(ln.split()[:1] == [name] and summary in ln for ln in lines), name


def test_docs_list_every_algorithm():
    """docs/algorithms.md has one table row per registered algorithm."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "algorithms.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in doc.splitlines()
            if line.startswith("| `")}
    assert set(fedmtl.algorithms.ALGORITHMS) <= rows


@pytest.mark.slow
def test_cli_compare_all_trains_every_algorithm(tmp_path, capsys):
    """`fedmtl compare --algorithms all --norm layer`: every registered algorithm trains and
    reports (FedBN included, on the LayerNorm model), and the results name each one."""
    out = tmp_path / "all"
    assert cli.main(["compare", "--algorithms", "all", "--norm", "layer", *TINY,
                     "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stdout + stderr and "left out" not in stdout
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["algorithms"]) == list(fedmtl.algorithms.ALGORITHMS)
    assert all(a["status"] == "complete" for a in doc["algorithms"].values())
    assert doc["config"]["hyperparameters"]["ifca"]["clusters"] == 2
