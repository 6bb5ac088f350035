"""Shared pytest fixtures."""

import atexit
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

# The shared data folder next to the repository root: <root>/../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data(monkeypatch) -> Path:
    """Points FEDMTL_DATA at ../shared/data; skips the test when that folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the non-shipped data files in {SHARED_DATA}")
    monkeypatch.setenv("FEDMTL_DATA", str(SHARED_DATA))
    return SHARED_DATA


# Strict numpy semantics for every test (STYLE.md item 9): implicit rank promotion
# (silent broadcasting of a [N] against a [N, 1]) raises instead of computing garbage.
jax.config.update("jax_numpy_rank_promotion", "raise")
# ... and implicit dtype promotion (float32 mixed with int32 counts) raises too.
jax.config.update("jax_numpy_dtype_promotion", "strict")

# Engines built on equal shapes (the same tiny problem with other data, a second engine with the
# same seed) lower to the same program: a per-session compilation cache compiles it once.
_JAX_CACHE = tempfile.mkdtemp(prefix="fedmtl-jax-cache-")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
