"""fedmtl: personalized federated multi-task learning on JAX.

Data flows one way: FederatedData → start / step / finish (vmapped lanes) → aggregation →
server_update → evaluation (global vs local vs personalized, per node) → report.
"""

from fedmtl.devices import expose_cpu_cores

expose_cpu_cores()  # one JAX CPU device per core unless the user chose (fedmtl.devices)

from fedmtl import accounting, attacks, privacy, robust, systems
from fedmtl.aggregation import weighted_mean
from fedmtl.algorithms import (
    ALGORITHMS,
    Algorithm,
    AlgorithmError,
    PerNode,
    Recipe,
    apfl,
    ditto,
    fedadagrad,
    fedadam,
    fedala,
    fedavg,
    fedavgm,
    fedbabu,
    fedbn,
    fedper,
    fedprox,
    fedrep,
    fedyogi,
    graph_mtl,
    ifca,
    lg_fedavg,
    local,
    mocha,
    perfedavg,
    perfedavg_hf,
    pfedme,
    recipe,
    scaffold,
)
from fedmtl.data import FederatedData, FederatedDataError
from fedmtl.engine import DivergenceError, Engine, EngineState, Federation
from fedmtl.experiment import (
    AlgorithmResult,
    Checkpointing,
    Comparison,
    Failure,
    SeedComparison,
    compare,
    compare_seeds,
    run_algorithm,
)
from fedmtl.models import MLP, Conv1D, LogisticRegression, Model, ModelDataMismatch
from fedmtl.output import ResultsFolder, write_results
from fedmtl.synthetic import planted_groups, synthetic
from fedmtl.systems import Systems, SystemsError
from fedmtl.tuning import GridSweep, sweep_grid

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS", "MLP", "Algorithm", "AlgorithmError", "AlgorithmResult", "Checkpointing",
    "Comparison", "SeedComparison", "compare_seeds",
    "Conv1D", "DivergenceError", "Engine", "EngineState", "Failure", "FederatedData",
    "FederatedDataError", "Federation", "LogisticRegression", "Model", "ModelDataMismatch",
    "GridSweep", "PerNode", "Recipe", "ResultsFolder", "Systems", "SystemsError", "compare",
    "graph_mtl",
    "planted_groups", "run_algorithm", "accounting", "attacks", "privacy", "robust", "systems",
    "synthetic", "weighted_mean", "write_results", "apfl", "ditto", "fedadagrad", "fedadam",
    "fedala", "fedavg", "fedavgm", "fedbabu", "fedbn", "fedper", "fedprox", "fedrep", "fedyogi",
    "ifca", "lg_fedavg", "local", "mocha", "perfedavg", "perfedavg_hf", "pfedme", "recipe",
    "scaffold", "sweep_grid",
]
