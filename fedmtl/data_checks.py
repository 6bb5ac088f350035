"""Validation of federated input: per-node arrays, node names and ids, labels and targets.

Every check raises `FederatedDataError` naming the node (index, and name when names are given),
the field and, for bad values, the row within the node's array. The checks run over all nodes
at once and go node by node only to name the first bad one. `_targets` infers or checks the
task and returns the labels [T] int32 of all nodes (classification) or the targets as given.
`fedmtl.data` re-exports the public names (`FederatedDataError`, `TASKS`,
`MAX_INFERRED_CLASSES`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmtl.data_ragged import _chunks, _offsets

TASKS = ("classification", "regression")
MAX_INFERRED_CLASSES = 10_000
"""Largest class count inferred from the labels (largest label + 1); above it, a label such as
an id or a timestamp is far more likely than a real class, so `num_classes` must be given."""
_F32_MAX = float(np.finfo(np.float32).max)


class FederatedDataError(ValueError):
    """Bad federated input; the message names the node and the field."""


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
        return tuple(map(str, range(n)))
    names = tuple(map(str, names))
    if len(names) != n:
        raise FederatedDataError(f"got {len(names)} names for {n} nodes")
    if len(set(names)) == n:
        return names
    nodes = {}
    for k, name in enumerate(names):
        nodes.setdefault(name, []).append(k)
    for name, ks in nodes.items():
        if len(ks) > 1:
            which = ", ".join(map(str, ks[:-1])) + f" and {ks[-1]}"
            raise FederatedDataError(f"names: {name!r} names nodes {which}; node names must be "
                                     "distinct")
    raise AssertionError("unreachable")


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


def _finite32(arrays: list[np.ndarray]) -> bool:
    """Whether every value of the real arrays is finite as float32 (cast a chunk at a time)."""
    for lo, hi in _chunks(np.fromiter(map(np.size, arrays), np.int64, len(arrays)) * 4):
        with np.errstate(over="ignore", invalid="ignore"):
            flat = np.concatenate([a.reshape(-1) for a in arrays[lo:hi]], dtype=np.float32)
        if not np.isfinite(flat).all():
            return False
    return True


def _check_finite(xs: list[np.ndarray], who) -> None:
    """Raises naming the first node (who(k) for xs[k]) and row whose x is not finite as
    float32."""
    if not _finite32(xs):
        for k, x in enumerate(xs):
            _float32(x, f"{who(k)}, field x")


def _check_nodes(xs, ys, names, split: str = "", allow_empty: bool = False,
                 finite: bool = True):
    """Validates per-node arrays; returns xs and ys as lists of numpy arrays, and the names.

    The checks run over all nodes at once; only when one fails, `_check_node` goes node by
    node to raise the error of the first bad node. With finite=False, x values are checked
    only then: the caller checks them as it stores them (see `_check_finite`).
    """
    where = f" ({split})" if split else ""
    if xs is None or len(xs) == 0:
        raise FederatedDataError(f"no nodes given{where}: need at least one node")
    if ys is None or len(xs) != len(ys):
        got = 0 if ys is None else len(ys)
        raise FederatedDataError(f"{len(xs)} x arrays but {got} y arrays{where}")
    names = _check_names(names, len(xs))
    try:
        arrays = list(map(np.asarray, xs)), list(map(np.asarray, ys))
    except (ValueError, TypeError):  # a ragged node: named below
        arrays = None
    if arrays is not None and _nodes_ok(*arrays, allow_empty, finite):
        return *arrays, names
    checked = [_check_node(k, xs[k], ys[k], xs[0], _who(k, names, split), allow_empty)
               for k in range(len(xs))]
    return [x for x, _ in checked], [y for _, y in checked], names


def _nodes_ok(xs: list[np.ndarray], ys: list[np.ndarray], allow_empty: bool, finite: bool):
    """Whether every node passes `_check_node` (x values only when `finite`)."""
    if not all(x.ndim and y.ndim for x, y in zip(xs, ys, strict=True)):
        return False
    n = np.fromiter(map(len, xs), np.int64, len(xs))
    if (n != np.fromiter(map(len, ys), np.int64, len(ys))).any() or (
            not allow_empty and (n == 0).any()):
        return False
    if len({x.shape[1:] for x in xs}) > 1 or not all(
            np.issubdtype(t, np.number) and not np.issubdtype(t, np.complexfloating)
            for t in {x.dtype for x in xs}):
        return False
    if any(t.kind not in "biuf" for t in {y.dtype for y in ys}):
        return False
    if not _finite32([y for y in ys if y.dtype.kind == "f"]):
        return False
    return not finite or _finite32(xs)


def _check_node(k: int, x, y, x0, who: str, allow_empty: bool):
    """Node k's (x as float32, y), or the FederatedDataError of its first failed check."""
    x, y = _array(x, f"{who}, field x"), _array(y, f"{who}, field y")
    if x.ndim < 1 or y.ndim < 1:
        raise FederatedDataError(f"{who}: x and y need a leading example axis")
    if len(x) != len(y):
        raise FederatedDataError(f"{who}: x has {len(x)} rows but y has {len(y)}; they must match")
    if len(x) == 0 and not allow_empty:
        raise FederatedDataError(f"{who} has no examples")
    shape0 = np.shape(x0)[1:]
    if k and x.shape[1:] != shape0:
        raise FederatedDataError(
            f"{who}, field x: feature shape {x.shape[1:]} differs from node 0's {shape0}"
        )
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise FederatedDataError(f"{who}, field x: dtype {x.dtype} is not real")
    if y.dtype.kind not in "biuf":
        raise FederatedDataError(
            f"{who}, field y: dtype {y.dtype} is not numeric; labels must be integers "
            "0..C-1 (map class names to them first), regression targets real numbers"
        )
    x = _float32(x, f"{who}, field x")
    if y.dtype.kind == "f":
        _float32(y, f"{who}, field y")
    return x, y


def _targets(who, ys: list[np.ndarray], task, num_classes):
    """Infers or checks the task; returns (task, labels, num_classes): labels [T] int32 of all
    nodes, node after node, or for regression the targets ys as given. who(k) names node k in
    errors."""
    if task is None:
        task = "classification" if num_classes is not None else _infer_task(ys)
    if task not in TASKS:
        raise FederatedDataError(f"task must be one of {TASKS}, got {task!r}")
    if task == "regression":  # stacked as float32 by the caller, where it always was
        return task, ys, None
    ys = [y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y for y in ys]  # a column
    if not all(y.ndim == 1 for y in ys):
        _labels_one_by_one(who, ys)  # raises for the first node whose labels are not 1-D
    y = np.concatenate(ys)
    if (num_classes in (None, 2) and not any(a.dtype.kind == "b" for a in ys) and y.size
            and ((y == -1) | (y == 1)).all() and (y == -1).any()):
        y = (y == 1).astype(np.int32)  # binary labels in {-1, +1} (some -1) as {0, 1}
    num_classes = _check_labels(who, ys, y, num_classes)
    return task, y.astype(np.int32), num_classes


def _infer_task(ys: list[np.ndarray]) -> str:
    filled = [y for y in ys if y.size]
    if all(y.dtype.kind in "biu" for y in filled):
        return "classification"
    floats = [y.reshape(-1) for y in filled if y.dtype.kind == "f"]
    flat = np.concatenate(floats)
    if np.array_equal(flat, np.round(flat)):
        raise FederatedDataError(
            f"field y: task is not given and every y value is a whole number stored as "
            f"{floats[0].dtype}, which could be class labels or integral regression targets: "
            'pass task="classification" or task="regression"'
        )
    return "regression"


def _labels_one_by_one(who, ys: list[np.ndarray]) -> None:
    """Raises for the first node whose labels are not 1-D or not whole numbers."""
    for k, y in enumerate(ys):
        if y.ndim != 1:
            raise FederatedDataError(f"{who(k)}, field y: labels must be 1-D (or one column "
                                     f"[n, 1]), got shape {y.shape}")
        frac = np.flatnonzero(y != np.round(y)) if y.dtype.kind == "f" else ()
        if len(frac):
            raise FederatedDataError(
                f"{who(k)}, field y: label {y[frac[0]]:g} in row {frac[0]} is not a whole "
                "number; classification labels are integers 0..C-1"
            )


def _check_labels(who, ys: list[np.ndarray], y: np.ndarray, num_classes) -> int:
    """Checks the labels y [T] of all nodes (ys: the same per node, as given, for messages)
    and returns C; errors name the first bad node and its row."""
    offsets = _offsets(np.fromiter(map(len, ys), np.int64, len(ys)))

    def at(row):  # (node, row within the node, the label as given) of flat row `row`
        k = int(np.searchsorted(offsets, row, side="right")) - 1
        return k, int(row - offsets[k]), ys[k][row - offsets[k]]

    if y.dtype.kind == "f" and (y != np.round(y)).any():
        _labels_one_by_one(who, ys)
    if num_classes is None:
        first_max = int(np.argmax(y))
        num_classes = int(y[first_max].item()) + 1
        if num_classes > MAX_INFERRED_CLASSES:  # labels as given ({-1, +1} are not that big)
            k, row, top = at(first_max)
            num_classes = int(top.item()) + 1
            raise FederatedDataError(
                f"{who(k)}, field y: label {top.item()} in row {row} would make {num_classes} "
                f"classes (the largest label + 1), more than MAX_INFERRED_CLASSES = "
                f"{MAX_INFERRED_CLASSES}; pass num_classes= if that many are meant, or number "
                "the classes 0..C-1"
            )
    num_classes = int(num_classes)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        k, row, label = at(bad[0])
        raise FederatedDataError(
            f"{who(k)}, field y: label {label.item()} in row {row} out of range "
            f"[0, {num_classes})"
        )
    if not 2 <= num_classes <= np.iinfo(np.int32).max:
        raise FederatedDataError(
            f"classification needs 2 to 2**31 - 1 classes, got {num_classes}"
        )
    return num_classes
