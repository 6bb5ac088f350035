"""Results folders: checked before training, written as each algorithm finishes, never
half-written, readable by colleagues, and enough to reproduce the run.

A folder holds `results.json` (resolved configuration, summaries, histories: the same bytes for
two runs of the same seed), `per_node.csv` (every node's test metrics; binary tasks add
balanced accuracy and ROC AUC, an empty cell where a metric is undefined), `run.json`
(status, timestamps, wall times, package versions, device, git commit), with the CLI
`config.toml` (the run's resolved options: `fedmtl rerun`), with learning curves
`curves.jsonl` (`fedmtl.learning_curves`), and optionally `tensorboard/`, `plots/` and
`checkpoints/`. Until the run completes both JSON files say `"status": "in progress"`.

A seed sweep's folder (`SeedsFolder`, `fedmtl compare --seeds S`) holds one such folder per
training seed, `seed-<s>/`, and at the top `config.toml`, `run.json` and `seeds.json` (the
seeds and the summary over them: mean ± standard error).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from fedmtl import learning_curves, plots
from fedmtl.experiment import Comparison, SeedComparison
from fedmtl.objectives import metrics as task_metrics
from fedmtl.report import columns, summarize, summarize_seeds

RESULTS, PER_NODE, RUN = "results.json", "per_node.csv", "run.json"
CURVES, CONFIG = learning_curves.CURVES, "config.toml"
SEEDS, SEED_PREFIX = "seeds.json", "seed-"  # a seed sweep's summary and per-seed folders
PACKAGES = ("fedmtl", "jax", "jaxlib", "flax", "optax", "numpy", "rich", "orbax-checkpoint")


class OutputError(OSError):
    """A results folder that cannot be created or written; the message names the path."""


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it and set it back
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename: never half-written.

    The file gets the mode a plain `open(path, "w")` would give (0666 less the umask), not
    the temporary file's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: Path) -> Path:
    """Creates `folder` (and its parents) and probes a write there, before any training.

    Raises:
      OutputError: the folder is a file, lies under a file, or cannot be written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".fedmtl-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise OutputError(f"cannot write results to {str(folder)!r}: {why}; choose another "
                          "folder with --out") from None
    return folder


# ----- contents -----


def _csv_number(value) -> str:
    # empty: the node has no test data, or the metric is undefined there (AUC, one test class)
    return f"{value:.6g}" if np.isfinite(value) else ""


def per_node_csv(comparison: Comparison) -> str:
    """One row per node: name, train and test counts, then every algorithm/kind/metric (the
    metrics of `objectives.metrics(task, num_classes)`; empty where undefined)."""
    data = comparison.data
    metrics = task_metrics(data.task, data.num_classes)
    cols = [(n, k, m) for n, k in columns(comparison) for m in metrics]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["node", "n_train", "n_test", *[f"{n}/{k}/{m}" for n, k, m in cols]])
    for i in range(data.num_nodes):
        writer.writerow([
            data.names[i], int(data.train.counts[i]), int(data.test.counts[i]),
            *[_csv_number(comparison.result(n).per_node[k][m][i]) for n, k, m in cols],
        ])
    return out.getvalue()


def _plain(value):
    """A JSON-safe copy of a configuration value: arrays as lists, tuples of fields as dicts,
    infinities as the string "inf" (strict JSON has none)."""
    if hasattr(value, "_asdict"):  # functions (a rule's or an attack's code) are left out
        return {k: _plain(v) for k, v in value._asdict().items() if not callable(v)}
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in np.asarray(value).tolist()] if isinstance(
            value, np.ndarray) else [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if not isinstance(value, str | int | float | bool | dict | None):
        return str(value)  # e.g. a jax.Device in Federation.devices
    return value


def to_json(comparison: Comparison, config: dict | None = None,
            status: str = "complete") -> dict:
    """The deterministic part of a run: no times, no machine; equal seeds give equal files."""
    data = comparison.data
    algorithms = {
        r.name: {
            "status": "complete",
            "real_share": r.real_share,
            "history": {k: _plain(np.asarray(v)) for k, v in r.history.items()
                        if not k.startswith("eval")},  # learning curves: curves.jsonl
            "extras": sorted(f"{r.name}_{key}.json" for key in r.extras),
            **({"privacy": _plain(r.privacy)} if r.privacy else {}),
        }
        for r in comparison.results
    }
    algorithms.update({f.name: {"status": "failed", "error": f.error}
                       for f in comparison.failures})
    return {
        "status": status,
        "config": config or {},
        "data": {
            "summary": data.summary(),
            "task": data.task,
            "num_nodes": data.num_nodes,
            "num_classes": data.num_classes,
            "metrics": list(task_metrics(data.task, data.num_classes)),
            "feature_shape": list(data.feature_shape),
        },
        "federation": _plain(comparison.federation),
        "failed": {f.name: f.error for f in comparison.failures},
        "summary": summarize(comparison) if comparison.results else [],
        "algorithms": algorithms,
    }


def write_extras(result, names, folder: Path) -> list[Path]:
    """Writes each of `result.extras` to `<algorithm>_<name>.json` ({"nodes", name: values});
    a task covariance "sigma" [N, N] also as a heatmap PNG when matplotlib is installed."""
    paths = []
    for key, value in sorted(result.extras.items()):
        value = np.asarray(value)
        path = folder / f"{result.name}_{key}.json"
        doc = {"nodes": list(names[: value.shape[0]]), key: value.tolist()}
        atomic_write(path, json.dumps(doc) + "\n")
        paths.append(path)
        if key == "sigma" and plots.available():
            tmp = folder / f".{result.name}_{key}.png.tmp"
            plots.relationship_heatmap(value, tmp, f"{result.name}: learned task correlation")
            os.replace(tmp, folder / f"{result.name}_{key}.png")  # atomic, like every file here
            paths.append(folder / f"{result.name}_{key}.png")
    return paths


def _earlier_extras(folder: Path) -> list[str]:
    """The extras files (and heatmaps) an earlier run's results.json lists in `folder`."""
    try:
        earlier = json.loads((folder / RESULTS).read_text())
        names = [n for a in earlier["algorithms"].values() for n in a.get("extras", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [n for name in names if "/" not in name for n in (name, name[:-5] + ".png")]


def _claim(path) -> Path:
    """Checks folder `path` can be written and removes an earlier run's result files there (a
    plain run's or a seed sweep's: seed-<s>/ folders too), so that none is left looking
    valid."""
    path = check_writable(Path(path))
    for name in (*_earlier_extras(path), RESULTS, PER_NODE, RUN, CURVES, SEEDS):
        (path / name).unlink(missing_ok=True)
    plots.remove_figures(path)  # figures of an earlier run (other files in plots/ stay)
    for folder in seed_folders(path):  # an earlier seed sweep's runs
        shutil.rmtree(folder)
    return path


def _start(path, command: list[str] | None, config_toml: str | None, **fields):
    """Claims folder `path` (`_claim`), writes `config_toml` there when given, and returns
    (path, the run.json record of a run just started, with `fields`)."""
    path = _claim(path)
    if config_toml is not None:
        atomic_write(path / CONFIG, config_toml)
    run = {"status": "in progress", "started": _now(), "finished": None, "command": command,
           **fields, "seconds": {}, "environment": environment()}
    return path, run


def seed_folder(path, seed: int) -> Path:
    """Where a seed sweep in `path` keeps training seed `seed`'s results folder."""
    return Path(path) / f"{SEED_PREFIX}{int(seed)}"


def seed_folders(path) -> list[Path]:
    """The per-seed results folders a seed sweep wrote into `path` (seed-<s>/ holding a
    run.json), by seed."""
    found = []
    for sub in Path(path).glob(f"{SEED_PREFIX}*"):
        number = sub.name[len(SEED_PREFIX):]
        if sub.is_dir() and number.lstrip("-").isdigit() and (sub / RUN).is_file():
            found.append((int(number), sub))
    return [sub for _, sub in sorted(found)]


def _git_commit() -> str | None:
    """The commit of the fedmtl source tree ("+dirty" if changed), when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def environment() -> dict:
    """Package versions, Python, platform, JAX backend and devices, and the git commit."""
    import jax

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "packages": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in devices],
        "git_commit": _git_commit(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----- the folder -----


class ResultsFolder:
    """A results folder that says what state its run is in.

    `open` checks the folder can be written, removes an earlier run's result files (so a
    killed run never leaves them looking valid) and marks the folder "in progress";
    `update` rewrites the files with every algorithm finished so far; `close` marks the run
    "complete" (or "interrupted" when it stopped early).

    Example:
      >>> folder = ResultsFolder.open("results", config={"rounds": 50})
      >>> comparison = compare(algorithms, data, fed, on_done=folder.update)
      >>> folder.close(comparison)
    """

    def __init__(self, path: Path, config: dict, run: dict, tensorboard: bool = False):
        self.path, self.config, self._run = Path(path), config, run
        self.tensorboard = tensorboard
        self._last: Comparison | None = None

    @classmethod
    def open(cls, path, config: dict | None = None, command: list[str] | None = None, *,
             config_toml: str | None = None, tensorboard: bool = False, resumed: bool = False):
        """Checks and claims the folder; writes `config_toml` (the run's options) when given.
        `tensorboard`: also write TensorBoard scalars (tensorboardX) into tensorboard/;
        `resumed`: run.json records that this run continues an earlier one's checkpoints."""
        path, run = _start(path, command, config_toml, resumed=resumed)
        folder = cls(path, config or {}, run, tensorboard)
        folder._write_run()
        return folder

    def _write_run(self) -> None:
        atomic_write(self.path / RUN, json.dumps(self._run, indent=2) + "\n")

    def update(self, comparison: Comparison, status: str = "in progress") -> list[Path]:
        """Writes results.json, per_node.csv (and curves.jsonl, TensorBoard scalars) for what
        has finished; returns the paths."""
        self._last = comparison
        doc = to_json(comparison, self.config, status)
        atomic_write(self.path / RESULTS, json.dumps(doc, indent=2) + "\n")
        atomic_write(self.path / PER_NODE, per_node_csv(comparison))
        paths = [self.path / RESULTS, self.path / PER_NODE, self.path / RUN]
        if (self.path / CONFIG).is_file():
            paths.append(self.path / CONFIG)
        curves = learning_curves.jsonl(comparison)
        if curves:
            atomic_write(self.path / CURVES, curves)
            paths.append(self.path / CURVES)
        for result in comparison.results:
            write_extras(result, comparison.data.names, self.path)
            if self.tensorboard:
                learning_curves.write_tensorboard(result, self.path / "tensorboard")
        self._run["seconds"] = {**{r.name: r.seconds for r in comparison.results},
                                **{f.name: f.seconds for f in comparison.failures}}
        self._run["status"] = status
        self._write_run()
        return paths

    def close(self, comparison: Comparison | None = None, status: str = "complete"):
        """Marks the run `status` ("complete", "interrupted", ...) with its final results
        (default: what the last `update` wrote); returns the paths written."""
        self._run["finished"] = _now()
        comparison = comparison or self._last
        if comparison is not None:
            return self.update(comparison, status)
        self._run["status"] = status
        self._write_run()
        return [self.path / RUN]


def write_results(comparison: Comparison, out_dir, config: dict | None = None) -> list[Path]:
    """Writes a finished comparison into `out_dir` in one go: results.json, per_node.csv and
    run.json, each atomically."""
    return ResultsFolder.open(out_dir, config).close(comparison)


class SeedsFolder:
    """A seed sweep's results folder: `seed-<s>/`, a complete results folder per training seed
    (`ResultsFolder`: results.json, per_node.csv, run.json, curves.jsonl, extras), and at the
    top config.toml (the run's options), run.json (status, times, environment) and seeds.json
    (the seeds and `summarize_seeds`: deterministic, like results.json).

    Example:
      >>> folder = SeedsFolder.open("results", [0, 1, 2], config={"rounds": 50})
      >>> sweep = compare_seeds(algorithms, data, fed, [0, 1, 2], on_done=folder.update)
      >>> folder.close(sweep)
    """

    def __init__(self, path: Path, seeds: list[int], config: dict, run: dict,
                 folders: list[ResultsFolder]):
        self.path, self.seeds, self.config, self._run = Path(path), seeds, config, run
        self.folders = folders
        self._last: SeedComparison | None = None

    @classmethod
    def open(cls, path, seeds, config: dict | None = None, command: list[str] | None = None,
             *, config_toml: str | None = None, tensorboard: bool = False):
        """Checks and claims the folder (removing an earlier run's files, a plain run's or a
        sweep's), opens `seed-<s>/` for each seed (their results.json record "training_seed")
        and writes `config_toml` when given."""
        seeds, config = [int(s) for s in seeds], config or {}
        path, run = _start(path, command, config_toml, seeds=seeds)
        folders = [ResultsFolder.open(seed_folder(path, s), {**config, "training_seed": s},
                                      command, tensorboard=tensorboard) for s in seeds]
        folder = cls(path, seeds, config, run, folders)
        folder._write_run()
        return folder

    def _write_run(self) -> None:
        atomic_write(self.path / RUN, json.dumps(self._run, indent=2) + "\n")

    def update(self, sweep: SeedComparison, status: str = "in progress") -> list[Path]:
        """Rewrites every seed's folder and seeds.json with what has finished; returns the
        top folder's files and the seed folders."""
        for folder, run in zip(self.folders, self._runs(sweep), strict=True):
            folder.update(run, status)
        return self._write(sweep, status)

    def close(self, sweep: SeedComparison | None = None, status: str = "complete"):
        """Marks the sweep and every seed's run `status` ("complete", "interrupted", ...) with
        the final results (default: what the last `update` wrote); returns the paths."""
        self._run["finished"] = _now()
        sweep = sweep or self._last
        runs = [None] * len(self.folders) if sweep is None else self._runs(sweep)
        for folder, run in zip(self.folders, runs, strict=True):
            folder.close(run, status)
        return self._write(sweep, status)

    def _runs(self, sweep: SeedComparison) -> tuple[Comparison, ...]:
        if list(sweep.seeds) != self.seeds:
            raise ValueError(f"{self.path}: opened for seeds {self.seeds}, got a sweep of "
                             f"{list(sweep.seeds)}")
        return sweep.runs

    def _write(self, sweep: SeedComparison | None, status: str) -> list[Path]:
        """seeds.json (when there is a sweep) and run.json at the top."""
        paths = [self.path / RUN, *(f.path for f in self.folders)]
        if sweep is not None:
            self._last = sweep
            doc = {"status": status, "seeds": self.seeds,
                   "weights_per_seed": sweep.weights_per_seed, "config": self.config,
                   "failed": {f.name: f.error for f in sweep.failures},
                   "summary": summarize_seeds(sweep)}
            atomic_write(self.path / SEEDS, json.dumps(doc, indent=2) + "\n")
            paths.insert(0, self.path / SEEDS)
            count = len(self.seeds)  # a result's seconds are its sweep's divided by S
            self._run["seconds"] = {
                **{r.name: r.seconds * count for r in sweep.runs[0].results},
                **{f.name: f.seconds * count for f in sweep.failures}}
        self._run["status"] = status
        self._write_run()
        return paths
