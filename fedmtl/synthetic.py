"""Synthetic(α, β) of FedProx (Li et al., "Federated Optimization in Heterogeneous Networks",
MLSys 2020), following the reference generator `data/synthetic_*/generate_niid.py`."""

from __future__ import annotations

import numpy as np

from fedmtl.data import FederatedData


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
    xs, ys = [], []
    for k in range(num_nodes):
        if iid:
            mean_x, w, b = np.zeros(dim), w_global, b_global
        else:
            mean_x = rng.normal(big_b[k], 1, dim)
            w = rng.normal(u[k], 1, (dim, num_classes))
            b = rng.normal(u[k], 1, num_classes)
        x = mean_x + scale * rng.standard_normal((sizes[k], dim))
        xs.append(x.astype(np.float32))
        ys.append(np.argmax(x @ w + b, axis=1).astype(np.int32))
    return FederatedData.from_nodes(
        xs, ys, test_fraction=test_fraction, seed=seed, task="classification",
        num_classes=num_classes, names=[f"node{k}" for k in range(num_nodes)],
    )
