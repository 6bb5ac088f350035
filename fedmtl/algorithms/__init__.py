"""Federated algorithms: factories returning an `Algorithm` of pure per-node functions.

One module per family, the shared pieces (optimizers, splits, trainers, the delta server,
proximal terms) in `base`. `ALGORITHMS` maps each name to its factory and `SUMMARIES` to one
line on what it does; the CLI, `fedmtl compare --algorithms all` and the test harness run over
them. Adding an algorithm is one module and one line in `_REGISTRY`.
"""

from fedmtl.algorithms.base import (
    Algorithm,
    AlgorithmError,
    PerNode,
    ServerState,
    for_node,
)
from fedmtl.algorithms.clustered import ifca
from fedmtl.algorithms.global_ import fedadagrad, fedadam, fedavg, fedavgm, fedprox, fedyogi
from fedmtl.algorithms.local import local
from fedmtl.algorithms.meta import perfedavg, perfedavg_hf, pfedme
from fedmtl.algorithms.mixture import apfl, fedala
from fedmtl.algorithms.mtl import ditto, graph_mtl, mocha
from fedmtl.algorithms.recipes import Recipe, recipe
from fedmtl.algorithms.scaffold import scaffold
from fedmtl.algorithms.split import fedbabu, fedbn, fedper, fedrep, lg_fedavg

_REGISTRY = [  # (name, factory, what it does in one line)
    ("local", local, "each node trains its own model; nothing is exchanged"),
    ("fedavg", fedavg, "one global model, the example-weighted average of local updates"),
    ("fedprox", fedprox, "FedAvg whose local steps are pulled toward the global model"),
    ("scaffold", scaffold, "FedAvg with control variates correcting each node's drift"),
    ("fedavgm", fedavgm, "FedAvg with server momentum"),
    ("fedadagrad", fedadagrad, "FedAvg with an Adagrad server optimizer"),
    ("fedadam", fedadam, "FedAvg with an Adam server optimizer"),
    ("fedyogi", fedyogi, "FedAvg with a Yogi server optimizer"),
    ("fedper", fedper, "federated body, a personal head per node"),
    ("fedrep", fedrep, "federated body, personal head trained first with the body frozen"),
    ("lg_fedavg", lg_fedavg, "personal body (local representation), federated head"),
    ("fedbabu", fedbabu, "federated body under a frozen random head, all fine-tuned at test"),
    ("fedbn", fedbn, "FedAvg with personal normalization layers"),
    ("mocha", mocha, "personal models coupled by a learned task-relationship matrix Ω"),
    ("ditto", ditto, "a personal model per node pulled toward the global FedAvg model"),
    ("pfedme", pfedme, "personal models solved around each node's copy of the global model "
     "(Moreau envelopes)"),
    ("perfedavg", perfedavg, "a global model meta-learned (first-order MAML) to personalize "
     "in one local step"),
    ("perfedavg_hf", perfedavg_hf, "Per-FedAvg with the Hessian-vector term of MAML's "
     "meta-gradient"),
    ("apfl", apfl, "a personal model mixed with the global one by a learned per-node α"),
    ("fedala", fedala, "the global model mixed into each local one by learned element-wise "
     "weights"),
    ("ifca", ifca, "k cluster models; each node trains the one with the lowest loss on its "
     "data"),
]

ALGORITHMS = {name: factory for name, factory, _ in _REGISTRY}
"""{name: factory} of every registered algorithm, in registry order: what `fedmtl compare
--algorithms all`, `--param` and the test harness run over."""
SUMMARIES = {name: summary for name, _, summary in _REGISTRY}
"""{name: what the algorithm does, in one line}, as `fedmtl compare --help` lists them."""

__all__ = [
    "ALGORITHMS", "SUMMARIES", "Algorithm", "AlgorithmError", "PerNode", "Recipe",
    "ServerState", "recipe",
    "for_node", "graph_mtl", "apfl", "ditto", "fedadagrad", "fedadam", "fedala", "fedavg",
    "fedavgm", "fedbabu", "fedbn", "fedper", "fedprox", "fedrep", "fedyogi", "ifca",
    "lg_fedavg", "local", "mocha", "perfedavg", "perfedavg_hf", "pfedme", "scaffold",
]
