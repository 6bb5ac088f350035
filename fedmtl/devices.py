"""Devices: which device holds which node, and the node data laid out over them.

The engine runs one SPMD program over a one-axis `jax.sharding.Mesh` (axis `AXIS`) of every
local device by default, and of every process's devices after `jax.distributed.initialize`.
Node d·B .. d·B + B − 1 of the *placement* lives on device d, with its data rows and its
state; the server state, the round's uploads and every result are replicated.

Placement deals nodes to devices so that each holds about the same training work: nodes,
heaviest first, go to devices in a snake order (0, 1, …, D−1, D−1, …, 0, 0, 1, …), which keeps
the device totals within one node of each other and gives each device B = ceil(N / D) places
(the last few padded with empty places: no data, never sampled, never reported). Users never
see the placement: engine state and results are in the data's node order.

Data stays ragged on each device: device d holds its nodes' rows one node after another,
padded to the longest device's row count (`Blocks`); nothing is replicated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "nodes"


class DevicesError(ValueError):
    """A bad device selection: the message says what was asked and what is there."""


def mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh: every device (`jax.devices()`, all processes) when None, the first
    `devices` of them for an int, or exactly the given devices."""
    every = jax.devices()
    if devices is None:
        chosen = every
    elif isinstance(devices, int):
        if not 1 <= devices <= len(every):
            raise DevicesError(f"devices={devices}: this run has {len(every)} device(s) "
                               f"({every[0].platform}); ask for 1..{len(every)}")
        chosen = every[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise DevicesError("devices: an empty list; give at least one device")
    return Mesh(np.array(chosen), (AXIS,))


def replicated(mesh_: Mesh) -> NamedSharding:
    return NamedSharding(mesh_, P())


def sharded(mesh_: Mesh) -> NamedSharding:
    return NamedSharding(mesh_, P(AXIS))


class Placement(NamedTuple):
    """Where each node lives.

    Attributes:
      devices: D.
      block: B, places per device.
      placed: [D·B] the data-order node at each place (`num_nodes` at an empty place).
      position: [N] the place of each data-order node.
    """

    devices: int
    block: int
    placed: np.ndarray
    position: np.ndarray

    def blocks(self, values: np.ndarray, fill=0) -> np.ndarray:
        """values [N, ...] in data order -> [D, B, ...] by place (`fill` at empty places)."""
        padded = np.concatenate([values, np.full((1,) + values.shape[1:], fill, values.dtype)])
        return padded[self.placed].reshape((self.devices, self.block) + values.shape[1:])


def place(work: np.ndarray, devices: int) -> Placement:
    """Deals N nodes with `work` [N] (e.g. training steps) to `devices` devices, heaviest
    first in snake order; vectorized. On one device the places are the data order. Returns
    the `Placement`."""
    work = np.asarray(work)
    n = len(work)
    block = max(1, math.ceil(n / devices))
    order = np.arange(n) if devices == 1 else np.argsort(-work, kind="stable")
    rank = np.arange(n)
    row, col = rank // devices, rank % devices
    device = np.where(row % 2 == 0, col, devices - 1 - col)
    # a device whose share runs out (n not a multiple of D) leaves its last places empty
    placed = np.full(devices * block, n, np.int64)
    placed[device * block + row] = order
    position = np.empty(n, np.int64)
    position[order] = device * block + row
    return Placement(devices, block, placed, position)


class Blocks(NamedTuple):
    """One split laid out by place: device d's rows are rows d·R .. d·R + R − 1 of the
    index arrays; row r's example is x[source[r]], y[source[r]].

    On CPU devices (`shares_host`) x and y are the caller's arrays themselves, read in place
    by every device (zero-copy: all CPU devices share the host's memory), and `source` holds
    data rows. On accelerators each device holds only its rows, x [D·R, *F] split like the
    index arrays, and `source` counts 0..R−1 on each device.

    Attributes:
      x: [T, *F] (CPU) or [D·R, *F]; y: likewise [T, ...] or [D·R, ...].
      offsets: [D·B] start of each place's rows within its device's R rows.
      counts: [D·B] rows of each place (0 at empty places).
      segment: [D·R] place of each row within its device, 0..B−1 (B for padding rows).
      local: [D·R] the row's position within its node.
      source: [D·R] the row of x holding each row's example (padding rows: any valid row).
    """

    x: jax.Array
    y: jax.Array
    offsets: jax.Array
    counts: jax.Array
    segment: jax.Array
    local: jax.Array
    source: jax.Array

    def take(self, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The examples (x, y) of device rows `rows` (any shape)."""
        where = self.source[rows]
        return self.x[where], self.y[where]


def shares_host(mesh_: Mesh) -> bool:
    """Whether every device of the mesh is a CPU device (their memory is the host's)."""
    return all(d.platform == "cpu" for d in mesh_.devices.flat)


def split_specs(mesh_: Mesh) -> Blocks:
    """The `PartitionSpec` of each field of a `Blocks` laid out on `mesh_` (for shard_map)."""
    data = P() if shares_host(mesh_) else P(AXIS)
    return Blocks(data, data, *(P(AXIS),) * 5)


def row_index(placement: Placement, counts: np.ndarray):
    """Where each row of a split goes, for `counts` [N] rows per data-order node stored node
    after node. Returns (rows [D, R] the data row at each device row, −1 for padding;
    offsets [D, B] each place's first row within its device; segment [D, R] each device row's
    place within its device, B for padding; local [D, R] its position within its node;
    where [T] each data row's index in the flattened [D·R] layout)."""
    counts = np.asarray(counts, np.int64)
    by_place = placement.blocks(counts)  # [D, B]
    width = max(1, int(by_place.sum(axis=1).max()))
    if placement.devices * width >= 2**31:  # the device arrays index rows with int32
        raise ValueError(f"{placement.devices} x {width} device rows exceed int32 indices")
    i32 = np.int32  # every index below fits (and the scratch at 100,000 nodes halves)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(i32)
    offsets = np.cumsum(by_place, axis=1) - by_place  # within the device
    flat_counts = by_place.reshape(-1)
    total = int(flat_counts.sum())
    place_of_row = np.repeat(np.arange(flat_counts.size, dtype=i32), flat_counts)
    node = placement.placed.astype(i32)[place_of_row]
    within = np.arange(total, dtype=i32) - np.repeat(
        (np.cumsum(flat_counts) - flat_counts).astype(i32), flat_counts)
    device = place_of_row // i32(placement.block)
    column = offsets.reshape(-1).astype(i32)[place_of_row] + within
    shape = (placement.devices, width)
    rows = np.full(shape, -1, i32)
    rows[device, column] = starts[node] + within
    segment = np.full(shape, placement.block, i32)
    segment[device, column] = place_of_row % i32(placement.block)
    local = np.zeros(shape, i32)
    local[device, column] = within
    where = np.empty(int(starts[-1]), i32)
    where[starts[node] + within] = device * i32(width) + column
    return rows, offsets, segment, local, where


def _in_place(a: np.ndarray) -> np.ndarray:
    """`a` as a CPU device can read in place: aligned and C-contiguous (else one copy), and
    never empty (one zero row: gathers need a row to clamp to)."""
    from fedmtl.data_ragged import aligned_empty, is_aligned

    if not len(a):
        a = np.zeros((1,) + a.shape[1:], a.dtype)
    if is_aligned(a):
        return a
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def layout(mesh_: Mesh, placement: Placement, x: np.ndarray, y: np.ndarray,
           counts: np.ndarray) -> tuple[Blocks, np.ndarray]:
    """Lays a split (x [T, *F], y [T, ...] node after node, `counts` [N]) out by place. On CPU
    devices the data stays where it is (read in place, `Blocks`); on accelerators each
    device's block is built on the host only when that device is filled (no full host copy).
    Returns (Blocks, where [T]: each data row's index in the [D·R] layout)."""
    rows, offsets, segment, local, where = row_index(placement, counts)
    width = rows.shape[1]
    share = sharded(mesh_)

    def rows_of(a: np.ndarray):
        def fill(index):
            d = (index[0].start or 0) // width
            picked = rows[d]
            block = a[np.maximum(picked, 0)] if len(a) else np.zeros(
                (width,) + a.shape[1:], a.dtype)
            return np.where((picked >= 0).reshape((-1,) + (1,) * (a.ndim - 1)), block,
                            np.zeros_like(block))

        shape = (placement.devices * width,) + a.shape[1:]
        return jax.make_array_from_callback(shape, share, fill)

    def small(a):
        a = np.asarray(a, np.int32).reshape(-1)
        return jax.make_array_from_callback(a.shape, share, lambda index: a[index])

    if shares_host(mesh_):
        whole = replicated(mesh_)
        data = [jax.make_array_from_callback(b.shape, whole, lambda index, b=b: b[index])
                for b in map(_in_place, (x, y))]
        source = np.maximum(rows, 0)
    else:
        data = [rows_of(x), rows_of(y)]
        source = np.broadcast_to(np.arange(width), rows.shape)
    blocks = Blocks(*data, small(offsets),
                    small(placement.blocks(np.asarray(counts, np.int64))), small(segment),
                    small(local), small(source))
    return blocks, where


def to_places(tree, placement_index: jax.Array):
    """Data-order leaves [N, ...] -> leaves [D·B, ...] by place (zeros at empty places)."""
    return jax.tree.map(lambda leaf: leaf.at[placement_index].get(mode="fill", fill_value=0),
                        tree)


def from_places(tree, position: jax.Array):
    """Leaves [D·B, ...] by place -> data order [N, ...]."""
    return jax.tree.map(lambda leaf: leaf[position], tree)


def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def expose_cpu_cores() -> int | None:
    """Makes JAX's CPU backend expose one device per core, so that a CPU machine runs one
    block of nodes per core at once. Called on `import fedmtl`, before JAX starts a backend.

    An explicit choice always wins and leaves JAX as it is: the `JAX_NUM_CPU_DEVICES`
    environment variable, `--xla_force_host_platform_device_count` in `XLA_FLAGS`, or
    `jax.config.update("jax_num_cpu_devices", n)` made before importing fedmtl. Nothing
    changes either once JAX has started a backend (it cannot). Returns the count set, or None.
    """
    if ("JAX_NUM_CPU_DEVICES" in os.environ
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or jax.config.jax_num_cpu_devices != -1):
        return None
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return None
    cores = cpu_cores()
    jax.config.update("jax_num_cpu_devices", cores)
    return cores
