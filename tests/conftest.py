"""Shared pytest fixtures."""

import os

# The suite is dominated by XLA compiling tiny programs: LLVM's optimisation level 0 compiles
# them ~20% faster and changes no test's outcome (every comparison is between programs
# compiled alike, or against NumPy within its stated tolerance). Set before JAX starts its
# backend; a user's own XLA_FLAGS keep theirs.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# One JAX CPU device per test process: pytest-xdist already runs one worker per core, so two
# devices per worker gain nothing (469 s against 482 s, measured before the one-device engine
# dropped its SPMD wrapping) and only add compilation. The sharded engine is tested explicitly:
# tests/test_devices.py starts processes with 2 and 4 devices, and CI (.ci/run) reruns the
# harness, engine and device tests with JAX_NUM_CPU_DEVICES=2. A value set outside wins.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")

import atexit  # noqa: E402
import shutil
import tempfile
import uuid
from pathlib import Path

import jax
import numpy as np
import pytest

from fedmtl.data import FederatedData
from fedmtl.engine import Federation
from fedmtl.experiment import AlgorithmResult, Comparison

# The shared data folder next to the repository root: <root>/../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data(monkeypatch) -> Path:
    """Points FEDMTL_DATA at ../shared/data; skips the test when that folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the non-shipped data files in {SHARED_DATA}")
    monkeypatch.setenv("FEDMTL_DATA", str(SHARED_DATA))
    return SHARED_DATA


N = 20


@pytest.fixture
def comparison() -> Comparison:
    """20 nodes with known test counts and hand-chosen per-node metrics (no training)."""
    rng = np.random.default_rng(0)
    test_counts = rng.integers(1, 12, N)
    xs = [rng.normal(size=(5, 2)).astype(np.float32) for _ in range(N)]
    ys = [np.arange(5, dtype=np.int32) % 3 for _ in range(N)]
    txs = [rng.normal(size=(c, 2)).astype(np.float32) for c in test_counts]
    tys = [np.arange(c, dtype=np.int32) % 3 for c in test_counts]
    data = FederatedData.from_splits(xs, ys, txs, tys, num_classes=3)
    grid = np.linspace(0.05, 1.0, N)
    local = {"accuracy": rng.permutation(grid), "loss": rng.uniform(0.1, 2.0, N)}
    glob = {"accuracy": rng.permutation(grid), "loss": rng.uniform(0.1, 2.0, N)}
    pers = {"accuracy": local["accuracy"].copy(), "loss": local["loss"].copy()}
    # personalized: better than local on nodes 0-6, tied on 7-9, worse on 10-19
    pers["accuracy"][:7] += 0.01
    pers["accuracy"][10:] -= 0.01
    pers["loss"][:7] -= 0.01
    pers["loss"][10:] += 0.01
    fedper = {"accuracy": rng.permutation(grid), "loss": rng.uniform(0.1, 2.0, N)}
    history = {"train_loss": np.array([1.0, 0.5]), "participants": np.array([N, N])}
    results = (
        AlgorithmResult("local", {"local": local}, history, 1.0, 1.0),
        AlgorithmResult("fedavg", {"global": glob, "personalized": pers}, history, 2.0, 0.5),
        AlgorithmResult("fedper", {"personalized": fedper}, history, 3.0, 0.5),
    )
    return Comparison(data, Federation(rounds=2), results)



# Strict numpy semantics for every test (STYLE.md item 9): implicit rank promotion
# (silent broadcasting of a [N] against a [N, 1]) raises instead of computing garbage.
jax.config.update("jax_numpy_rank_promotion", "raise")
# ... and implicit dtype promotion (float32 mixed with int32 counts) raises too.
jax.config.update("jax_numpy_dtype_promotion", "strict")

def _shared_cache(uid: str) -> Path:
    return Path(tempfile.gettempdir()) / f"fedmtl-jax-cache-{uid}"


# Engines built on equal shapes (the same tiny problem with other data, a second engine with the
# same seed) lower to the same program: a per-session compilation cache compiles it once. The
# workers of one parallel run (pytest-xdist, `-n 2` by default) share it; the controller, which
# runs no test, removes it at the end.
_CACHE_KEY = pytest.StashKey[Path]()
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # set in the workers of a parallel run
if _RUN is None:
    _JAX_CACHE = tempfile.mkdtemp(prefix="fedmtl-jax-cache-")
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
else:
    _JAX_CACHE = str(_shared_cache(_RUN))
    Path(_JAX_CACHE).mkdir(exist_ok=True)
jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
    """The controller of a parallel run names the run, so its workers share one cache dir."""
    if getattr(config, "workerinput", None) is None and getattr(config.option, "numprocesses",
                                                                None):
        config.option.testrunuid = config.option.testrunuid or uuid.uuid4().hex
        config.stash[_CACHE_KEY] = _shared_cache(config.option.testrunuid)


def pytest_unconfigure(config):
    """... and removes it when the run ends."""
    if _CACHE_KEY in config.stash:
        shutil.rmtree(config.stash[_CACHE_KEY], ignore_errors=True)
