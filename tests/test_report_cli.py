"""Reports: summaries by hand on a built Comparison, atomic files; the CLI: one-line errors with
status 2, and a tiny end-to-end comparison that writes its files."""

import csv
import io
import json
import os

import numpy as np
import pytest

from fedmtl import cli, report
from fedmtl.data import FederatedData
from fedmtl.engine import Federation
from fedmtl.experiment import AlgorithmResult, Comparison

N = 20


def _comparison() -> Comparison:
    """20 nodes with known test counts and hand-chosen per-node metrics (no training)."""
    rng = np.random.default_rng(0)
    test_counts = rng.integers(1, 12, N)
    xs = [rng.normal(size=(5, 2)).astype(np.float32) for _ in range(N)]
    ys = [np.arange(5, dtype=np.int32) % 3 for _ in range(N)]
    txs = [rng.normal(size=(c, 2)).astype(np.float32) for c in test_counts]
    tys = [np.arange(c, dtype=np.int32) % 3 for c in test_counts]
    data = FederatedData.from_splits(xs, ys, txs, tys, num_classes=3)
    grid = np.linspace(0.05, 1.0, N)
    local = {"accuracy": rng.permutation(grid), "loss": rng.uniform(0.1, 2.0, N)}
    glob = {"accuracy": rng.permutation(grid), "loss": rng.uniform(0.1, 2.0, N)}
    pers = {"accuracy": local["accuracy"].copy(), "loss": local["loss"].copy()}
    # personalized: better than local on nodes 0-6, tied on 7-9, worse on 10-19
    pers["accuracy"][:7] += 0.01
    pers["accuracy"][10:] -= 0.01
    pers["loss"][:7] -= 0.01
    pers["loss"][10:] += 0.01
    fedper = {"accuracy": rng.permutation(grid), "loss": rng.uniform(0.1, 2.0, N)}
    history = {"train_loss": np.array([1.0, 0.5]), "participants": np.array([N, N])}
    results = (
        AlgorithmResult("local", {"local": local}, history, 1.0, 1.0),
        AlgorithmResult("fedavg", {"global": glob, "personalized": pers}, history, 2.0, 0.5),
        AlgorithmResult("fedper", {"personalized": fedper}, history, 3.0, 0.5),
    )
    return Comparison(data, Federation(rounds=2), results)


def _row(rows, algorithm, kind, metric):
    (row,) = [r for r in rows if (r["algorithm"], r["kind"], r["metric"]) ==
              (algorithm, kind, metric)]
    return row


def test_summarize_by_hand():
    comp = _comparison()
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


def test_summarize_counts_strictly_better_nodes():
    comp = _comparison()
    rows = report.summarize(comp)
    for metric in ("accuracy", "loss"):
        row = _row(rows, "fedavg", "personalized", metric)
        assert row["beats_local"] == pytest.approx(7 / N)  # ties do not count
        pers = comp.result("fedavg").per_node["personalized"][metric]
        glob = comp.result("fedavg").per_node["global"][metric]
        better = pers > glob if metric == "accuracy" else pers < glob
        assert row["beats_global"] == pytest.approx(better.sum() / N)
        fedper = _row(rows, "fedper", "personalized", metric)
        assert fedper["beats_global"] is None  # fedper has no global model
        local = comp.result("local").per_node["local"][metric]
        mine = comp.result("fedper").per_node["personalized"][metric]
        better = mine > local if metric == "accuracy" else mine < local
        assert fedper["beats_local"] == pytest.approx(better.sum() / N)


def test_worst10_takes_at_least_one_node():
    comp = _comparison()
    small = Comparison(comp.data.subset(range(5)), comp.federation, tuple(
        AlgorithmResult(r.name, {k: {m: v[:5] for m, v in ms.items()}
                                 for k, ms in r.per_node.items()}, r.history, 0.0, 1.0)
        for r in comp.results
    ))
    acc = small.result("local").per_node["local"]["accuracy"]
    assert _row(report.summarize(small), "local", "local", "accuracy")["worst10"] == acc.min()


def test_write_results_json_and_csv(tmp_path):
    comp = _comparison()
    paths = report.write_results(comp, tmp_path / "out", extra={"note": "hi"})
    assert [p.name for p in paths] == ["results.json", "per_node.csv"]
    doc = json.loads(paths[0].read_text())
    assert doc["note"] == "hi" and doc["data"]["num_nodes"] == N
    assert doc["summary"] == json.loads(json.dumps(report.summarize(comp)))
    assert set(doc["algorithms"]) == {"local", "fedavg", "fedper"}
    assert doc["algorithms"]["fedavg"]["history"]["train_loss"] == [1.0, 0.5]
    rows = list(csv.reader(io.StringIO(paths[1].read_text())))
    header, body = rows[0], rows[1:]
    assert len(body) == N
    assert header[:3] == ["node", "n_train", "n_test"]
    assert {"local/local/accuracy", "fedavg/global/loss", "fedavg/personalized/accuracy",
            "fedper/personalized/loss"} <= set(header)
    col = header.index("fedper/personalized/accuracy")
    want = comp.result("fedper").per_node["personalized"]["accuracy"]
    np.testing.assert_allclose([float(r[col]) for r in body], want, rtol=1e-5)
    assert [int(r[2]) for r in body] == comp.data.test.counts.tolist()
    assert sorted(os.listdir(tmp_path / "out")) == ["per_node.csv", "results.json"]


def _boom(*args, **kwargs):
    raise OSError("disk on fire")


@pytest.mark.parametrize("fail", ["replace", "fsync", "write"])
def test_atomic_write_never_leaves_a_half_written_file(tmp_path, monkeypatch, fail):
    path = tmp_path / "results.json"
    path.write_text("old content\n")
    if fail == "write":  # the disk fills up halfway through
        real_fdopen = os.fdopen

        def fdopen(*args, **kwargs):
            f = real_fdopen(*args, **kwargs)
            real_write = f.write

            def write(text):
                real_write(text[: len(text) // 2])
                f.flush()
                raise OSError("no space left")

            f.write = write
            return f

        monkeypatch.setattr(os, "fdopen", fdopen)
    else:
        monkeypatch.setattr(os, fail, _boom)
    with pytest.raises(OSError):
        report.atomic_write(path, "new content that is much longer than the old one\n" * 100)
    assert path.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left behind
    monkeypatch.undo()
    report.atomic_write(path, "new\n")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["results.json"]


# ----- CLI -----

TINY = ["--nodes", "3", "--max-node-size", "60", "--rounds", "1", "--hidden", "4"]


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
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(argv, match, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path)] if argv[0] != "frobnicate" else argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedmtl: error:"), err
    assert match in lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "results.json").exists()


def test_cli_compare_writes_results(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["compare", "--nodes", "4", "--rounds", "2", "--hidden", "4", "--max-node-size",
            "60", "--out", str(out)]
    assert cli.main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stdout + stderr
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["algorithms"]) == {"local", "fedavg", "fedper"}
    assert doc["federation"]["rounds"] == 2 and doc["data"]["num_nodes"] == 4
    rows = list(csv.reader(io.StringIO((out / "per_node.csv").read_text())))
    assert len(rows) == 1 + 4
    header = rows[0]
    for column in ("local/local/accuracy", "fedavg/global/accuracy",
                   "fedavg/personalized/accuracy", "fedper/personalized/accuracy"):
        accuracy = [float(r[header.index(column)]) for r in rows[1:]]
        assert all(0.0 <= a <= 1.0 for a in accuracy), column


def test_cli_diverging_run_exits_2_naming_the_node(tmp_path, capsys):
    argv = ["run", "--algorithm", "local", "--nodes", "3", "--rounds", "2", "--hidden", "4",
            "--max-node-size", "60", "--lr", "1e30", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "non-finite" in lines[0] and "first node 'node" in lines[0], err
    assert not (tmp_path / "results.json").exists()
