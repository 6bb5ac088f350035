"""The per-node train/test split: how many test rows each node holds out, and which.

`_test_counts` gives each node's test count; `_Splitter` shuffles each node's rows (one
`rng.permutation(n_k)` per node) and writes them straight into preallocated train and test
`Split`s, a chunk of nodes at a time; `_stratified_orders` draws instead, class by class
(`_stratified`), row orders that put every class with at least 2 examples on a node in both
splits. `FederatedData.from_nodes` and `fedmtl.synthetic` split through these.
"""

from __future__ import annotations

import numpy as np

from fedmtl.data_checks import FederatedDataError
from fedmtl.data_ragged import Split, _offsets, aligned_empty


def _test_counts(counts: np.ndarray, test_fraction: float, who) -> np.ndarray:
    """[N] test rows per node: round(test_fraction · n_k), at least 1 (0 when test_fraction
    is 0); an error names the first node that would keep no training row."""
    if test_fraction == 0:
        return np.zeros(len(counts), np.int64)
    n_test = np.maximum(1, np.round(test_fraction * counts).astype(np.int64))
    short = np.flatnonzero(counts - n_test < 1)
    if short.size:
        k = int(short[0])
        raise FederatedDataError(
            f"{who(k)}: {counts[k]} example(s) with test_fraction={test_fraction} leaves no "
            f"training example; give it more data or lower test_fraction"
        )
    return n_test


class _Splitter:
    """Shuffles and splits each node's rows straight into preallocated train and test arrays.

    Node k's rows are shuffled by one `rng.permutation(n_k)` of `default_rng(seed)`, node after
    node; its first n_test[k] shuffled rows are its test rows, the rest its training rows.

    Args:
      counts, n_test: [N] int64 rows and test rows per node.
      feature_shape: F; features are stored as float32 [T, *F].
      y: labels or targets [T, *Y] stored in their dtype (an array of that dtype and trailing
        shape will do: only `y.shape[1:]` and `y.dtype` are read).
      orders: optional [T] node-local row orders, test rows first, used instead of the
        shuffles (stratified splits).
    """

    def __init__(self, counts, n_test, seed, feature_shape, y, orders=None):
        self.counts, self.n_test, self.orders = counts, n_test, orders
        self.rng = np.random.default_rng(seed)
        self.offsets = _offsets(counts)
        self.parts = []
        for n in (n_test, counts - n_test):
            t = int(n.sum())
            self.parts.append((Split(aligned_empty((t, *feature_shape), np.float32),
                                     aligned_empty((t, *y.shape[1:]), y.dtype), n),
                               _offsets(n)))
        (self.test, _), (self.train, _) = self.parts

    def put(self, lo: int, hi: int, x: np.ndarray, y: np.ndarray, starts=None) -> None:
        """Writes nodes lo..hi-1 from x [R, *F] float32 and y [R, *Y], which hold node k's
        rows at starts[k - lo] + (0 .. n_k-1) (default: node after node)."""
        n = self.counts[lo:hi]
        first = np.repeat(self.offsets[lo:hi] - self.offsets[lo], n)
        if self.orders is None:  # one rng.permutation per node: the shuffle itself
            local = np.concatenate([self.rng.permutation(k) for k in n])
        else:
            local = self.orders[self.offsets[lo]:self.offsets[hi]]
        src = local + (first if starts is None else np.repeat(starts, n))
        is_test = np.arange(len(src)) - first < np.repeat(self.n_test[lo:hi], n)
        for (split, off), rows in zip(self.parts, (src[is_test], src[~is_test]), strict=True):
            np.take(x, rows, axis=0, out=split.x[off[lo]:off[hi]], mode="clip")
            np.take(y, rows, axis=0, out=split.y[off[lo]:off[hi]], mode="clip")


def _stratified_orders(counts, n_test, seed, y, num_classes):
    """Every node's `_stratified` split: ([T] node-local rows, test rows first, [N] test
    counts). One permutation per node, as the plain split draws."""
    rng = np.random.default_rng(seed)
    offsets = _offsets(counts)
    orders, n_test = np.empty(offsets[-1], np.int64), n_test.copy()
    for k, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        test, train = _stratified(rng.permutation(b - a), y[a:b], int(n_test[k]), num_classes)
        orders[a:a + len(test)], orders[a + len(test):b] = test, train
        n_test[k] = len(test)
    return orders, n_test


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
