"""Learning curves of a comparison (`Federation.eval_every`) as a results folder keeps them:
`curves.jsonl`, one summary per algorithm and evaluated round, and optionally TensorBoard
scalars (the `tensorboard` extra, tensorboardX).

A line of curves.jsonl:
  {"algorithm": "fedavg", "round": 5, "train_loss": 0.41,
   "test": {"global": {"accuracy": {"mean": 0.71, "se": 0.02, "worst10": 0.5, "nodes": 29},
                       ...}, "personalized": {...}}}
mean: over the nodes where the metric is defined (tested); se: its standard error
(std / sqrt(nodes), ddof 1; null for one node); worst10: the mean of the worst 10% of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedmtl.engine import curves
from fedmtl.report import worst10

CURVES = "curves.jsonl"


def summary(values: np.ndarray, metric: str) -> dict:
    """Node mean, standard error, worst-10% mean and count of one metric's values [N]
    (undefined values, NaN, left out)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": None, "se": None, "worst10": None, "nodes": 0}
    se = float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
    return {"mean": float(v.mean()), "se": se, "worst10": worst10(v, metric),
            "nodes": int(v.size)}


def records(comparison) -> list[dict]:
    """curves.jsonl's records: per algorithm (in run order) and evaluated round."""
    out = []
    for result in comparison.results:
        found = curves(result.history)
        if not found:
            continue
        loss = np.asarray(result.history.get("train_loss", []))
        for column, round_ in enumerate(np.asarray(found["round"]).tolist()):
            test = {kind: {metric: summary(values[:, column], metric)
                           for metric, values in metrics.items()}
                    for kind, metrics in found.items() if kind != "round"}
            out.append({"algorithm": result.name, "round": int(round_),
                        "train_loss": float(loss[round_ - 1]) if round_ <= loss.size else None,
                        "test": test})
    return out


def jsonl(comparison) -> str:
    """curves.jsonl's text ("" without learning curves)."""
    return "".join(json.dumps(r) + "\n" for r in records(comparison))


def tensorboard_available() -> bool:
    """Whether tensorboardX can be imported (the `tensorboard` extra)."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def write_tensorboard(result, folder: Path) -> Path:
    """One algorithm's history as TensorBoard scalars in `folder / result.name`: every
    per-round metric as "train/<metric>" and every curve point as "test/<kind>/<metric>"
    (node mean). Rewritten whole (an earlier run's events are removed). Returns the path."""
    from tensorboardX import SummaryWriter

    path = Path(folder) / result.name
    if path.exists():
        for old in path.glob("events.out.tfevents.*"):
            old.unlink()
    with SummaryWriter(str(path)) as writer:
        for key, values in result.history.items():
            values = np.asarray(values)
            if key.startswith("eval") or values.ndim != 1:
                continue
            for round_, value in enumerate(values.tolist(), start=1):
                writer.add_scalar(f"train/{key}", value, round_)
        found = curves(result.history)
        for kind, metrics in found.items():
            if kind == "round":
                continue
            for metric, values in metrics.items():
                for column, round_ in enumerate(np.asarray(found["round"]).tolist()):
                    mean = summary(values[:, column], metric)["mean"]
                    if mean is not None:
                        writer.add_scalar(f"test/{kind}/{metric}", mean, int(round_))
    return path
