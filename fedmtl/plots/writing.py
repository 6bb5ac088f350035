"""Every figure a results folder allows, one at a time (`figures`), and all of them written
into its plots/ folder atomically, stale ones removed (`plot_results`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fedmtl.plots import style
from fedmtl.plots.curves import curves_figure
from fedmtl.plots.heatmap import heatmap_figure
from fedmtl.plots.per_node import gains_figure, scatter_figure, size_figure
from fedmtl.plots.reading import PlotError, Run, load, read_sigma, sigma_files
from fedmtl.report import headline_metrics

PLOTS = "plots"
# The files `plot_results` owns in plots/: an earlier call's ones it did not redraw are removed.
PREFIXES = ("curves_", "scatter_", "gains_", "size_", "correlation_")


def figures(folder) -> Iterator[tuple[str, object]]:
    """Every figure the folder's files allow, as (file stem, matplotlib Figure), one at a
    time: learning curves (curves.jsonl), per-node scatter, gains and node-size figures
    (per_node.csv) for each headline metric (`report.headline_metrics`), and a task
    correlation heatmap per `<algorithm>_sigma.json`.

    Example:
      >>> dict(figures("results"))["curves_accuracy"].savefig("curves.png")  # doctest: +SKIP

    Raises:
      PlotError: as `load`, or matplotlib is missing.
    """
    run = load(folder)
    if not style.available():
        raise PlotError(style.MISSING)
    return _figures(run)


def _figures(run: Run) -> Iterator[tuple[str, object]]:
    metrics = headline_metrics(run.task, run.num_classes)
    for metric in metrics:
        if (fig := curves_figure(run, metric)) is not None:
            yield f"curves_{metric}", fig
    personalized = dict.fromkeys(a for (a, k, _) in run.per_node if k == "personalized")
    for metric in metrics:
        for algorithm in personalized:
            if (fig := scatter_figure(run, algorithm, metric)) is not None:
                yield f"scatter_{style.safe(algorithm)}_{metric}", fig
            if (fig := gains_figure(run, algorithm, metric)) is not None:
                yield f"gains_{style.safe(algorithm)}_{metric}", fig
        if (fig := size_figure(run, metric)) is not None:
            yield f"size_{metric}", fig
    for algorithm, path in sigma_files(run):
        doc = read_sigma(path)
        yield f"correlation_{style.safe(algorithm)}", heatmap_figure(
            doc["sigma"], f"{algorithm}: learned task correlation{style.status_note(run)}",
            doc.get("nodes"))


def _save(fig, path: Path, fmt: str) -> Path:
    """Saves `fig` to `path` through a temporary file and a rename: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        mask = os.umask(0o022)  # read the umask (by setting it and setting it back)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=130, metadata=style.METADATA.get(fmt))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_results(folder: Path, formats=("png", "pdf")) -> list[Path]:
    """Writes every figure the folder's files allow (`figures`) into `folder / "plots"`
    (created), each in every format, atomically; figures an earlier call wrote there that
    this one does not are removed. Returns the paths written.

    Example:
      >>> plot_results(Path("results"))  # doctest: +SKIP
      [PosixPath('results/plots/curves_accuracy.png'), ...]

    Raises:
      PlotError: no folder, no results.json, an unreadable or malformed file, an unknown
        format, or matplotlib is missing (pip install 'fedmtl[plots]').
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in style.METADATA]
    if unknown or not formats:
        raise PlotError(f"unknown figure format(s) {unknown or formats}; choose from "
                        f"{sorted(style.METADATA)}")
    drawn = figures(folder)  # reads and checks the folder before anything is written
    out = Path(folder) / PLOTS
    out.mkdir(exist_ok=True)
    written = []
    for stem, fig in drawn:
        written += [_save(fig, out / f"{stem}.{fmt}", fmt) for fmt in formats]
    remove_figures(folder, keep=written)
    return written


def remove_figures(folder: Path, keep=()) -> None:
    """Deletes the figures `plot_results` writes (and only those: other files in
    folder/plots stay) from an earlier call, except `keep`."""
    out = Path(folder) / PLOTS
    if not out.is_dir():
        return
    for path in sorted(out.iterdir()):
        if (path.name.startswith(PREFIXES) and path.suffix[1:] in style.METADATA
                and path not in keep and path.is_file()):
            path.unlink()
