"""Figures of a results folder: every figure its files allow, as PNG and PDF, written
atomically and deterministically; clear errors for folders that cannot be plotted; and the
direction of a metric (RMSE: lower is better) respected wherever a figure says who gained."""

import dataclasses
import json
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from fedmtl import output, plots  # noqa: E402
from fedmtl.data import FederatedData  # noqa: E402
from fedmtl.engine import Federation  # noqa: E402
from fedmtl.experiment import AlgorithmResult, Comparison  # noqa: E402

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF"


def _summary(mean, se=0.02, nodes=20):
    return {"mean": mean, "se": se, "worst10": mean / 2, "nodes": nodes}


def _curves(metric="accuracy", start=0.3, step=0.1):
    """curves.jsonl as the engine writes it: local, fedavg (global and personalized) and
    fedper, rounds 1, 3, 5 (the first standard error undefined: null)."""
    lines = []
    for algorithm, kinds in (("local", ("local",)), ("fedavg", ("global", "personalized")),
                             ("fedper", ("personalized",))):
        for e, r in enumerate((1, 3, 5)):
            test = {k: {metric: _summary(start + step * e, None if e == 0 else 0.02),
                        "loss": _summary(1.0 - 0.1 * e)} for k in kinds}
            lines.append(json.dumps({"algorithm": algorithm, "round": r, "train_loss": 0.5,
                                     "test": test}))
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch):
    """run.json's environment (git, JAX devices) is not what these tests are about: skip it."""
    monkeypatch.setattr(output, "environment", lambda: {})


@pytest.fixture
def folder(comparison, tmp_path):
    """A classification results folder (the shared 20-node comparison: fedavg's personalized
    accuracy beats local on nodes 0-6, ties on 7-9, loses on 10-19), a learned task
    covariance Σ (as MOCHA's, given to fedper to keep the folder small), curves."""
    n = comparison.data.num_nodes
    sigma = np.eye(n) + 0.5 * (np.arange(n)[:, None] % 2 == np.arange(n)[None] % 2)
    fedper = dataclasses.replace(comparison.results[2], extras={"sigma": sigma})
    results = (*comparison.results[:2], fedper)
    output.write_results(dataclasses.replace(comparison, results=results), tmp_path / "r")
    (tmp_path / "r" / "curves.jsonl").write_text(_curves())
    return tmp_path / "r"


def test_plot_results_writes_every_figure_as_png_and_pdf(folder):
    paths = plots.plot_results(folder)
    stems = ["curves_accuracy", "scatter_fedavg_accuracy", "gains_fedavg_accuracy",
             "scatter_fedper_accuracy", "gains_fedper_accuracy", "size_accuracy",
             "correlation_fedper"]
    assert paths == [folder / "plots" / f"{s}.{f}" for s in stems for f in ("png", "pdf")]
    for path in paths:
        assert path.read_bytes().startswith(PNG if path.suffix == ".png" else PDF), path
        assert path.stat().st_size > 5000
    assert sorted(p.name for p in (folder / "plots").iterdir()) == sorted(p.name for p in paths)


def test_figures_are_the_same_bytes_every_time_and_stale_ones_go(folder):
    """No dates or versions in the files; an earlier call's figure that this call does not
    draw is removed, a file of the user's is not. (Without per_node.csv: curves and Σ only.)"""
    (folder / "per_node.csv").unlink()
    first = {p: p.read_bytes() for p in plots.plot_results(folder)}
    assert sorted(p.name for p in first) == ["correlation_fedper.pdf", "correlation_fedper.png",
                                             "curves_accuracy.pdf", "curves_accuracy.png"]
    assert {p: p.read_bytes() for p in plots.plot_results(folder)} == first
    assert not any(b"CreationDate" in b or b"Software" in b for b in first.values())
    stale, mine = folder / "plots" / "scatter_gone_accuracy.png", folder / "plots" / "mine.png"
    stale.write_bytes(PNG)
    mine.write_bytes(PNG)
    (folder / "curves.jsonl").unlink()  # now no learning curves to draw
    assert [p.name for p in plots.plot_results(folder, formats=("png",))] == [
        "correlation_fedper.png"]
    assert sorted(p.name for p in (folder / "plots").iterdir()) == ["correlation_fedper.png",
                                                                    "mine.png"]


def _titles(fig) -> list[str]:
    return [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _figures(folder) -> dict:
    return dict(plots.figures(folder))


def test_learning_curves_have_a_band_a_local_reference_and_labels(folder):
    fig = _figures(folder)["curves_accuracy"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["fedavg", "fedper"]
    for ax in panels:
        labels = [line.get_label() for line in ax.get_lines()]
        assert "local models (the local algorithm)" in labels
        assert ax.get_xlabel() == "round"
        lo, hi = ax.get_ylim()  # the data's range with a margin, inside the metric's [0, 1]
        assert -0.005 <= lo < hi <= 1.005
        for line in ax.get_lines():
            y = np.asarray(line.get_ydata(), float)
            assert (lo < y[np.isfinite(y)]).all() and (y[np.isfinite(y)] < hi).all()
        assert ax.collections  # the ±1 s.e. bands
    fedavg = {line.get_label(): line for line in panels[0].get_lines()}
    np.testing.assert_allclose(fedavg["global model"].get_xydata(),
                               [[1, 0.3], [3, 0.4], [5, 0.5]])  # no smoothing
    assert "test accuracy" in panels[0].get_ylabel()
    assert "±1 standard error over nodes" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_a_curves_line_being_written_is_skipped_and_a_broken_one_is_an_error(folder):
    path = folder / "curves.jsonl"
    path.write_text(_curves() + '{"algorithm": "fedper", "rou')  # still being appended
    assert "curves_accuracy" in _figures(folder)
    lines = _curves().splitlines()
    path.write_text("\n".join([*lines[:2], "{oops", *lines[2:]]) + "\n")
    with pytest.raises(plots.PlotError, match=r"curves.jsonl, line 3"):
        _figures(folder)


def _shaded_below_diagonal(ax) -> bool:
    """Whether the shaded (gained) region lies below the diagonal y = x."""
    x, y = ax.collections[0].get_paths()[0].vertices.T
    if np.all(y <= x + 1e-9):
        return True
    assert np.all(y >= x - 1e-9)
    return False


def test_classification_figures_say_above_the_diagonal_gained(folder):
    figs = _figures(folder)
    scatter = figs["scatter_fedavg_accuracy"]
    assert "Above the diagonal (shaded): nodes that gained" in scatter.get_suptitle()
    global_ax, local_ax = scatter.axes
    assert local_ax.get_title() == "vs local: better on 7, equal on 3, worse on 10"
    assert not _shaded_below_diagonal(local_ax)
    gains = figs["gains_fedavg_accuracy"]
    local_ax = gains.axes[0]  # local first
    assert _legend(local_ax)[:3] == ["lost (10 of 20)", "no change (3 of 20)",
                                     "gained (7 of 20)"]
    assert "gained on 35% of nodes (7 of 20)" in local_ax.get_title()
    assert "personalized − local" in local_ax.get_xlabel()
    assert "percentage points" in local_ax.get_xlabel()
    size = figs["size_accuracy"]
    assert size.axes[0].get_xscale() == "log" and "training examples" in size.axes[0].get_xlabel()


@pytest.fixture
def regression(tmp_path):
    """A regression folder: fedavg's personalized RMSE is lower (better) than the local one on
    nodes 0-6, equal on 7-9 and higher on 10-19."""
    n, rng = 20, np.random.default_rng(1)
    xs = [rng.normal(size=(4 + k, 2)).astype(np.float32) for k in range(n)]
    ys = [rng.normal(size=len(x)).astype(np.float32) for x in xs]
    data = FederatedData.from_splits(xs, ys, [x[:3] for x in xs], [y[:3] for y in ys],
                                     task="regression")
    local = rng.uniform(0.5, 2.0, n)
    pers = local.copy()
    pers[:7] -= 0.25
    pers[10:] += 0.25
    kinds = {"local": {"local": local}, "global": rng.uniform(1.0, 3.0, n), "personalized": pers}
    metrics = lambda v: {"rmse": v, "mse": v**2}
    history = {"train_loss": np.array([1.0])}
    results = (AlgorithmResult("local", {"local": metrics(local)}, history, 1.0, 1.0),
               AlgorithmResult("fedavg", {k: metrics(kinds[k]) for k in ("global", "personalized")},
                               history, 1.0, 1.0))
    output.write_results(Comparison(data, Federation(rounds=1), results), tmp_path / "reg")
    (tmp_path / "reg" / "curves.jsonl").write_text(_curves("rmse", start=2.0, step=-0.5))
    return tmp_path / "reg"


def test_regression_figures_say_lower_is_better_and_below_the_diagonal_gained(regression):
    figs = _figures(regression)
    assert list(figs) == ["curves_rmse", "scatter_fedavg_rmse", "gains_fedavg_rmse", "size_rmse"]
    scatter = figs["scatter_fedavg_rmse"]
    assert "Below the diagonal (shaded): nodes that gained" in scatter.get_suptitle()
    assert "lower RMSE is better" in scatter.get_suptitle()
    local_ax = scatter.axes[1]
    assert local_ax.get_title() == "vs local: better on 7, equal on 3, worse on 10"
    assert _shaded_below_diagonal(local_ax)
    # one range on both axes (the diagonal at 45°), holding every node's point
    assert local_ax.get_xlim() == local_ax.get_ylim()
    points = local_ax.collections[-1].get_offsets()
    lo, hi = local_ax.get_xlim()
    assert (lo < np.asarray(points)).all() and (np.asarray(points) < hi).all()
    gains = figs["gains_fedavg_rmse"].axes[0]
    assert _legend(gains)[:3] == ["lost (10 of 20)", "no change (3 of 20)", "gained (7 of 20)"]
    assert "local − personalized" in gains.get_xlabel()  # so that positive = lower RMSE
    assert "target units" in gains.get_xlabel()
    curves = figs["curves_rmse"]
    assert "lower is better" in curves.get_suptitle()
    assert "fedavg (best personalized" in figs["size_rmse"].get_suptitle()


def test_gain_is_positive_when_the_first_is_better():
    a, b = np.array([0.9, 0.5]), np.array([0.8, 0.5])
    np.testing.assert_allclose(plots.gain(a, b, "accuracy"), [0.1, 0.0])
    np.testing.assert_allclose(plots.gain(a, b, "rmse"), [-0.1, 0.0])


def test_an_unfinished_run_says_so(folder):
    doc = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps({**doc, "status": "interrupted"}))
    assert all("[run interrupted]" in f.get_suptitle() or "[run interrupted]" in f.axes[0]
               .get_title() for f in _figures(folder).values())


@pytest.mark.parametrize("case, message", [
    ("no folder", "no results folder at"),
    ("no results.json", "holds no results.json"),
    ("truncated results.json", "results.json is not valid JSON"),
    ("a list", "results.json holds a list"),
    ("no task", "no data.task"),
    ("bad per_node.csv", "per_node.csv: a row has a value that is not a number"),
])
def test_folders_that_cannot_be_plotted_fail_clearly(case, message, folder, tmp_path):
    target = folder
    if case == "no folder":
        target = tmp_path / "missing"
    elif case == "no results.json":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "truncated results.json":
        text = (folder / "results.json").read_text()
        (folder / "results.json").write_text(text[: len(text) // 2])
    elif case == "a list":
        (folder / "results.json").write_text("[]\n")
    elif case == "no task":
        (folder / "results.json").write_text('{"data": {}}\n')
    else:
        (folder / "per_node.csv").write_text("node,n_train,n_test,local/local/accuracy\n"
                                             "a,3,2,high\n")
    with pytest.raises(plots.PlotError, match=message) as info:
        plots.plot_results(target)
    assert isinstance(info.value, ValueError)
    assert not (target / "plots").exists()  # nothing written before the folder was checked


def test_missing_matplotlib_says_what_to_install(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    assert not plots.available()
    with pytest.raises(plots.PlotError, match=r"pip install 'fedmtl\[plots\]'"):
        plots.plot_results(folder)


def test_unknown_format_is_an_error(folder):
    with pytest.raises(plots.PlotError, match="unknown figure format"):
        plots.plot_results(folder, formats=("gif",))


def test_relationship_heatmap_writes_a_png_under_any_name(tmp_path):
    """output.py writes it to a temporary name and renames it."""
    path = plots.relationship_heatmap(np.eye(3) + 0.5, tmp_path / ".x.png.tmp", "Σ")
    assert path.read_bytes().startswith(PNG)
