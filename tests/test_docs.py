"""The documentation site's code runs and its references resolve (mkdocs itself runs in CI,
`.ci/run`, not here): the tutorial's and the bring-your-own-data page's code blocks execute,
the outputs and error messages they show are what the code prints and raises, every `:::`
target of the API reference imports, and every page in the nav exists."""

import contextlib
import importlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import fedmtl
from fedmtl import partition
from fedmtl.data import FederatedData

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(page: str) -> list[tuple[str, str, str | None]]:
    """(language, code, the text block right after it or None) for every fenced block."""
    text = (DOCS / page).read_text()
    found = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    out = []
    for i, (lang, code, _, end) in enumerate(found):
        after = None
        if i + 1 < len(found) and found[i + 1][0] == "text" and not text[
                end:found[i + 1][2]].strip():
            after = found[i + 1][1]
        out.append((lang, code, after))
    return out


def run_python_blocks(page: str, tmp_path, monkeypatch) -> dict:
    """Runs the page's python blocks in order in one namespace (in `tmp_path`); a block
    followed directly by a text block must print exactly that text."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for lang, code, shown in blocks(page):
        if lang != "python":
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{page} block", "exec"), namespace)  # noqa: S102
        if shown is not None:
            printed = [ln.rstrip() for ln in out.getvalue().strip().splitlines()]
            assert printed == [ln.rstrip() for ln in shown.strip().splitlines()], code
    return namespace


def test_tutorial_runs_and_its_algorithm_is_under_40_lines(tmp_path, monkeypatch):
    """The tutorial's algorithm fits in 40 lines, trains through `compare`, and its global
    model equals FedAvg's exactly (the page checks that too)."""
    code = [c for lang, c, _ in blocks("tutorial.md") if lang == "python"]
    algorithm = code[0].strip().splitlines()
    assert len(algorithm) < 40 and "def fedavg_keep" in code[0]
    ns = run_python_blocks("tutorial.md", tmp_path, monkeypatch)
    result = ns["result"]
    assert result.names == ["fedavg", "fedavg_keep"] and not result.failures
    keep = result.result("fedavg_keep").per_node
    assert set(keep) == {"global", "personalized"}
    np.testing.assert_array_equal(keep["global"]["accuracy"],
                                  result.result("fedavg").per_node["global"]["accuracy"])
    # keeping the trained model personalizes: better than the global model on average
    assert keep["personalized"]["accuracy"].mean() > keep["global"]["accuracy"].mean()


def test_your_data_page_runs(tmp_path, monkeypatch):
    ns = run_python_blocks("your-data.md", tmp_path, monkeypatch)
    assert ns["data"].num_nodes == 3 and ns["label_skew"].num_nodes == 20


def _raises(f) -> str:
    with pytest.raises(Exception) as info:  # noqa: B017 (each case names its own type)
        f()
    return f"{type(info.value).__name__}: {info.value}"


def test_your_data_errors_are_verbatim():
    """Every error message the page quotes is what the code raises for the input it
    describes (so a reworded message fails here, not in a user's hands)."""
    page = (DOCS / "your-data.md").read_text()
    rng = np.random.default_rng(0)
    sizes = (8, 12, 20)
    xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, 2, n) for n in sizes]
    nan = [x.copy() for x in xs]
    nan[1][4, 2] = np.nan
    x, y = np.concatenate(xs), np.concatenate(ys)
    ids = np.repeat(np.array([0.0, 1.0, 2.0]), sizes)
    nan_ids = ids.copy()
    nan_ids[5] = np.nan
    big_x, big_y = rng.normal(size=(100, 5)).astype(np.float32), rng.integers(0, 10, 100)
    data = FederatedData.from_nodes(xs, ys)
    mlp = lambda d_in, d_out: fedmtl.MLP(d_in, [8], d_out, rngs=nnx.Rngs(0))
    cases = [
        lambda: FederatedData.from_nodes(nan, ys),
        lambda: FederatedData.from_nodes([xs[0].astype(np.float64) * 1e300, *xs[1:]], ys),
        lambda: FederatedData.from_nodes([xs[0], rng.normal(size=(12, 4)), xs[2]], ys),
        lambda: FederatedData.from_nodes(xs, [ys[0], ys[1][:5], ys[2]]),
        lambda: FederatedData.from_nodes(xs, [v.astype(float) for v in ys]),
        lambda: FederatedData.from_nodes(xs, [np.array(["a"] * len(v)) for v in ys]),
        lambda: FederatedData.from_nodes(xs, [v * 100000 for v in ys]),
        lambda: FederatedData.from_nodes([xs[0][:1], *xs[1:]], [ys[0][:1], *ys[1:]]),
        lambda: FederatedData.from_nodes(xs, ys, names=["a", "a", "b"]),
        lambda: FederatedData.from_nodes(xs, ys, test_fraction=1.0),
        lambda: FederatedData.from_nodes(xs, [rng.normal(size=len(v)) for v in ys],
                                         stratify=True),
        lambda: FederatedData.from_flat(x, y, nan_ids),
        lambda: FederatedData.from_flat(x, y[:-1], ids),
        lambda: partition.dirichlet(big_x, big_y, 10, alpha=0),
        lambda: partition.dirichlet(big_x, big_y, 60, alpha=0.1),
        lambda: partition.dirichlet(big_x, big_y, 30, alpha=0.01, min_size=3),
        lambda: partition.shards(big_x, big_y, 3, classes_per_node=2),
        lambda: partition.quantity_skew(big_x, big_y, 10, sigma=-1),
        lambda: partition.dirichlet(big_x, big_y[:-1], 10, alpha=1),
        lambda: fedmtl.models.check_model(fedmtl.fedavg(mlp(4, 2)).model, data),
        lambda: fedmtl.models.check_model(fedmtl.fedavg(mlp(3, 5)).model, data),
        lambda: fedmtl.fedper(fedmtl.LogisticRegression(3, 2, rngs=nnx.Rngs(0))),
        lambda: fedmtl.federation.check(fedmtl.Federation(cohort_size=5), data.num_nodes),
    ]
    for case in cases:
        kind, message = _raises(case).split(": ", 1)
        assert f"`{message}`" in page, f"{kind}: {message}"


def _resolve(target: str):
    """The object a mkdocstrings identifier names: the longest importable module prefix,
    then attributes."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(target)


def test_api_reference_targets_import():
    """Every `::: target` of docs/api (and the members it lists) and every cross-reference
    `[...][fedmtl....]` of any page names something that imports."""
    targets = []
    for page in sorted((DOCS / "api").glob("*.md")):
        text = page.read_text()
        for m in re.finditer(r"^::: (\S+)((?:\n    .*)*)", text, re.M):
            targets.append(m.group(1))
            members = re.findall(r"^        - (\w+)$", m.group(2), re.M)
            targets += [f"{m.group(1)}.{name}" for name in members]
    assert {"fedmtl", "fedmtl.engine", "fedmtl.algorithms", "fedmtl.data", "fedmtl.partition",
            "fedmtl.federation", "fedmtl.systems", "fedmtl.privacy", "fedmtl.robust",
            "fedmtl.attacks", "fedmtl.secagg", "fedmtl.experiment", "fedmtl.output",
            "fedmtl.report", "fedmtl.devices", "fedmtl.models"} <= set(targets)
    for page in DOCS.rglob("*.md"):
        targets += re.findall(r"\]\[(fedmtl[\w.]*)\]", page.read_text())
    for target in targets:
        _resolve(target)


def test_top_level_page_lists_every_public_name():
    page = (DOCS / "api" / "fedmtl.md").read_text()
    missing = [n for n in fedmtl.__all__ if f"[`{n}`]" not in page]
    assert not missing


def test_nav_pages_exist_and_changelog_is_included():
    nav = re.findall(r"^\s+- .*?([\w/.-]+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert "tutorial.md" in nav and "api/fedmtl.md" in nav and "changelog.md" in nav
    assert [p for p in nav if not (DOCS / p).is_file()] == []
    assert '--8<-- "CHANGELOG.md"' in (DOCS / "changelog.md").read_text()
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_every_algorithm_has_its_update_rule():
    """docs/algorithms.md's "Update rules" section has an entry, linked to the API reference,
    for every registered algorithm."""
    text = (DOCS / "algorithms.md").read_text()
    rules = text[text.index("## Update rules"):]
    missing = [n for n in fedmtl.algorithms.ALGORITHMS
               if f"[`{n}`][fedmtl.algorithms." not in rules]
    assert not missing
