"""Partitioners: split a centralized data set (x, y) over simulated nodes.

Each partitioner has an index-level form (`*_indices`, a list of per-node index arrays that
together hold every example exactly once) and a form returning `FederatedData`, whose nodes are
then split at random into train and test by `FederatedData.from_nodes`.

  * `dirichlet`: label skew, per class proportions over nodes ~ Dir(alpha) (Hsu et al. 2019).
  * `shards`: pathological label skew, each node gets a few single-class shards (McMahan et al.
    2017).
  * `quantity_skew`: lognormal node sizes, IID labels.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from fedmtl.data import FederatedData

_MAX_DRAWS = 1000


def _rng(seed: int) -> np.random.Generator:
    # A stream distinct from from_nodes' default_rng(seed), which splits the nodes afterwards.
    return np.random.default_rng([seed, 0x9A27])


def _check_common(num_examples: int, num_nodes: int, min_size: int) -> None:
    if int(num_nodes) != num_nodes or num_nodes < 1:
        raise ValueError(f"num_nodes must be a positive integer, got {num_nodes}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if num_nodes * max(min_size, 1) > num_examples:
        raise ValueError(
            f"num_nodes={num_nodes} with min_size={min_size} needs at least "
            f"{num_nodes * max(min_size, 1)} examples, got {num_examples}"
        )


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D labels, got shape {y.shape}")
    return y


# ----- index partitions -----


def dirichlet_indices(
    y, num_nodes: int, *, alpha: float, seed: int = 0, min_size: int = 2, balance: bool = True
) -> list[np.ndarray]:
    """Label skew: each class's examples are split over nodes with proportions ~ Dir(alpha).

    Small alpha (e.g. 0.1) gives nodes dominated by a few classes; large alpha approaches IID.
    Draws are repeated until every node has `min_size` examples (as in NIID-Bench, Li et al.
    2022), at most 1000 times.

    Args:
      y: [n] labels (any values; classes are the distinct values).
      num_nodes: N.
      alpha: Dirichlet concentration, > 0.
      seed: seed of the draws.
      min_size: examples every node must get.
      balance: as in NIID-Bench, a node that already holds n / N examples gets no share of
        later classes, which keeps node sizes comparable; False draws plain Dir(alpha).

    Returns:
      N sorted int64 index arrays into y, disjoint and covering range(n).
    """
    y = _labels(y)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    _check_common(len(y), num_nodes, min_size)
    rng = _rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(_MAX_DRAWS):
        parts = [[] for _ in range(num_nodes)]
        sizes = np.zeros(num_nodes, np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_nodes, float(alpha)))
            if balance:
                p = p * (sizes < len(y) / num_nodes)
                p = p / p.sum() if p.sum() > 0 else np.full(num_nodes, 1.0 / num_nodes)
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)) for p in parts]
    raise ValueError(
        f"dirichlet: no draw in {_MAX_DRAWS} gave every node min_size={min_size} examples "
        f"(alpha={alpha}, num_nodes={num_nodes}, {len(by_class)} classes); raise alpha, lower "
        f"num_nodes or min_size"
    )


def shard_indices(
    y, num_nodes: int, *, classes_per_node: int, seed: int = 0
) -> list[np.ndarray]:
    """Pathological label skew: sort by label, cut into num_nodes * classes_per_node shards,
    give each node classes_per_node shards at random.

    Unlike a plain equal-size cut of the sorted labels, a shard never straddles two classes:
    each class gets at least one shard and the rest go to the classes with the most examples
    per shard, so every node holds at most `classes_per_node` classes. With equal
    class sizes and a shard count divisible by the class count this is the classic scheme.

    Args:
      y: [n] labels.
      num_nodes: N.
      classes_per_node: shards per node (the most classes a node can hold).
      seed: seed of the shuffles.

    Returns:
      N sorted int64 index arrays into y, disjoint and covering range(n).
    """
    y = _labels(y)
    if int(classes_per_node) != classes_per_node or classes_per_node < 1:
        raise ValueError(f"classes_per_node must be a positive integer, got {classes_per_node}")
    _check_common(len(y), num_nodes, 1)
    num_shards = num_nodes * classes_per_node
    classes = np.unique(y)
    if num_shards < len(classes):
        raise ValueError(
            f"num_nodes * classes_per_node = {num_shards} shards < {len(classes)} classes; "
            f"every class needs a shard: raise num_nodes or classes_per_node"
        )
    if num_shards > len(y):
        raise ValueError(
            f"num_nodes * classes_per_node = {num_shards} shards > {len(y)} examples"
        )
    rng = _rng(seed)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    count = np.ones(len(classes), np.int64)
    # Max-heap on examples per shard: the next shard splits the class with the largest shards.
    # Since shards <= examples, that class always has more examples than shards: none is empty.
    heap = [(-len(idx), c) for c, idx in enumerate(by_class)]
    heapq.heapify(heap)
    for _ in range(num_shards - len(classes)):
        _, c = heapq.heappop(heap)
        count[c] += 1
        heapq.heappush(heap, (-len(by_class[c]) / count[c], c))
    shards = [s for c, idx in enumerate(by_class) for s in np.array_split(idx, count[c])]
    order = rng.permutation(num_shards).reshape(num_nodes, classes_per_node)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in order]


def quantity_skew_indices(
    num_examples: int, num_nodes: int, *, sigma: float, seed: int = 0, min_size: int = 2
) -> list[np.ndarray]:
    """Quantity skew with IID labels: node shares ~ lognormal(0, sigma), normalized.

    Each node first gets `min_size` examples; the rest are dealt by the shares (largest
    remainder rounding), then examples are assigned to nodes at random.

    Args:
      num_examples: n.
      num_nodes: N.
      sigma: lognormal spread, >= 0 (0 gives equal sizes; 1-2 spans orders of magnitude).
      seed: seed of the draws.
      min_size: examples every node must get.

    Returns:
      N sorted int64 index arrays into range(n), disjoint and covering it.
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    _check_common(num_examples, num_nodes, min_size)
    rng = _rng(seed)
    share = rng.lognormal(0.0, sigma, num_nodes)
    share /= share.sum()
    rest = num_examples - num_nodes * min_size
    exact = share * rest
    sizes = np.floor(exact).astype(np.int64)
    left = rest - sizes.sum()
    sizes[np.argsort(sizes - exact, kind="stable")[:left]] += 1  # largest remainders first
    sizes += min_size
    perm = rng.permutation(num_examples)
    return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


# ----- FederatedData -----


def from_indices(
    x,
    y,
    parts: Sequence[np.ndarray],
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    task: str | None = None,
    num_classes: int | None = None,
    names: Sequence[str] | None = None,
) -> FederatedData:
    """FederatedData whose node k holds x[parts[k]], y[parts[k]], split by `from_nodes`."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}; they must match")
    return FederatedData.from_nodes(
        [x[p] for p in parts], [y[p] for p in parts], test_fraction=test_fraction, seed=seed,
        task=task, num_classes=num_classes, names=names,
    )


def dirichlet(
    x, y, num_nodes: int, *, alpha: float, seed: int = 0, test_fraction: float = 0.25,
    min_size: int = 2, balance: bool = True, num_classes: int | None = None,
) -> FederatedData:
    """Label-skewed nodes (see `dirichlet_indices`) as a classification FederatedData.

    Args:
      x: [n, *F] features; y: [n] int labels.
      num_nodes: as in `dirichlet_indices`.
  alpha: as in `dirichlet_indices`.
  seed: as in `dirichlet_indices`.
  min_size: as in `dirichlet_indices`.
  balance: as in `dirichlet_indices`.
      test_fraction: share of each node held out for testing.
      num_classes: C; the largest label + 1 when None (every example is in some node, so
        no class is missed; at most `data.MAX_INFERRED_CLASSES`).
    """
    parts = dirichlet_indices(
        y, num_nodes, alpha=alpha, seed=seed, min_size=min_size, balance=balance
    )
    return from_indices(x, y, parts, test_fraction=test_fraction, seed=seed,
                        task="classification", num_classes=num_classes)


def shards(
    x, y, num_nodes: int, *, classes_per_node: int, seed: int = 0, test_fraction: float = 0.25,
    num_classes: int | None = None,
) -> FederatedData:
    """Pathological label skew (see `shard_indices`) as a classification FederatedData.

    Args:
      x: [n, *F] features; y: [n] int labels.
      num_nodes: as in `shard_indices`.
  classes_per_node: as in `shard_indices`.
  seed: as in `shard_indices`.
      test_fraction: share of each node held out for testing.
      num_classes: C; the largest label + 1 when None (every example is in some node, so
        no class is missed; at most `data.MAX_INFERRED_CLASSES`).
    """
    parts = shard_indices(y, num_nodes, classes_per_node=classes_per_node, seed=seed)
    return from_indices(x, y, parts, test_fraction=test_fraction, seed=seed,
                        task="classification", num_classes=num_classes)


def quantity_skew(
    x, y, num_nodes: int, *, sigma: float, seed: int = 0, test_fraction: float = 0.25,
    min_size: int = 2, task: str | None = None, num_classes: int | None = None,
) -> FederatedData:
    """Lognormal node sizes with IID labels (see `quantity_skew_indices`).

    Args:
      x: [n, *F] features; y: [n] labels or targets.
      num_nodes: as in `quantity_skew_indices`.
  sigma: as in `quantity_skew_indices`.
  seed: as in `quantity_skew_indices`.
  min_size: as in `quantity_skew_indices`.
      test_fraction: share of each node held out for testing.
      task: "classification" or "regression"; inferred from y as in
        `FederatedData.from_nodes` when None.
      num_classes: C for classification; the largest label + 1 when None.
    """
    parts = quantity_skew_indices(len(y), num_nodes, sigma=sigma, seed=seed, min_size=min_size)
    return from_indices(x, y, parts, test_fraction=test_fraction, seed=seed, task=task,
                        num_classes=num_classes)
