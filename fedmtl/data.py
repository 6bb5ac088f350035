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
MAX_INFERRED_CLASSES = 10_000
"""Largest class count inferred from the labels (largest label + 1); above it, a label such as
an id or a timestamp is far more likely than a real class, so `num_classes` must be given."""
_F32_MAX = float(np.finfo(np.float32).max)


class FederatedDataError(ValueError):
    """Bad federated input; the message names the node and the field."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of every node, stored ragged.

    Attributes:
      x: [T, *F] float32 features of all nodes, node after node.
      y: [T, *Y] int32 labels (classification) or float32 targets (regression; stored scaled,
        see `FederatedData.y_mean`).
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
        nodes = [int(k) for k in nodes]
        pick = lambda s: _stack([s.node(k) for k in nodes], s)
        return dataclasses.replace(
            self, train=pick(self.train), test=pick(self.test),
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
          xs, ys: N arrays; node k has xs[k] [n_k, *F] and ys[k] [n_k] (or [n_k, *Y]).
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
        xs, ys, names = _check_nodes(xs, ys, names)
        if not 0.0 <= test_fraction < 1.0:
            raise FederatedDataError(f"test_fraction must be in [0, 1), got {test_fraction}")
        who = [_who(k, names) for k in range(len(xs))]
        task, ys, num_classes = _targets(who, ys, task, num_classes)
        if stratify and task != "classification":
            raise FederatedDataError(f"stratify=True splits class by class, so it needs "
                                     f"classification labels; this is {task}")
        rng = np.random.default_rng(seed)
        train, test = [], []
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            n = len(x)
            n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
            if n - n_test < 1:
                raise FederatedDataError(
                    f"{who[k]}: {n} example(s) with test_fraction={test_fraction} leaves no "
                    f"training example; give it more data or lower test_fraction"
                )
            perm = rng.permutation(n)
            if stratify and n_test:
                test_rows, train_rows = _stratified(perm, y, n_test, num_classes)
            else:
                test_rows, train_rows = perm[:n_test], perm[n_test:]
            test.append((x[test_rows], y[test_rows]))
            train.append((x[train_rows], y[train_rows]))
        return cls(_stack(train), _stack(test), task, num_classes, names)

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
        """Builds from train and test arrays given per node (e.g. a data set's own split).

        Validation and task inference (over both splits) are those of `from_nodes`.
        """
        if train_xs is not None and test_xs is not None and len(train_xs) != len(test_xs):
            raise FederatedDataError(f"{len(train_xs)} train nodes but {len(test_xs)} test nodes")
        train_xs, train_ys, names = _check_nodes(train_xs, train_ys, names, "train")
        test_xs, test_ys, _ = _check_nodes(test_xs, test_ys, names, "test", allow_empty=True)
        n = len(train_xs)
        who = [_who(k, names, s) for s in ("train", "test") for k in range(n)]
        task, ys, num_classes = _targets(who, train_ys + test_ys, task, num_classes)
        feature_shape = train_xs[0].shape[1:]
        for k, x in enumerate(test_xs):
            if x.shape[1:] != feature_shape:
                raise FederatedDataError(f"{who[n + k]}, field x: feature shape {x.shape[1:]} "
                                         f"differs from the train split's {feature_shape}")
        return cls(_stack(list(zip(train_xs, ys[:n], strict=True))),
                   _stack(list(zip(test_xs, ys[n:], strict=True))), task, num_classes, names)


def _stratified(perm: np.ndarray, y: np.ndarray, n_test: int, num_classes: int):
    """(test rows, train rows) of one node, each in the random order `perm`, with the test
    rows drawn class by class: class c gets about n_test · n_c / n of them (largest
    remainders), at least one of each split when n_c >= 2 (n_test moves as far as needed)."""
    n = len(y)
    counts = np.bincount(y, minlength=num_classes)
    lo = (counts >= 2).astype(np.int64)
    hi = np.where(counts >= 2, counts - 1, counts)
    n_test = int(np.clip(n_test, lo.sum(), hi.sum()))
    quota = n_test * counts / n
    alloc = np.clip(np.floor(quota).astype(np.int64), lo, hi)
    while (rest := n_test - int(alloc.sum())) != 0:  # a few passes at most
        room = alloc < hi if rest > 0 else alloc > lo
        priority = np.where(room, (quota - alloc) * np.sign(rest), -np.inf)
        alloc[np.argsort(-priority, kind="stable")[: min(abs(rest), int(room.sum()))]] += (
            np.sign(rest))
    order = perm[np.argsort(y[perm], kind="stable")]  # by class, randomly within a class
    label = y[order]
    rank = np.arange(n) - np.concatenate([[0], np.cumsum(counts)])[label]
    is_test = np.zeros(n, bool)
    is_test[order[rank < alloc[label]]] = True
    return perm[is_test[perm]], perm[~is_test[perm]]


def _stack(pairs, like: Split | None = None) -> Split:
    """Concatenates per-node (x, y) pairs into one Split; `like` gives the shapes when empty."""
    xs = [p[0] for p in pairs]
    ys = [p[1] for p in pairs]
    counts = np.array([len(a) for a in xs], dtype=np.int64)
    if not xs:
        return Split(like.x[:0], like.y[:0], counts)
    return Split(np.concatenate(xs), np.concatenate(ys), counts)


def _who(k: int, names: Sequence[str], split: str = "") -> str:
    """How errors name node k: "node 3", "node 3 'paris'", "node 3 'paris' (test)"."""
    name = f" {names[k]!r}" if names[k] != str(k) else ""
    return f"node {k}{name}" + (f" ({split})" if split else "")


def _array(a, where: str) -> np.ndarray:
    """np.asarray(a), or a FederatedDataError naming `where` for ragged nested lists."""
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:
        raise FederatedDataError(f"{where}: not one rectangular array ({e})") from None


def _missing(ids: np.ndarray) -> np.ndarray:
    """[T] bool: node ids that are NaN or None."""
    if ids.dtype.kind == "f":
        return np.isnan(ids)
    if ids.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and v != v) for v in ids], bool)
    return np.zeros(len(ids), bool)


def _check_names(names, n: int) -> tuple[str, ...]:
    if names is None:
        return tuple(str(k) for k in range(n))
    names = tuple(map(str, names))
    if len(names) != n:
        raise FederatedDataError(f"got {len(names)} names for {n} nodes")
    nodes = {}
    for k, name in enumerate(names):
        nodes.setdefault(name, []).append(k)
    for name, ks in nodes.items():
        if len(ks) > 1:
            which = ", ".join(map(str, ks[:-1])) + f" and {ks[-1]}"
            raise FederatedDataError(f"names: {name!r} names nodes {which}; node names must be "
                                     "distinct")
    return names


def _float32(a: np.ndarray, where: str) -> np.ndarray:
    """`a` as float32, or a FederatedDataError naming the first row that is NaN/inf or
    beyond float32's range (which the cast would turn into inf)."""
    with np.errstate(over="ignore"):
        out = a.astype(np.float32, copy=False)
    bad = ~np.isfinite(out)
    if bad.any():
        first = tuple(np.argwhere(bad)[0])
        value = a[first]
        what = ("NaN/inf value(s)" if not np.isfinite(value) else
                f"value(s) overflow float32 (|v| > {_F32_MAX:.3g}; e.g. {value:.3g})")
        raise FederatedDataError(f"{where}: {int(bad.sum())} {what}, first in row {first[0]}")
    return out


def _check_nodes(xs, ys, names, split: str = "", allow_empty: bool = False):
    """Validates per-node arrays; returns x as float32 arrays, y as numpy arrays, the names."""
    where = f" ({split})" if split else ""
    if xs is None or len(xs) == 0:
        raise FederatedDataError(f"no nodes given{where}: need at least one node")
    if ys is None or len(xs) != len(ys):
        got = 0 if ys is None else len(ys)
        raise FederatedDataError(f"{len(xs)} x arrays but {got} y arrays{where}")
    names = _check_names(names, len(xs))
    out_x, out_y = [], []
    for k in range(len(xs)):
        who = _who(k, names, split)
        x, y = _array(xs[k], f"{who}, field x"), _array(ys[k], f"{who}, field y")
        if x.ndim < 1 or y.ndim < 1:
            raise FederatedDataError(f"{who}: x and y need a leading example axis")
        if len(x) != len(y):
            raise FederatedDataError(
                f"{who}: x has {len(x)} rows but y has {len(y)}; they must match"
            )
        if len(x) == 0 and not allow_empty:
            raise FederatedDataError(f"{who} has no examples")
        if out_x and x.shape[1:] != out_x[0].shape[1:]:
            raise FederatedDataError(
                f"{who}, field x: feature shape {x.shape[1:]} differs from node 0's "
                f"{out_x[0].shape[1:]}"
            )
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise FederatedDataError(f"{who}, field x: dtype {x.dtype} is not real")
        if y.dtype.kind not in "biuf":
            raise FederatedDataError(
                f"{who}, field y: dtype {y.dtype} is not numeric; labels must be integers "
                "0..C-1 (map class names to them first), regression targets real numbers"
            )
        out_x.append(_float32(x, f"{who}, field x"))
        if y.dtype.kind == "f":
            _float32(y, f"{who}, field y")
        out_y.append(y)
    return out_x, out_y, names


def _targets(who: list[str], ys: list[np.ndarray], task, num_classes):
    """Infers or checks the task; returns (task, ys as int32 labels or float32, num_classes)."""
    if task is None:
        task = "classification" if num_classes is not None else _infer_task(ys)
    if task not in TASKS:
        raise FederatedDataError(f"task must be one of {TASKS}, got {task!r}")
    if task == "regression":
        return task, [y.astype(np.float32) for y in ys], None
    ys = [y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y for y in ys]  # a column
    ys = _signed_labels(ys, num_classes)
    num_classes = _check_labels(who, ys, num_classes)
    return task, [y.astype(np.int32) for y in ys], num_classes


def _signed_labels(ys: list[np.ndarray], num_classes) -> list[np.ndarray]:
    """Binary labels in {-1, +1} (every label, some -1) as {0, 1}; other labels unchanged."""
    if num_classes not in (None, 2) or any(y.dtype.kind == "b" for y in ys):
        return ys
    filled = [y for y in ys if y.size]
    if not filled or not all(np.isin(y, (-1, 1)).all() for y in filled):
        return ys
    if not any((y == -1).any() for y in filled):
        return ys
    return [(y == 1).astype(np.int32) for y in ys]


def _infer_task(ys: list[np.ndarray]) -> str:
    filled = [y for y in ys if y.size]
    if all(y.dtype.kind in "biu" for y in filled):
        return "classification"
    floats = [y for y in filled if y.dtype.kind == "f"]
    if all(np.array_equal(y, np.round(y)) for y in floats):
        raise FederatedDataError(
            f"field y: task is not given and every y value is a whole number stored as "
            f"{floats[0].dtype}, which could be class labels or integral regression targets: "
            'pass task="classification" or task="regression"'
        )
    return "regression"


def _check_labels(who: list[str], ys: list[np.ndarray], num_classes) -> int:
    for w, y in zip(who, ys, strict=True):
        if y.ndim != 1:
            raise FederatedDataError(f"{w}, field y: labels must be 1-D (or one column [n, 1]), "
                                     f"got shape {y.shape}")
        if y.dtype.kind == "f":
            frac = np.flatnonzero(y != np.round(y))
            if frac.size:
                raise FederatedDataError(
                    f"{w}, field y: label {y[frac[0]]:g} in row {frac[0]} is not a whole number; "
                    "classification labels are integers 0..C-1"
                )
    if num_classes is None:
        k = max((k for k, y in enumerate(ys) if y.size), key=lambda k: ys[k].max())
        row = int(np.argmax(ys[k]))
        top = ys[k][row].item()
        num_classes = int(top) + 1
        if num_classes > MAX_INFERRED_CLASSES:
            raise FederatedDataError(
                f"{who[k]}, field y: label {top} in row {row} would make {num_classes} classes "
                f"(the largest label + 1), more than MAX_INFERRED_CLASSES = "
                f"{MAX_INFERRED_CLASSES}; pass num_classes= if that many are meant, or number "
                "the classes 0..C-1"
            )
    num_classes = int(num_classes)
    for w, y in zip(who, ys, strict=True):
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if bad.size:
            raise FederatedDataError(
                f"{w}, field y: label {y[bad[0]].item()} in row {bad[0]} out of range "
                f"[0, {num_classes})"
            )
    if not 2 <= num_classes <= np.iinfo(np.int32).max:
        raise FederatedDataError(
            f"classification needs 2 to 2**31 - 1 classes, got {num_classes}"
        )
    return num_classes
