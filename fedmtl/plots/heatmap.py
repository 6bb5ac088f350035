"""MOCHA's task relationships: a learned task covariance Σ [N, N] drawn as correlations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmtl.plots import style
from fedmtl.plots.reading import PlotError


def heatmap_figure(sigma: np.ndarray, title: str, names=None):
    """A heatmap of a task covariance Σ [N, N] as correlations Σ_st / sqrt(Σ_ss Σ_tt), nodes
    in data order (named on the axes when `names` has at most 40)."""
    sigma = np.asarray(sigma, dtype=float)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise PlotError(f"{title}: Σ must be square [N, N], got shape {sigma.shape}")
    scale = np.sqrt(np.clip(np.diag(sigma), np.finfo(float).tiny, None))
    correlation = sigma / scale[:, None] / scale[None, :]
    fig = style.new_figure(figsize=(5.4, 4.6))
    ax = fig.add_subplot()
    image = ax.imshow(correlation, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="task correlation")
    ax.set(title=title, xlabel="node", ylabel="node")
    if names is not None and 0 < len(names) <= 40 and len(names) == len(sigma):
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, [str(n) for n in names], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [str(n) for n in names], fontsize=7)
    return fig


def relationship_heatmap(sigma: np.ndarray, path: Path, title: str, fmt: str = "png",
                         names=None) -> Path:
    """`heatmap_figure` saved to `path` as `fmt` (PNG by default). Returns the path.

    Example:
      >>> relationship_heatmap(np.eye(3), Path("sigma.png"), "Σ")  # doctest: +SKIP
      PosixPath('sigma.png')
    """
    fig = heatmap_figure(sigma, title, names)
    fig.savefig(path, format=fmt, dpi=120, metadata=style.METADATA.get(fmt))
    return Path(path)
