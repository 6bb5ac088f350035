"""Ragged storage of per-node rows: `Split` (one flat array plus per-node counts, CSR style)
and the helpers that build, gather and walk it a chunk of nodes at a time.

Node k owns rows offsets[k]:offsets[k+1] of a split's flat arrays, offsets [N + 1] being 0 and
the running sums of the counts [N] (`_offsets`). Work over all rows goes in chunks of consecutive
nodes of about `CHUNK_BYTES` (`_chunks`), reusing its work arrays (`_Workspace`), which bounds
the temporaries however large the federation. `fedmtl.data` re-exports these names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

CHUNK_BYTES = 64 << 20
"""Rows are cast, checked and split about this many bytes at a time (bounds temporaries)."""
ALIGNMENT = 64
"""Byte alignment of a split's arrays: on a CPU, JAX then reads them in place, without a copy
(`fedmtl.devices.layout`)."""


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts at a multiple of `ALIGNMENT`
    bytes."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def is_aligned(a: np.ndarray) -> bool:
    """Whether `a` is C-contiguous and starts at a multiple of `ALIGNMENT` bytes."""
    return a.flags.c_contiguous and a.ctypes.data % ALIGNMENT == 0


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


def _offsets(counts: np.ndarray) -> np.ndarray:
    """[N + 1] int64: 0 and the running sums of counts [N]."""
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _chunks(weights: np.ndarray, budget: int | None = None) -> list[tuple[int, int]]:
    """Ranges (lo, hi) of consecutive nodes, in order, of about `budget` (default
    `CHUNK_BYTES`) in all by `weights` [N] (a chunk ends with the node that crosses a multiple
    of `budget`)."""
    if len(weights) == 0:
        return []
    window = _offsets(weights)[:-1] // (budget or CHUNK_BYTES)
    bounds = [0, *(np.flatnonzero(np.diff(window)) + 1).tolist(), len(weights)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class _Workspace:
    """Work arrays reused from chunk to chunk: a fresh large array costs its page faults
    again each time (seconds per GB on a loaded 2-core machine)."""

    def __init__(self):
        self.arrays = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array of this shape and dtype, the same memory as last time when
        it fits."""
        size = int(np.prod(shape))
        a = self.arrays.get(name)
        if a is None or a.size < size or a.dtype != dtype:
            a = self.arrays[name] = np.empty(size, dtype)
        return a[:size].reshape(shape)


def _stack(xs: list[np.ndarray], y) -> Split:
    """One Split of per-node features xs [n_k, *F] (stored float32) and labels y [T] of all
    nodes or per-node regression targets (stored float32)."""
    counts = np.fromiter(map(len, xs), np.int64, len(xs))
    x = np.concatenate(xs, dtype=np.float32)
    return Split(x, np.concatenate(y, dtype=np.float32) if isinstance(y, list) else y, counts)


def _take_nodes(split: Split, nodes: np.ndarray) -> Split:
    """The rows of the chosen nodes [K], in that order, gathered at once."""
    counts = split.counts[nodes]
    out_starts = np.cumsum(counts) - counts
    rows = np.repeat(split.offsets[nodes] - out_starts, counts) + np.arange(counts.sum())
    return Split(split.x[rows], split.y[rows], counts)
