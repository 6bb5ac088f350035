"""Reading a results folder for its figures: results.json, per_node.csv and curves.jsonl as a
`Run`, and `PlotError`s that name the file and what is wrong with it."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmtl.report import KIND_ORDER

RESULTS, PER_NODE, CURVES = "results.json", "per_node.csv", "curves.jsonl"


class PlotError(ValueError):
    """A results folder that cannot be plotted; the message names the file and the problem."""


@dataclass(frozen=True)
class Run:
    """What a results folder holds, as the figures need it.

    Attributes:
      folder: the results folder.
      status: "complete", "in progress", "interrupted".
      task, num_classes: the data's task ("classification" or "regression") and classes.
      algorithms: completed algorithms, in the order they ran.
      names, n_train, n_test: per node [N] (empty when per_node.csv is absent).
      per_node: {(algorithm, kind, metric): [N]} test metrics, NaN where undefined.
      curves: {algorithm: [records of curves.jsonl, rounds ascending]} ({} when absent).
    """

    folder: Path
    status: str
    task: str
    num_classes: int | None
    algorithms: tuple[str, ...]
    names: tuple[str, ...]
    n_train: np.ndarray
    n_test: np.ndarray
    per_node: dict
    curves: dict

    def kinds(self, algorithm: str, metric: str) -> list[str]:
        """The model kinds of `algorithm` with per-node values of `metric`, in report order."""
        return [k for k in KIND_ORDER if (algorithm, k, metric) in self.per_node]

    def local(self, metric: str) -> np.ndarray | None:
        """Per-node `metric` [N] of the local-only models, when the run has them."""
        return next((v for (a, k, m), v in self.per_node.items()
                     if k == "local" and m == metric), None)


def read_json(path: Path) -> dict:
    """The JSON object in `path`.

    Raises:
      PlotError: the file is unreadable, not JSON (e.g. cut short), or not an object.
    """
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise PlotError(f"{path} is not valid JSON ({e}); was the run killed while writing "
                        "it?") from None
    if not isinstance(doc, dict):
        raise PlotError(f"{path} holds a {type(doc).__name__}, not a JSON object")
    return doc


def _read_per_node(path: Path):
    """(names, n_train [N], n_test [N], {(algorithm, kind, metric): [N]}) of per_node.csv."""
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except (OSError, csv.Error) as e:
        raise PlotError(f"cannot read {path}: {e}") from None
    if not rows or rows[0][:3] != ["node", "n_train", "n_test"]:
        raise PlotError(f"{path}: the header must start with node,n_train,n_test")
    header, body = rows[0], rows[1:]
    try:
        values = np.array([[float(v) if v else np.nan for v in r[1:]] for r in body]).reshape(
            len(body), len(header) - 1)
    except ValueError as e:
        raise PlotError(f"{path}: a row has a value that is not a number or a row of the "
                        f"wrong length ({e})") from None
    per_node = {}
    for j, name in enumerate(header[3:], start=2):
        parts = name.rsplit("/", 2)
        if len(parts) != 3:
            raise PlotError(f"{path}: column {name!r} is not algorithm/kind/metric")
        per_node[tuple(parts)] = values[:, j]
    return tuple(r[0] for r in body), values[:, 0], values[:, 1], per_node


def _read_curves(path: Path) -> dict[str, list[dict]]:
    """{algorithm: records by ascending round} of curves.jsonl; a last line that a running
    job is still writing (no newline yet) is left out."""
    try:
        text = path.read_text()
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e.strerror or e}") from None
    lines = text.split("\n")
    curves: dict[str, list[dict]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            algorithm, _ = record["algorithm"], float(record["round"])
            if not isinstance(record.get("test", {}), dict):
                raise TypeError("'test' is not an object")
        except (ValueError, KeyError, TypeError) as e:
            if number == len(lines):  # the unterminated last line: still being written
                break
            raise PlotError(f"{path}, line {number}: not a learning-curve record "
                            f"({type(e).__name__}: {e})") from None
        curves.setdefault(str(algorithm), []).append(record)
    return {a: sorted(r, key=lambda x: x["round"]) for a, r in curves.items()}


def sigma_files(run: Run) -> list[tuple[str, Path]]:
    """(algorithm, path) of each `<algorithm>_sigma.json` in the folder: the run's algorithms
    in the order they ran, then any others by name."""
    found = {p.name[: -len("_sigma.json")]: p for p in sorted(run.folder.glob("*_sigma.json"))}
    order = [a for a in run.algorithms if a in found] + sorted(set(found) - set(run.algorithms))
    return [(a, found[a]) for a in order]


def read_sigma(path: Path) -> dict:
    """An `<algorithm>_sigma.json`: {"sigma": [N, N], "nodes": [N] (optional), ...}.

    Raises:
      PlotError: as `read_json`, or the file holds no "sigma".
    """
    doc = read_json(path)
    if "sigma" not in doc:
        raise PlotError(f"{path}: no 'sigma' matrix")
    return doc


def load(folder) -> Run:
    """Reads a results folder (results.json, and per_node.csv and curves.jsonl if present).

    Example:
      >>> load("results").algorithms  # doctest: +SKIP
      ('local', 'fedavg', 'mocha')

    Raises:
      PlotError: no such folder, no results.json, or a file that is unreadable or malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PlotError(f"no results folder at {str(folder)!r}")
    if not (folder / RESULTS).is_file():
        raise PlotError(f"{str(folder)!r} holds no {RESULTS}: not a results folder (fedmtl "
                        "compare --out writes one)")
    doc = read_json(folder / RESULTS)
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("task") not in ("classification", "regression"):
        raise PlotError(f"{folder / RESULTS}: no data.task (classification or regression): "
                        "not a fedmtl results file")
    algorithms = doc.get("algorithms") if isinstance(doc.get("algorithms"), dict) else {}
    names, n_train, n_test, per_node = (), np.zeros(0), np.zeros(0), {}
    if (folder / PER_NODE).is_file():
        names, n_train, n_test, per_node = _read_per_node(folder / PER_NODE)
    curves = _read_curves(folder / CURVES) if (folder / CURVES).is_file() else {}
    return Run(
        folder, str(doc.get("status", "unknown")), data["task"], data.get("num_classes"),
        tuple(a for a, v in algorithms.items()
              if isinstance(v, dict) and v.get("status") == "complete"),
        names, n_train, n_test, per_node, curves,
    )
