"""Federated data: per-node train/test examples, stored ragged, served padded and masked.

Nodes hold very different amounts of data (lognormal sizes span four orders of magnitude), so
`FederatedData` keeps each split as one flat array plus per-node counts (CSR style) and pads only
on request (`padded()`); the engine trains on the ragged rows directly (`fedmtl.lanes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

TASKS = ("classification", "regression")


class FederatedDataError(ValueError):
    """Bad federated input; the message names the node and the field."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of every node, stored ragged.

    Attributes:
      x: [T, *F] float32 features of all nodes, node after node.
      y: [T, *Y] int32 labels (classification) or float32 targets (regression).
      counts: [N] int64 examples per node; node k owns rows offsets[k]:offsets[k+1].
    """

    x: np.ndarray
    y: np.ndarray
    counts: np.ndarray

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)])

    def node(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[k], self.offsets[k + 1]
        return self.x[lo:hi], self.y[lo:hi]

    def padded(self, length: int | None = None, nodes: Sequence[int] | None = None):
        """Pads the chosen nodes (default all) to a common length.

        Returns:
          x [N, S, *F], y [N, S, *Y], mask [N, S] bool, with S = `length` or the largest count.
        """
        nodes = np.arange(len(self.counts)) if nodes is None else np.asarray(nodes)
        counts = self.counts[nodes]
        length = int(counts.max(initial=0)) if length is None else int(length)
        if counts.size and counts.max() > length:
            raise ValueError(f"length {length} is shorter than the largest node ({counts.max()})")
        offsets = self.offsets
        # One gather for all nodes: row s of node k reads offsets[k] + s, clamped, then masked.
        rows = np.arange(length)[None, :]
        mask = rows < counts[:, None]
        if self.x.shape[0] == 0:  # no rows at all (e.g. test_fraction=0): all padding
            shape = (len(nodes), length)
            return (np.zeros(shape + self.x.shape[1:], self.x.dtype),
                    np.zeros(shape + self.y.shape[1:], self.y.dtype), mask)
        src = np.where(mask, offsets[nodes][:, None] + rows, 0)
        x = np.where(mask.reshape(mask.shape + (1,) * (self.x.ndim - 1)), self.x[src], 0)
        y = np.where(mask.reshape(mask.shape + (1,) * (self.y.ndim - 1)), self.y[src], 0)
        return x.astype(self.x.dtype), y.astype(self.y.dtype), mask


@dataclasses.dataclass(frozen=True)
class FederatedData:
    """Examples of N nodes with per-node train and test splits.

    Build it with `from_nodes` (a list of per-node arrays), `from_flat` (flat arrays plus a
    node-id column) or `from_splits` (train and test given per node); each validates its input
    and raises `FederatedDataError` naming the node and field.

    Attributes:
      train, test: `Split`s with per-node counts.
      task: "classification" or "regression".
      num_classes: C for classification, else None.
      names: N node names used in reports.
    """

    train: Split
    test: Split
    task: str
    num_classes: int | None
    names: tuple[str, ...]

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def padded(self, split: str = "train", length: int | None = None):
        """x [N, S, *F], y [N, S, ...], mask [N, S] of one split padded to a common length."""
        return getattr(self, split).padded(length)

    def subset(self, nodes: Sequence[int]) -> FederatedData:
        """The data of the chosen nodes only, in the given order."""
        nodes = [int(k) for k in nodes]
        pick = lambda s: _stack([s.node(k) for k in nodes], s.x, s.y)
        return FederatedData(
            pick(self.train), pick(self.test), self.task, self.num_classes,
            tuple(self.names[k] for k in nodes),
        )

    def summary(self) -> str:
        c = self.train.counts
        return (
            f"{self.num_nodes} nodes, {self.task}"
            + (f" ({self.num_classes} classes)" if self.num_classes else "")
            + f", features {self.feature_shape}, train examples per node "
            f"min {c.min()} / median {int(np.median(c))} / max {c.max()} (total {c.sum()}),"
            f" test total {self.test.counts.sum()}"
        )

    # ----- constructors -----

    @classmethod
    def from_nodes(
        cls,
        xs: Sequence[np.ndarray],
        ys: Sequence[np.ndarray],
        *,
        test_fraction: float = 0.25,
        seed: int = 0,
        task: str | None = None,
        num_classes: int | None = None,
        names: Sequence[str] | None = None,
    ) -> FederatedData:
        """Builds from per-node arrays, splitting each node at random into train and test.

        Args:
          xs, ys: N arrays; node k has xs[k] [n_k, *F] and ys[k] [n_k] (or [n_k, *Y]).
          test_fraction: share of each node's examples held out for testing (at least one
            example when positive; every node must keep at least one training example).
          seed: seed of the per-node random split.
          task: "classification" or "regression"; inferred from y's dtype when None.
          num_classes: C; inferred as the largest label + 1 when None.
          names: node names for reports; "0", "1", ... when None.
        """
        xs, ys = _check_nodes(xs, ys)
        if not 0.0 <= test_fraction < 1.0:
            raise FederatedDataError(f"test_fraction must be in [0, 1), got {test_fraction}")
        rng = np.random.default_rng(seed)
        train, test = [], []
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            n = len(x)
            n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
            if n - n_test < 1:
                raise FederatedDataError(
                    f"node {k}: {n} example(s) with test_fraction={test_fraction} leaves no "
                    f"training example; give it more data or lower test_fraction"
                )
            perm = rng.permutation(n)
            test.append((x[perm[:n_test]], y[perm[:n_test]]))
            train.append((x[perm[n_test:]], y[perm[n_test:]]))
        return cls._build(train, test, task, num_classes, names)

    @classmethod
    def from_flat(
        cls, x: np.ndarray, y: np.ndarray, node_ids: np.ndarray, **kwargs
    ) -> FederatedData:
        """Builds from flat arrays x [T, *F], y [T, ...] and a node-id column [T].

        Nodes are the distinct ids in sorted order (named by their id); the other keyword
        arguments are those of `from_nodes`.
        """
        x, y, node_ids = np.asarray(x), np.asarray(y), np.asarray(node_ids)
        if not (len(x) == len(y) == len(node_ids)):
            raise FederatedDataError(
                f"x, y and node_ids must have the same length, got {len(x)}, {len(y)}, "
                f"{len(node_ids)}"
            )
        if node_ids.ndim != 1:
            raise FederatedDataError(f"node_ids must be 1-D, got shape {node_ids.shape}")
        ids, inverse = np.unique(node_ids, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(ids) + 1))
        xs = [x[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        ys = [y[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        kwargs.setdefault("names", [str(i) for i in ids])
        return cls.from_nodes(xs, ys, **kwargs)

    @classmethod
    def from_splits(
        cls,
        train_xs: Sequence[np.ndarray],
        train_ys: Sequence[np.ndarray],
        test_xs: Sequence[np.ndarray],
        test_ys: Sequence[np.ndarray],
        *,
        task: str | None = None,
        num_classes: int | None = None,
        names: Sequence[str] | None = None,
    ) -> FederatedData:
        """Builds from train and test arrays given per node (e.g. a data set's own split)."""
        train = list(zip(*_check_nodes(train_xs, train_ys, "train"), strict=True))
        test = list(zip(*_check_nodes(test_xs, test_ys, "test", allow_empty=True), strict=True))
        if len(train) != len(test):
            raise FederatedDataError(f"{len(train)} train nodes but {len(test)} test nodes")
        return cls._build(train, test, task, num_classes, names)

    @classmethod
    def _build(cls, train, test, task, num_classes, names) -> FederatedData:
        y0 = train[0][1]
        task = task or ("classification" if np.issubdtype(y0.dtype, np.integer) else "regression")
        if task not in TASKS:
            raise FederatedDataError(f"task must be one of {TASKS}, got {task!r}")
        if task == "classification":
            num_classes = _check_labels(train + test, num_classes, len(train))
        else:
            num_classes = None
        n = len(train)
        names = tuple(str(i) for i in range(n)) if names is None else tuple(map(str, names))
        if len(names) != n:
            raise FederatedDataError(f"got {len(names)} names for {n} nodes")
        ydtype = np.int32 if task == "classification" else np.float32
        x0 = train[0][0]
        return cls(
            _stack(train, x0, y0, ydtype), _stack(test, x0, y0, ydtype), task, num_classes, names
        )


def _stack(pairs, x_like, y_like, ydtype=None) -> Split:
    xs = [p[0] for p in pairs]
    ys = [p[1] for p in pairs]
    x = np.concatenate(xs) if xs else np.zeros((0,) + x_like.shape[1:])
    y = np.concatenate(ys) if ys else np.zeros((0,) + y_like.shape[1:])
    counts = np.array([len(a) for a in xs], dtype=np.int64)
    return Split(x.astype(np.float32), y.astype(ydtype or y_like.dtype), counts)


def _check_nodes(xs, ys, split: str = "", allow_empty: bool = False):
    """Validates per-node arrays; returns them as numpy arrays."""
    where = f" ({split})" if split else ""
    if xs is None or len(xs) == 0:
        raise FederatedDataError(f"no nodes given{where}: need at least one node")
    if len(xs) != len(ys):
        raise FederatedDataError(f"{len(xs)} x arrays but {len(ys)} y arrays{where}")
    xs = [np.asarray(x) for x in xs]
    ys = [np.asarray(y) for y in ys]
    feature_shape = xs[0].shape[1:]
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if x.ndim < 1 or y.ndim < 1:
            raise FederatedDataError(f"node {k}{where}: x and y need a leading example axis")
        if len(x) != len(y):
            raise FederatedDataError(
                f"node {k}{where}: x has {len(x)} rows but y has {len(y)}; they must match"
            )
        if len(x) == 0 and not allow_empty:
            raise FederatedDataError(f"node {k}{where} has no examples")
        if x.shape[1:] != feature_shape:
            raise FederatedDataError(
                f"node {k}{where}, field x: feature shape {x.shape[1:]} differs from node 0's "
                f"{feature_shape}"
            )
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise FederatedDataError(f"node {k}{where}, field x: dtype {x.dtype} is not real")
        bad = ~np.isfinite(x)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise FederatedDataError(
                f"node {k}{where}, field x: {int(bad.sum())} NaN/inf value(s), first in row {row}"
            )
        if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
            row = int(np.argwhere(~np.isfinite(y))[0][0])
            raise FederatedDataError(f"node {k}{where}, field y: NaN/inf value in row {row}")
    return xs, ys


def _check_labels(pairs, num_classes, num_train) -> int:
    for i, (_, y) in enumerate(pairs):
        k, split = (i, "train") if i < num_train else (i - num_train, "test")
        if not np.issubdtype(y.dtype, np.integer):
            raise FederatedDataError(
                f"node {k} ({split}), field y: classification labels must be integers, got "
                f"dtype {y.dtype}"
            )
        if y.ndim != 1:
            raise FederatedDataError(
                f"node {k} ({split}), field y: labels must be 1-D, got shape {y.shape}"
            )
    top = max(int(y.max()) for _, y in pairs if len(y))
    num_classes = top + 1 if num_classes is None else int(num_classes)
    for i, (_, y) in enumerate(pairs):
        k, split = (i, "train") if i < num_train else (i - num_train, "test")
        bad = (y < 0) | (y >= num_classes)
        if bad.any():
            raise FederatedDataError(
                f"node {k} ({split}), field y: label {int(y[bad][0])} out of range "
                f"[0, {num_classes})"
            )
    if num_classes < 2:
        raise FederatedDataError(f"classification needs at least 2 classes, got {num_classes}")
    return num_classes
