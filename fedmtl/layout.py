"""Size buckets: nodes grouped by training length so padding stays a small share of compute.

Node k takes ceil(n_k / B) steps per epoch; a bucket pads its nodes to its longest one. With
lognormal node sizes one common length would waste most of the compute, so nodes are cut into
at most K buckets chosen by dynamic programming to minimise the padded sample-steps.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Nodes `ids` [n_b] (global indices), padded to `length` rows (a multiple of B)."""

    ids: np.ndarray
    length: int
    test_length: int


def plan_buckets(
    steps: np.ndarray, max_buckets: int, *, real: float | None = None,
    min_real_share: float = 0.75, target_real_share: float = 0.9, min_saving: float = 0.0,
) -> list[np.ndarray]:
    """Groups nodes by steps per epoch, minimising Σ_b |b| · max_b(steps).

    Adds buckets (at most `max_buckets`) until the real share of computed steps reaches
    `min_real_share`; beyond that, up to `target_real_share`, only while one more bucket saves
    at least `min_saving` padded steps (each bucket costs a compilation).

    Args:
      steps: [N] steps per epoch of each node (≥ 1).
      real: real work in step units (default Σ steps); Σ n_k / B counts partial batches as
        padding too.

    Returns:
      lists of node indices, shortest bucket first.
    """
    values, counts = np.unique(steps, return_counts=True)
    m = len(values)
    cum = np.concatenate([[0], np.cumsum(counts)])  # nodes with steps <= values[j-1]
    real = float(np.sum(steps)) if real is None else float(real)
    # cost[i, j]: one bucket holding distinct values i..j-1 (i < j), padded to values[j-1].
    i, j = np.meshgrid(np.arange(m + 1), np.arange(m + 1), indexing="ij")
    cost = np.where(i < j, (cum[j] - cum[i]) * values[np.maximum(j - 1, 0)], np.inf)
    best = cost[0].copy()  # best[j]: first j values in one bucket
    choices = [np.zeros(m + 1, dtype=int)]
    while real / best[m] < target_real_share and len(choices) < min(max_buckets, m):
        total = best[:, None] + cost  # split: first i values optimally, then one bucket i..j-1
        choice = np.argmin(total, axis=0)
        new_best = total[choice, np.arange(m + 1)]
        if real / best[m] >= min_real_share and best[m] - new_best[m] < min_saving:
            break
        choices.append(choice)
        best = new_best
    # Walk the split points back from m.
    cuts, j = [m], m
    for level in range(len(choices) - 1, 0, -1):
        j = int(choices[level][j])
        cuts.append(j)
    cuts.append(0)
    cuts = cuts[::-1]
    return [
        np.flatnonzero((steps >= values[a]) & (steps <= values[b - 1]))
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
        if b > a
    ]


def make_buckets(
    train_counts: np.ndarray, test_counts: np.ndarray, batch_size: int, max_buckets: int = 24,
    min_real_share: float = 0.75, min_saving: float = 0.0,
) -> list[Bucket]:
    """Buckets of nodes with padded lengths (train: a multiple of B; test: the longest).

    Args:
      train_counts, test_counts: [N] examples per node.
      min_real_share: least share of computed sample-steps that are real examples (reached
        unless `max_buckets` is too few).
      min_saving: padded steps per epoch that one more bucket must save beyond that.
    """
    steps = np.maximum((train_counts + batch_size - 1) // batch_size, 1)
    real = max(float(train_counts.sum()) / batch_size, 1e-9)
    buckets = []
    for ids in plan_buckets(steps, max_buckets, real=real, min_real_share=min_real_share,
                            min_saving=min_saving):
        length = int(steps[ids].max()) * batch_size
        test_length = max(int(test_counts[ids].max()), 1)
        buckets.append(Bucket(ids, length, test_length))
    return buckets


def real_share(buckets: list[Bucket], counts: np.ndarray) -> float:
    """Share of computed sample-steps that are real examples (1.0 = no padding)."""
    computed = sum(len(b.ids) * b.length for b in buckets)
    return float(counts.sum() / max(computed, 1))
