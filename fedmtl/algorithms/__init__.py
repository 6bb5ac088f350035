"""Federated algorithms: factories returning an `Algorithm` of pure per-node functions.

One module per family; `ALGORITHMS` maps each name to its factory (the CLI, the test harness
and `fedmtl compare --algorithms` run over it). Adding an algorithm is one module and one
line here.
"""

from fedmtl.algorithms.base import (
    Algorithm,
    AlgorithmError,
    PerNode,
    ServerState,
    for_node,
)
from fedmtl.algorithms.global_ import fedavg
from fedmtl.algorithms.local import local
from fedmtl.algorithms.mtl import ditto, graph_mtl, mocha
from fedmtl.algorithms.split import fedper

ALGORITHMS = {
    "local": local, "fedavg": fedavg, "fedper": fedper, "mocha": mocha, "ditto": ditto,
}

__all__ = [
    "ALGORITHMS", "Algorithm", "AlgorithmError", "PerNode", "ServerState", "ditto", "fedavg",
    "fedper", "for_node", "graph_mtl", "local", "mocha",
]
