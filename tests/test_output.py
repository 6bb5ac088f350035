"""Results folders lose nothing: checked before training, never half-written, readable by
others, marked in progress until the run completes, and enough to reproduce the run."""

import csv
import io
import json
import os
import stat

import numpy as np
import pytest

from fedmtl import cli, output
from fedmtl.data import FederatedData
from fedmtl.engine import Federation
from fedmtl.experiment import AlgorithmResult, Comparison

# The tiny problem of test_report_cli.py: equal programs compile once per test session.
TINY = ["--nodes", "3", "--max-node-size", "60", "--rounds", "2", "--hidden", "4"]


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedmtl: error:"), err
    return lines[0]


def _no_training(monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("training started before the output folder was checked")

    monkeypatch.setattr(cli, "compare", train)
    monkeypatch.setattr(cli, "load_data", train)


# ----- 1. an output path that cannot be written fails before training, in one line -----


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_unwritable_out_fails_before_training(where, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder\n")
    out = blocker if where == "a file" else blocker / "results"
    _no_training(monkeypatch)
    assert cli.main(["compare", *TINY, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"cannot write results to {str(out)!r}" in line and "--out" in line
    assert blocker.read_text() == "not a folder\n"


def test_permission_denied_out_fails_before_training(tmp_path, monkeypatch, capsys):
    """An unwritable or immutable folder: the write probe fails (simulated: tests run as root,
    who may write anywhere)."""

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(output.tempfile, "mkstemp", denied)
    _no_training(monkeypatch)
    assert cli.main(["compare", *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "Permission denied" in _one_error_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_folder_fails_before_training(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    _no_training(monkeypatch)
    assert cli.main(["compare", *TINY, "--out", str(folder)]) == 2
    assert "Permission denied" in _one_error_line(capsys)


def test_any_os_error_at_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    def full(args):
        raise OSError(28, "No space left on device", "/scratch/x")

    monkeypatch.setattr(cli, "load_data", full)
    assert cli.main(["compare", *TINY, "--out", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == "fedmtl: error: No space left on device: /scratch/x"


# ----- 3. results are readable by others: the umask decides, not the temporary file -----


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_respects_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        output.atomic_write(tmp_path / "results.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == mode


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
        output.atomic_write(path, "new content that is much longer than the old one\n" * 100)
    assert path.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left behind
    monkeypatch.undo()
    output.atomic_write(path, "new\n")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["results.json"]


# ----- 2. in progress until complete; each algorithm written when it finishes -----


def _status(folder):
    return {name: json.loads((folder / name).read_text())["status"]
            for name in ("results.json", "run.json") if (folder / name).exists()}


def test_results_folder_is_in_progress_until_closed(comparison, tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    for name in ("results.json", "per_node.csv"):  # an earlier run's files
        (folder / name).write_text("stale\n")
    results = output.ResultsFolder.open(folder, {"rounds": 2})
    assert not (folder / "per_node.csv").exists() and _status(folder) == {"run.json": "in progress"}
    results.update(comparison)
    assert _status(folder) == {"results.json": "in progress", "run.json": "in progress"}
    results.close()
    assert _status(folder) == {"results.json": "complete", "run.json": "complete"}
    run = json.loads((folder / "run.json").read_text())
    assert run["finished"] >= run["started"] and set(run["seconds"]) == {"local", "fedavg",
                                                                         "fedper"}


def test_killed_run_leaves_no_earlier_results_looking_valid(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    assert cli.main(["compare", *TINY, "--out", str(out)]) == 0  # a complete earlier run
    real = cli.compare

    def killed_after_first(algorithms, data, fed, callback, **hooks):
        real(algorithms[:1], data, fed, callback, **hooks)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "compare", killed_after_first)
    assert cli.main(["compare", *TINY, "--out", str(out)]) == 130
    assert _status(out) == {"results.json": "interrupted", "run.json": "interrupted"}
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["algorithms"]) == {"local"}  # what finished before the kill, and no more
    header = next(csv.reader(io.StringIO((out / "per_node.csv").read_text())))
    assert not any(h.startswith(("fedavg", "fedper")) for h in header)


def test_compare_writes_each_algorithm_as_it_finishes(tmp_path, monkeypatch):
    seen = []
    real = output.ResultsFolder.update

    def update(self, comparison, status="in progress"):
        paths = real(self, comparison, status)
        seen.append((status, sorted(json.loads(paths[0].read_text())["algorithms"])))
        return paths

    monkeypatch.setattr(output.ResultsFolder, "update", update)
    assert cli.main(["compare", *TINY, "--out", str(tmp_path)]) == 0
    assert seen == [("in progress", ["local"]), ("in progress", ["fedavg", "local"]),
                    ("in progress", ["fedavg", "fedper", "local"]),
                    ("complete", ["fedavg", "fedper", "local"])]


# ----- 4. a results folder lets a reader reproduce the run -----


def test_results_folder_records_configuration_and_environment(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["compare", *TINY, "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    options = doc["config"]["options"]
    expected = {"lr": 0.05, "server_lr": None, "model": "mlp", "hidden": [4], "alpha": 1.0,
                "beta": 1.0, "nodes": 3, "test_fraction": 0.25, "max_node_size": 60,
                "rounds": 2, "batch_size": 10, "local_epochs": 1, "seed": 0,
                "finetune_steps": 5, "dataset": "synthetic", "cohort_size": None}
    assert {k: options[k] for k in expected} == expected
    assert doc["config"]["model"]["parameters"] > 0
    assert doc["config"]["algorithms"] == ["local", "fedavg", "fedper"]
    # each algorithm's own hyper-parameters as built: the run's options over the defaults
    assert doc["config"]["hyperparameters"]["fedper"] == {
        "personal": "head", "local_optimizer": 0.05, "server_optimizer": 1.0, "loss": None}
    run = json.loads((out / "run.json").read_text())
    env = run["environment"]
    assert set(output.PACKAGES) <= set(env["packages"]) and env["packages"]["jax"]
    assert env["python"] and env["backend"] == "cpu" and env["devices"]
    assert "git_commit" in env and run["started"] and run["command"] is not None


def test_same_seed_writes_identical_result_files(tmp_path):
    """Wall times live in run.json, so results.json and per_node.csv are the same bytes."""
    for name in ("a", "b"):
        assert cli.main(["compare", *TINY, "--out", str(tmp_path / name)]) == 0
    for name in ("results.json", "per_node.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "seconds" not in (tmp_path / "a" / "results.json").read_text()


# ----- binary tasks: balanced accuracy and AUC in the files, undefined AUC as an empty cell ----


def test_binary_results_list_auc_and_leave_undefined_cells_empty(tmp_path):
    """3 binary nodes: node 1 tests negatives only (AUC undefined), node 2 has no test rows."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(4, 2)).astype(np.float32) for _ in range(3)]
    ys = [np.array([0, 1, 0, 1]) for _ in range(3)]
    tys = [np.array([0, 1, 1]), np.array([0, 0]), np.array([], int)]
    data = FederatedData.from_splits(xs, ys, [x[: len(y)] for x, y in zip(xs, tys, strict=True)],
                                     tys, num_classes=2)
    per_node = {"accuracy": np.array([2 / 3, 0.5, np.nan]),
                "balanced_accuracy": np.array([0.75, 0.5, np.nan]),
                "auc": np.array([0.5, np.nan, np.nan]), "loss": np.array([0.6, 0.7, np.nan])}
    history = {"train_loss": np.array([1.0]), "participants": np.array([3])}
    comparison = Comparison(data, Federation(rounds=1), (
        AlgorithmResult("local", {"local": per_node}, history, 1.0, 1.0),))
    output.write_results(comparison, tmp_path)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "per_node.csv").read_text())))
    assert list(rows[0]) == ["node", "n_train", "n_test", "local/local/accuracy",
                             "local/local/balanced_accuracy", "local/local/auc",
                             "local/local/loss"]
    assert [r["local/local/auc"] for r in rows] == ["0.5", "", ""]
    assert [r["local/local/balanced_accuracy"] for r in rows] == ["0.75", "0.5", ""]
    text = (tmp_path / "results.json").read_text()
    doc = json.loads(text)
    json.dumps(doc, allow_nan=False)  # no NaN in the summaries: strict JSON readers cope
    assert doc["data"]["metrics"] == ["accuracy", "balanced_accuracy", "auc", "loss"]
    (auc,) = [r for r in doc["summary"] if r["metric"] == "auc"]
    assert auc["node_mean"] == 0.5 and auc["undefined_nodes"] == 1 and auc["untested_nodes"] == 1


def test_extras_are_written_as_json_and_a_heatmap_and_removed_with_their_run(comparison,
                                                                            tmp_path):
    """MOCHA's learned Σ comes back in the results folder: JSON with the node names, and a
    heatmap PNG; a later run in the same folder does not leave it looking like its own."""
    import dataclasses

    import numpy as np

    n = comparison.data.num_nodes
    sigma = np.eye(n) + 0.5 * (np.arange(n)[:, None] % 2 == np.arange(n)[None] % 2)
    mocha = dataclasses.replace(comparison.results[1], name="mocha", extras={"sigma": sigma})
    with_sigma = dataclasses.replace(comparison, results=(*comparison.results, mocha))
    output.write_results(with_sigma, tmp_path)
    doc = json.loads((tmp_path / "mocha_sigma.json").read_text())
    assert doc["nodes"] == list(comparison.data.names)
    np.testing.assert_allclose(doc["sigma"], sigma)
    assert json.loads((tmp_path / "results.json").read_text())["algorithms"]["mocha"][
        "extras"] == ["mocha_sigma.json"]
    assert (tmp_path / "mocha_sigma.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    output.write_results(comparison, tmp_path)  # a later run without MOCHA
    assert not (tmp_path / "mocha_sigma.json").exists()
    assert not (tmp_path / "mocha_sigma.png").exists()
