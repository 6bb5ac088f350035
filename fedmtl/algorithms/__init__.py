"""Federated algorithms: factories returning an `Algorithm` of pure per-node functions.

One module per family, the shared pieces (optimizers, splits, trainers, the delta server,
proximal terms) in `base`. `ALGORITHMS` maps each name to its factory and `SUMMARIES` to one
line on what it does; the CLI, `fedmtl compare --algorithms all` and the test harness run over
them. Adding an algorithm is one module and one line in `_REGISTRY`.
"""

import functools

from fedmtl.algorithms.base import (
    Algorithm,
    AlgorithmError,
    PerNode,
    ServerState,
    for_node,
)
from fedmtl.algorithms.global_ import fedavg
from fedmtl.algorithms.local import local
from fedmtl.algorithms.meta import perfedavg, pfedme
from fedmtl.algorithms.mtl import ditto, graph_mtl, mocha
from fedmtl.algorithms.split import fedper

_REGISTRY = [  # (name, factory, what it does in one line)
    ("local", local, "each node trains its own model; nothing is exchanged"),
    ("fedavg", fedavg, "one global model, the example-weighted average of local updates"),
    ("fedper", fedper, "federated body, a personal head per node"),
    ("mocha", mocha, "personal models coupled by a learned task-relationship matrix Ω"),
    ("ditto", ditto, "a personal model per node pulled toward the global FedAvg model"),
    ("pfedme", pfedme, "personal models solved around each node's copy of the global model "
     "(Moreau envelopes)"),
    ("perfedavg", perfedavg, "a global model meta-learned (first-order MAML) to personalize "
     "in one local step"),
    ("perfedavg_hf", functools.partial(perfedavg, variant="hf"),
     "Per-FedAvg with the Hessian-vector term of MAML's meta-gradient"),
]

ALGORITHMS = {name: factory for name, factory, _ in _REGISTRY}
SUMMARIES = {name: summary for name, _, summary in _REGISTRY}

__all__ = [
    "ALGORITHMS", "SUMMARIES", "Algorithm", "AlgorithmError", "PerNode", "ServerState",
    "ditto", "fedavg", "fedper", "for_node", "graph_mtl", "local", "mocha", "perfedavg",
    "pfedme",
]
