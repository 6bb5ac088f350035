"""Figures of a run (matplotlib, optional): written beside the results when it is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def available() -> bool:
    """Whether matplotlib can be imported (the `plots` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def relationship_heatmap(sigma: np.ndarray, path: Path, title: str) -> Path:
    """A heatmap of a task covariance Σ [N, N] as correlations Σ_st / sqrt(Σ_ss Σ_tt), nodes
    in data order; saved to `path` (PNG). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = np.sqrt(np.clip(np.diag(sigma), np.finfo(float).tiny, None))
    correlation = sigma / scale[:, None] / scale[None, :]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    image = ax.imshow(correlation, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="task correlation")
    ax.set(title=title, xlabel="node", ylabel="node")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path
