"""Helpers shared by the reproduction scripts: mean ± standard error and atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.console import Console

from fedmtl.output import atomic_write


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def write_outputs(out: Path, stem: str, payload: dict, md: list[str], console: Console) -> None:
    """Writes OUT/stem.json and OUT/stem.md atomically and says so."""
    json_path, md_path = Path(out) / f"{stem}.json", Path(out) / f"{stem}.md"
    atomic_write(json_path, json.dumps(payload, indent=2) + "\n")
    atomic_write(md_path, "\n".join(md) + "\n")
    console.print(f"wrote {json_path}, {md_path} ({payload['seconds']:.0f} s)")
