"""Shared pytest fixtures."""

from pathlib import Path

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
