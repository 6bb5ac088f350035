"""Federated data: per-node train/test examples, stored ragged, served padded and masked.

Nodes hold very different amounts of data (lognormal sizes span four orders of magnitude), so
`FederatedData` keeps each split as one flat array plus per-node counts (CSR style) and pads only
on request (`padded()`); the engine trains on the ragged rows directly (`fedmtl.lanes`).

This module is the public API: `FederatedData` and its constructors. The work behind them lives
in three modules whose public names are importable from here as well:
  * `fedmtl.data_ragged`: `Split` (the ragged storage) and chunked walks over its nodes
    (`CHUNK_BYTES`);
  * `fedmtl.data_checks`: input validation and task inference (`FederatedDataError`, `TASKS`,
    `MAX_INFERRED_CLASSES`);
  * `fedmtl.data_split`: the per-node train/test split (shuffled or stratified).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fedmtl.data_checks import MAX_INFERRED_CLASSES as MAX_INFERRED_CLASSES
from fedmtl.data_checks import TASKS as TASKS
from fedmtl.data_checks import (
    FederatedDataError,
    _array,
    _check_finite,
    _check_nodes,
    _missing,
    _targets,
    _who,
)
from fedmtl.data_ragged import CHUNK_BYTES as CHUNK_BYTES
from fedmtl.data_ragged import Split, _chunks, _offsets, _stack, _take_nodes, _Workspace
from fedmtl.data_split import _Splitter, _stratified_orders, _test_counts


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
      names: N distinct node names used in reports.
      y_mean, y_scale: regression targets are stored as y = (raw - y_mean) / y_scale, two
        scalars shared by every node and split (0 and 1: stored as given). Models train on
        the stored y; `Engine.evaluate` reports RMSE and MSE in raw units.
    """

    train: Split
    test: Split
    task: str
    num_classes: int | None
    names: tuple[str, ...]
    y_mean: float = 0.0
    y_scale: float = 1.0

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
        """The data of the chosen nodes only, in the given order (target scaling kept)."""
        nodes = np.fromiter(map(int, nodes), np.int64)
        return dataclasses.replace(
            self, train=_take_nodes(self.train, nodes), test=_take_nodes(self.test, nodes),
            names=tuple(self.names[k] for k in nodes),
        )

    def scale_targets(self, mean: float, scale: float) -> FederatedData:
        """The same data with regression targets stored as (y - mean) / scale.

        Scalings compose: `y_mean` and `y_scale` keep mapping the stored targets [T, *Y]
        back to the raw ones (`raw_targets`).
        """
        if self.task != "regression":
            raise FederatedDataError(f"only regression targets can be scaled; this is {self.task}")
        mean, scale = float(mean), float(scale)
        if not (np.isfinite(mean) and np.isfinite(scale) and scale > 0):
            raise FederatedDataError(f"target scale must be finite and > 0 and the mean finite, "
                                     f"got mean {mean} and scale {scale}")

        def apply(split: Split, name: str) -> Split:
            y = ((split.y - mean) / scale).astype(np.float32)
            if not np.isfinite(y).all():
                raise FederatedDataError(f"{name} targets overflow float32 when scaled by {scale}")
            return dataclasses.replace(split, y=y)

        return dataclasses.replace(
            self, train=apply(self.train, "train"), test=apply(self.test, "test"),
            y_mean=self.y_mean + mean * self.y_scale, y_scale=self.y_scale * scale,
        )

    def standardize_targets(self) -> FederatedData:
        """Regression targets z-scored with the train split's mean and std over all nodes.

        Two federation-wide scalars (over every train row of every node, and every target
        column for y [T, *Y]) are applied to both splits; a zero std is left as 1. In a real
        federation the server would learn them from each node's (count, sum, sum of squares).
        """
        if self.task != "regression":
            raise FederatedDataError(f"only regression targets can be standardized; this is "
                                     f"{self.task}")
        y = self.train.y.astype(np.float64)
        std = float(y.std())
        return self.scale_targets(float(y.mean()), std if std > 0 else 1.0)

    def raw_targets(self, y) -> np.ndarray:
        """Stored targets or predictions y (any shape) in raw units: y * y_scale + y_mean."""
        return np.asarray(y, np.float64) * self.y_scale + self.y_mean

    def summary(self) -> str:
        c = self.train.counts
        scaled = (self.y_mean, self.y_scale) != (0.0, 1.0)
        return (
            f"{self.num_nodes} nodes, {self.task}"
            + (f" ({self.num_classes} classes)" if self.num_classes else "")
            + (f" (targets stored as (y - {self.y_mean:.4g}) / {self.y_scale:.4g})"
               if scaled else "")
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
        stratify: bool = False,
    ) -> FederatedData:
        """Builds from per-node arrays, splitting each node at random into train and test.

        Features are stored as float32 and must be finite there (a float64 value beyond
        float32's range is an error, not inf); so must float targets.

        When `task` is None it is inferred from y over all nodes:
          * integer or bool labels, or an explicit `num_classes`: classification;
          * float y with a value that is not a whole number: regression;
          * float y of whole numbers only (e.g. 0.0, 1.0, 2.0): ambiguous between class labels
            and integral targets (counts, cycles), so an error asks for `task`.
        Classification accepts integer, bool and whole-number float labels (stored as int32).
        Other dtypes (strings, objects) are errors whatever the task. Classification labels may
        come as a column [n_k, 1] (stored as [n_k]), and binary labels as {-1, +1}: when every
        label of every node is -1 or +1 (some -1) and `num_classes` is None or 2, -1 is stored
        as class 0 and +1 as class 1.

        Args:
          xs: N arrays; node k's features `xs[k]` [n_k, *F].
          ys: N arrays; node k's targets `ys[k]` [n_k] (or [n_k, *Y]).
          test_fraction: share of each node's examples held out for testing (at least one
            example when positive; every node must keep at least one training example).
          seed: seed of the per-node random split.
          stratify: split each node's examples class by class (classification only), so that
            the node's test share of each class is close to `test_fraction` and every class
            with at least 2 examples on the node has at least one in each split (a rare
            class then reaches both the training and the test set). The node's test count is
            the unstratified one, round(test_fraction · n_k) (at least 1), moved up or down
            only as far as that guarantee needs. Deterministic by `seed`; without it a small
            node may hold all its few positives in one split.
          task: "classification" or "regression"; inferred as above when None.
          num_classes: C; inferred as the largest label + 1 when None, which must then be at
            most `MAX_INFERRED_CLASSES`.
          names: N distinct node names for reports; "0", "1", ... when None.

        Raises:
          FederatedDataError: naming the node (index, and name when names are given), the
            field and, for bad values, the row of the node's array.
        """
        xs, ys, names = _check_nodes(xs, ys, names, finite=False)  # x: while splitting
        counts = np.fromiter(map(len, xs), np.int64, len(xs))
        who = lambda k: _who(k, names)
        try:
            if not 0.0 <= test_fraction < 1.0:
                raise FederatedDataError(f"test_fraction must be in [0, 1), got {test_fraction}")
            task, y, num_classes = _targets(who, ys, task, num_classes)
            if stratify and task != "classification":
                raise FederatedDataError(f"stratify=True splits class by class, so it needs "
                                         f"classification labels; this is {task}")
            n_test = _test_counts(counts, test_fraction, who)
            if task == "regression":
                y = np.concatenate(y, dtype=np.float32)
        except ValueError:  # FederatedDataError, or targets of different shapes
            _check_finite(xs, who)  # a bad feature value is reported first, as it always was
            raise
        orders = None
        if stratify and test_fraction > 0:
            orders, n_test = _stratified_orders(counts, n_test, seed, y, num_classes)
        out = _Splitter(counts, n_test, seed, xs[0].shape[1:], y, orders)
        offsets, work = _offsets(counts), _Workspace()
        for lo, hi in _chunks(counts * 4 * max(1, int(np.prod(xs[0].shape[1:])))):
            x = work.get("x", (offsets[hi] - offsets[lo], *xs[0].shape[1:]), np.float32)
            with np.errstate(over="ignore", invalid="ignore"):
                np.concatenate(xs[lo:hi], out=x, casting="same_kind")
            if not np.isfinite(x, out=work.get("ok", x.shape, bool)).all():
                _check_finite(xs[lo:hi], lambda k, lo=lo: who(lo + k))
            out.put(lo, hi, x, y[offsets[lo]:offsets[hi]])
        return cls(out.train, out.test, task, num_classes, names)

    @classmethod
    def from_flat(
        cls, x: np.ndarray, y: np.ndarray, node_ids: np.ndarray, **kwargs
    ) -> FederatedData:
        """Builds from flat arrays x [T, *F], y [T, ...] and a node-id column [T].

        Nodes are the distinct ids in sorted order (named by their id; no id may be NaN or
        None); rows named in errors count within a node, in their flat order. The other
        keyword arguments are those of `from_nodes`.
        """
        x, y, node_ids = (_array(a, f"field {f}") for a, f in
                          ((x, "x"), (y, "y"), (node_ids, "node_ids")))
        if not (len(x) == len(y) == len(node_ids)):
            raise FederatedDataError(
                f"x, y and node_ids must have the same length, got {len(x)}, {len(y)}, "
                f"{len(node_ids)}"
            )
        if node_ids.ndim != 1:
            raise FederatedDataError(f"node_ids must be 1-D, got shape {node_ids.shape}")
        missing = _missing(node_ids)
        if missing.any():
            raise FederatedDataError(
                f"node_ids: {int(missing.sum())} row(s) have no node id (NaN or None), first "
                f"row {int(np.argmax(missing))}"
            )
        ids, inverse = np.unique(node_ids, return_inverse=True)
        inverse = inverse.reshape(-1)
        if (np.diff(inverse) < 0).any():  # rows not grouped by node: one gather groups them
            order = np.argsort(inverse, kind="stable")
            x, y, inverse = x[order], y[order], inverse[order]
        bounds = np.searchsorted(inverse, np.arange(1, len(ids)))
        xs, ys = (np.split(x, bounds), np.split(y, bounds)) if len(ids) else ([], [])  # views
        kwargs.setdefault("names", list(map(str, ids)))
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
        """Builds from train and test arrays given per node (e.g. a data set's own split).

        Validation and task inference (over both splits) are those of `from_nodes`.
        """
        if train_xs is not None and test_xs is not None and len(train_xs) != len(test_xs):
            raise FederatedDataError(f"{len(train_xs)} train nodes but {len(test_xs)} test nodes")
        train_xs, train_ys, names = _check_nodes(train_xs, train_ys, names, "train")
        test_xs, test_ys, _ = _check_nodes(test_xs, test_ys, names, "test", allow_empty=True)
        n = len(train_xs)
        who = lambda k: _who(k % n, names, "test" if k >= n else "train")
        task, y, num_classes = _targets(who, train_ys + test_ys, task, num_classes)
        feature_shape = train_xs[0].shape[1:]
        for k, x in enumerate(test_xs):
            if x.shape[1:] != feature_shape:
                raise FederatedDataError(f"{who(n + k)}, field x: feature shape {x.shape[1:]} "
                                         f"differs from the train split's {feature_shape}")
        t = n if task == "regression" else sum(map(len, train_xs))
        return cls(_stack(train_xs, y[:t]), _stack(test_xs, y[t:]), task, num_classes, names)
