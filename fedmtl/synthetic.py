"""Synthetic(α, β) of FedProx (Li et al., "Federated Optimization in Heterogeneous Networks",
MLSys 2020), following the reference generator `data/synthetic_*/generate_niid.py`, and linear
tasks in planted groups.

Both generate in bounded memory: node after node in chunks of about `CHUNK_BYTES` of float64
draws, each chunk's rows written as float32 straight into the preallocated train and test
arrays. The output is bit-identical to a per-node loop (`tests/test_synthetic_scale.py` keeps
one): NumPy's Generator draws are sequential, so one draw of m1 + m2 standard normals equals a
draw of m1 and then one of m2, and `normal(loc, 1, m)` is `loc + standard_normal(m)`.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fedmtl.data import (
    FederatedData,
    FederatedDataError,
    _chunks,
    _offsets,
    _Splitter,
    _test_counts,
    _who,
    _Workspace,
)

CHUNK_BYTES = 16 << 20
"""Float64 draws generated at a time (a node with more draws makes a chunk of its own)."""


def node_sizes(num_nodes: int, rng: np.random.Generator, max_size: int | None = None):
    """Examples per node as in the reference generator: int(lognormal(4, 2)) + 50, optionally
    capped at `max_size`. Returns [N] int64."""
    sizes = rng.lognormal(4, 2, num_nodes).astype(np.int64) + 50
    return sizes if max_size is None else np.minimum(sizes, max_size)


def synthetic(
    alpha: float = 1.0,
    beta: float = 1.0,
    *,
    num_nodes: int = 30,
    iid: bool = False,
    dim: int = 60,
    num_classes: int = 10,
    max_size: int | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> FederatedData:
    """Synthetic(α, β): non-IID multinomial logistic regression tasks.

    α and β are standard deviations, as in the reference generator (`np.random.normal(0, alpha)`):
    per node u_k ~ N(0, α²) is the mean of both W_k and b_k, B_k ~ N(0, β²),
    v_k ~ N(B_k, I), x ~ N(v_k, diag(j^-1.2)), W_k [D, C], b_k [C] ~ N(u_k, 1),
    y = argmax(x W_k + b_k). α sets how much the local models differ, β how much the local
    feature distributions differ. `iid=True` is the reference's IID variant: one W, b ~ N(0, 1)
    for every node and x ~ N(0, diag(j^-1.2)).

    Args:
      num_nodes: N (FedProx uses 30).
      max_size: optional cap on the examples per node (the reference has none).

    Returns:
      FederatedData with D = `dim` features and C = `num_classes` classes.

    Example:
      >>> data = synthetic(1.0, 1.0, num_nodes=30, seed=0)
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta are standard deviations, need >= 0; got {alpha}, {beta}")
    rng = np.random.default_rng(seed)
    sizes = node_sizes(num_nodes, rng, max_size)
    scale = np.sqrt(np.arange(1, dim + 1) ** -1.2)  # std of x_j: cov = diag(j^-1.2)
    if iid:
        w_global = rng.normal(0, 1, (dim, num_classes))
        b_global = rng.normal(0, 1, num_classes)
    u = rng.normal(0, alpha, num_nodes)
    big_b = rng.normal(0, beta, num_nodes)
    names, n_test = _plan(sizes, test_fraction, num_classes)
    out = _Splitter(sizes, n_test, seed, (dim,), np.empty(0, np.int32))
    # Node k's draws, in the order of the reference loop: v_k [D], W_k [D, C], b_k [C] (none
    # when iid), then x [n_k, D]; one chunk of nodes is one standard_normal draw.
    params, work = (0 if iid else dim + dim * num_classes + num_classes), _Workspace()
    for lo, hi in _chunks(8 * (params + sizes * dim), CHUNK_BYTES):
        n = sizes[lo:hi]
        starts = _offsets(params + n * dim)[:-1]
        z = rng.standard_normal(out=work.get("z", (params * len(n) + n.sum() * dim,), float))
        if iid:
            mean = np.zeros((len(n), dim))
            w = np.broadcast_to(w_global, (len(n), dim, num_classes))
            b = np.broadcast_to(b_global, (len(n), num_classes))
        else:  # normal(loc, 1, m) == loc + standard_normal(m), bit for bit
            at = starts[:, None] + np.arange(params)
            mean = big_b[lo:hi, None] + z[at[:, :dim]]
            w = u[lo:hi, None] + z[at[:, dim:params - num_classes]]
            w = w.reshape(len(n), dim, num_classes)
            b = u[lo:hi, None] + z[at[:, params - num_classes:]]
        x, y, begin = _rows(z, starts + params, n, mean, w, b, work, scale)
        out.put(lo, hi, x, y, begin)
    return FederatedData(out.train, out.test, "classification", int(num_classes), names)


def _plan(sizes: np.ndarray, test_fraction: float, num_classes: int):
    """The checks `FederatedData.from_nodes` makes of generated nodes (named "node{k}"), in
    its order. Returns (names, [N] test rows per node)."""
    names = tuple(f"node{k}" for k in range(len(sizes)))
    who = lambda k: _who(k, names)
    if len(sizes) == 0:
        raise FederatedDataError("no nodes given: need at least one node")
    empty = np.flatnonzero(sizes < 1)
    if empty.size:
        raise FederatedDataError(f"{who(int(empty[0]))} has no examples")
    if not 0.0 <= test_fraction < 1.0:
        raise FederatedDataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 2 <= num_classes <= np.iinfo(np.int32).max:
        raise FederatedDataError(f"classification needs 2 to 2**31 - 1 classes, got "
                                 f"{num_classes}")
    return names, _test_counts(sizes, test_fraction, who)


def _rows(z, x_at, n, mean, w, b, work, scale=None):
    """Features and argmax labels of K nodes from their draws.

    Node j's features are mean[j] + scale * (its draws z[x_at[j]:][:n_j · D], row after
    row) (+ the draws without `scale`), in float64, and its labels argmax(x W_j + b_j). Each
    node's product is one BLAS matmul of exactly the per-node shape [n_j, D] @ [D, C]: nodes of
    equal size go as one stacked `np.matmul`, which calls BLAS per node. One matmul over the
    rows of several nodes would not do: OpenBLAS rounds a row differently depending on the
    number of rows (blocking, odd remainders), which can flip an argmax near a tie.

    Args:
      z: [Z] float64 draws; x_at: [K] where each node's feature draws begin; n: [K] rows.
      mean: [K, D]; w: [K, D, C]; b: [K, C] float64; work: a `_Workspace`; scale: [D] or None.

    Returns:
      x [R, D] float32 and y [R] int32, R = Σ n, with nodes in order of size (stable), and
      begin [K]: the row where each node's rows begin. x lives in `work`.
    """
    dim, num_classes = w.shape[1:]
    order = np.argsort(n, kind="stable")
    n_sorted = n[order]
    begin = np.empty_like(n)
    begin[order] = _offsets(n_sorted)[:-1]
    first = np.repeat(begin[order], n_sorted)
    rows = np.repeat(x_at[order], n_sorted) + (np.arange(len(first)) - first) * dim
    window = sliding_window_view(z, dim)
    x32 = work.get("x32", (len(rows), dim), np.float32)
    logits = work.get("logits", (len(rows), num_classes), float)
    cuts = [0, *(np.flatnonzero(np.diff(n_sorted)) + 1).tolist(), len(n)]
    for g0, g1 in zip(cuts[:-1], cuts[1:], strict=True):  # one stacked matmul per node size
        nodes, size = order[g0:g1], int(n_sorted[g0])
        at = slice(int(begin[nodes[0]]), int(begin[nodes[0]]) + size * len(nodes))
        xg = window[rows[at]].reshape(len(nodes), size, dim)
        if scale is not None:
            xg *= scale
        xg += mean[nodes][:, None, :]  # == mean + scale * draws: addition commutes exactly
        lg = np.matmul(xg, w[nodes], out=logits[at].reshape(len(nodes), size, num_classes))
        lg += b[nodes][:, None, :]
        x32[at] = xg.reshape(len(nodes) * size, dim)
    return x32, logits.argmax(axis=1).astype(np.int32), begin


def planted_groups(
    num_nodes: int = 100,
    num_groups: int = 4,
    *,
    dim: int = 20,
    num_classes: int = 2,
    median_size: int = 30,
    min_size: int = 10,
    max_size: int = 200,
    task_noise: float = 0.1,
    feature_shift: float = 0.0,
    label_noise: float = 0.0,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> tuple[FederatedData, np.ndarray]:
    """Linear classification tasks in planted groups: share within a group, not across.

    Group g has a model W_g [D, C], b_g [C] ~ N(0, 1); node k of group g uses
    W_g + task_noise · N(0, 1) (and likewise b), x ~ N(μ_k, I) with μ_k ~ N(0, feature_shift²)
    per node, y = argmax(x W_k + b_k), then with probability `label_noise` a uniform class.
    Nodes are dealt to groups evenly at random (sizes differ by at most 1); examples per node
    are lognormal around `median_size` (σ = 1) clipped to [min_size, max_size].

    At the defaults a node has about 22 training examples for 21·C parameters, so a linear
    model trained locally overfits, while one global model must fit G unrelated rules; a
    model shared within each group sees about N/G times the data of a node and wins (with
    logistic regression, mean per-node test accuracy ≈ 0.74 local, 0.63 global, 0.97 per group
    at seeds 0 and 1; `tests/test_relationship.py` checks the order).

    Args:
      num_nodes: N.
      num_groups: G ≤ N.
      task_noise: std of a node's deviation from its group's model (whose entries have std 1).
      feature_shift: std of each node's feature mean (0: x ~ N(0, I) everywhere).
      label_noise: probability in [0, 1] that a label is replaced by a uniform class.

    Returns:
      (FederatedData with D = `dim` features and C = `num_classes` classes, groups [N] int64:
      node k's group).

    Example:
      >>> data, groups = planted_groups(100, 4, seed=0)
    """
    if not 1 <= num_groups <= num_nodes:
        raise ValueError(f"need 1 <= num_groups <= num_nodes, got {num_groups} and {num_nodes}")
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size} and {max_size}")
    if min(task_noise, feature_shift) < 0 or not 0 <= label_noise <= 1:
        raise ValueError(f"task_noise and feature_shift are stds (>= 0) and label_noise a "
                         f"probability, got {task_noise}, {feature_shift}, {label_noise}")
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.arange(num_nodes) % num_groups)
    sizes = np.clip(rng.lognormal(np.log(median_size), 1.0, num_nodes).astype(np.int64),
                    min_size, max_size)
    w_group = rng.standard_normal((num_groups, dim, num_classes))
    b_group = rng.standard_normal((num_groups, num_classes))
    names, n_test = _plan(sizes, test_fraction, num_classes)
    out = _Splitter(sizes, n_test, seed, (dim,), np.empty(0, np.int32))
    # Node k's draws: normals for W_k [D, C], b_k [C], μ_k [D], x [n_k, D], then uniforms [n_k]
    # and labels [n_k] for the label noise.
    params, work = dim * num_classes + num_classes + dim, _Workspace()
    for lo, hi in _chunks(8 * (params + sizes * dim), CHUNK_BYTES):
        n = sizes[lo:hi]
        starts, rows = _offsets(params + n * dim), _offsets(n)
        z, uniform = work.get("z", (starts[-1],), float), np.empty(rows[-1])
        noise = np.empty(rows[-1], np.int64)
        # The draws alone loop over nodes: uniforms and bounded integers follow each node's
        # normals in the stream, and normals (ziggurat) and bounded integers (Lemire) use a
        # data-dependent number of raw bits, so no node's draws can be cut from a joint draw.
        for z0, z1, r0, r1 in zip(starts[:-1].tolist(), starts[1:].tolist(),
                                  rows[:-1].tolist(), rows[1:].tolist(), strict=True):
            rng.standard_normal(out=z[z0:z1])
            rng.random(out=uniform[r0:r1])
            noise[r0:r1] = rng.integers(0, num_classes, r1 - r0)
        at = starts[:-1, None] + np.arange(params)
        g = groups[lo:hi]
        wc = dim * num_classes
        w = w_group[g] + task_noise * z[at[:, :wc]].reshape(len(n), dim, num_classes)
        b = b_group[g] + task_noise * z[at[:, wc:wc + num_classes]]
        mean = feature_shift * z[at[:, wc + num_classes:]]
        x, y, begin = _rows(z, starts[:-1] + params, n, mean, w, b, work)
        node_rows = np.repeat(begin - rows[:-1], n) + np.arange(rows[-1])  # node order -> x
        y[node_rows] = np.where(uniform < label_noise, noise, y[node_rows])
        out.put(lo, hi, x, y, begin)
    data = FederatedData(out.train, out.test, "classification", int(num_classes), names)
    return data, groups.astype(np.int64)
