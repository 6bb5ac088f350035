"""Helpers shared by the systems benchmarks: the machine, mean ± standard error, pooled
metrics and atomic outputs (the reproduction scripts' conventions)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from fedmtl.output import atomic_write

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    """Platform, CPU model and count, JAX backend and device, load average, git commit."""
    import jax

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE,
            check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fedmtl"],
                               capture_output=True, text=True, cwd=HERE, check=False).stdout
        info["library_uncommitted_changes"] = bool(dirty.strip())
    return info


def machine_line(m: dict) -> str:
    """One line naming the machine, for the markdown files."""
    dirty = " + uncommitted library changes" if m.get("library_uncommitted_changes") else ""
    return (f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}; JAX "
            f"{m['jax_version']} on {m['backend']} ({m['device_kind']}); git "
            f"{m.get('git_commit', '?')}{dirty}; load average at start "
            f"{m['load_average_at_start'][0]}.")


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def pooled(per_node: np.ndarray, counts: np.ndarray) -> float:
    """Σ_k value_k n_k / Σ_k n_k over nodes with examples: a per-node mean metric pooled over
    every example (FedProx's Σ correct / Σ examples for accuracy)."""
    has = counts > 0
    return float(np.sum(per_node[has] * counts[has]) / np.sum(counts[has]))


def compile_cache() -> None:
    """Programs of the same shapes compile once across runs (as the reproductions do)."""
    import jax

    cache = Path(tempfile.gettempdir()) / "fedmtl-systems-benchmarks-jax-cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def write_outputs(out: Path, stem: str, payload: dict, md: list[str], console: Console) -> None:
    """Writes OUT/stem.json and OUT/stem.md atomically and says so."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    atomic_write(json_path, json.dumps(payload, indent=1) + "\n")
    atomic_write(md_path, "\n".join(md) + "\n")
    console.print(f"wrote {json_path}, {md_path} ({payload['seconds']:.0f} s)")
