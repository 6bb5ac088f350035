"""Turbofan, report protocol: test RMSE of naive, centralized, FedAvg and local RUL models.

80 factories of 4 FD001/FD003 engines (3 train + 1 test engine each), uncapped RUL, the report's
16-48-1 MLP (865 weights). Prints our numbers beside the report's and writes
turbofan_report.json and turbofan_report.md into --out.

    python benchmarks/reproductions/turbofan_report.py            # 5 seeds, ~3 min on 2 cores
    python benchmarks/reproductions/turbofan_report.py --quick    # 1 seed, 30 rounds
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from _common import mean_se, write_outputs  # this folder: scripts run as files
from rich.console import Console
from rich.table import Table

from fedmtl.data import FederatedData
from fedmtl.datasets import turbofan
from fedmtl.tycoon import Predictor, Training, fit

# The report's test RMSE (cycles); local has no number, only a verdict.
PUBLISHED = {
    "naive": "94.2",
    "centralized": "62.4",
    "fedavg": "64.3",
    "local": "almost always significantly worse",
}
ROWS = {
    "naive": "naive (training median life)",
    "naive_clipped": "naive, RUL clipped at 0",
    "centralized": "centralized MLP",
    "fedavg": "FedAvg, 80 factories",
    "local": "local (own factory)",
    "fedper": "FedPer (extra)",
    "finetuned": "FedAvg + fine-tuning (extra)",
}


def naive_predictions(study) -> list[np.ndarray]:
    """Predicted RUL of each factory's test rows: median life - cycle, the median over the
    factories' train engines (a test-file engine's life = its cycles + its official RUL).
    Engines older than the median get a negative RUL: "should have failed already"."""
    train = [study.engines[n] for names in study.factory_engines
             for n in names[: len(names) - study.test_engines_per_factory]]
    median = float(np.median([len(e.rul) + e.rul[-1] for e in train]))
    out = []
    for names in study.factory_engines:
        tests = names[len(names) - study.test_engines_per_factory:]
        cycles = np.concatenate([np.arange(1, len(study.engines[n].rul) + 1) for n in tests])
        out.append(median - cycles)
    return out


def centralized(data: FederatedData) -> FederatedData:
    """All factories' train rows in one node, all their test rows as its test split."""
    return FederatedData.from_splits([data.train.x], [data.train.y], [data.test.x],
                                     [data.test.y], task="regression", names=["all"])


def errors(predictions: list[np.ndarray], data: FederatedData) -> tuple[float, np.ndarray]:
    """Pooled RMSE over all test rows, and the RMSE of each factory's test engine [N]."""
    ys = [data.test.node(k)[1] for k in range(data.num_nodes)]
    per = np.array([np.sqrt(np.mean((p - y) ** 2)) for p, y in zip(predictions, ys, strict=True)])
    pooled = np.sqrt(np.mean(np.concatenate([(p - y) ** 2 for p, y in
                                             zip(predictions, ys, strict=True)])))
    return float(pooled), per


def model_predictions(predictor: Predictor, data: FederatedData) -> list[np.ndarray]:
    return [predictor.predict(k, data.test.node(k)[0]) for k in range(data.num_nodes)]


def run_seed(seed: int, training: Training, log) -> dict:
    study = turbofan(seed=seed)
    data = study.data
    preds = fit(data, training, ("local", "fedavg", "fedper", "finetuned"), log=log)
    central = fit(centralized(data), training, ("local",), log=log)["local"]
    central_pred = central.predict(0, data.test.x)
    bounds = np.cumsum(data.test.counts)[:-1]
    per_method = {
        "naive": naive_predictions(study),
        "naive_clipped": [np.maximum(p, 0.0) for p in naive_predictions(study)],
        "centralized": np.split(central_pred, bounds),
        **{k: model_predictions(p, data) for k, p in preds.items()},
    }
    out = {}
    for name, p in per_method.items():
        pooled, per = errors(p, data)
        out[name] = {"rmse": pooled, "factory_rmse": per.tolist()}
    local, fed = np.array(out["local"]["factory_rmse"]), np.array(out["fedavg"]["factory_rmse"])
    out["local"]["worse_than_fedavg_share"] = float(np.mean(local > fed))
    out["local"]["worse_by_10pct_share"] = float(np.mean(local > 1.1 * fed))
    out["local"]["median_ratio_to_fedavg"] = float(np.median(local / fed))
    return out



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="engine-split and training seeds (default 0-4)")
    parser.add_argument("--rounds", type=int, default=100,
                        help="FedAvg/local rounds = centralized epochs (default 100)")
    parser.add_argument("--quick", action="store_true", help="seed 0 only, 30 rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    seeds, rounds = ([0], 30) if args.quick else (args.seeds, args.rounds)
    console = Console()
    start = time.perf_counter()
    runs = []
    for seed in seeds:
        console.print(f"[bold]seed {seed}[/]")
        runs.append(run_seed(seed, Training(rounds=rounds, seed=seed), console.print))

    table = Table(title=f"Turbofan, report protocol: test RMSE in cycles (mean ± s.e. over "
                  f"{len(seeds)} seed(s))")
    for col in ("model", "ours", "published"):
        table.add_column(col, justify="left" if col == "model" else "right")
    summary = {}
    for name, label in ROWS.items():
        m, se = mean_se([r[name]["rmse"] for r in runs])
        values = [r[name]["rmse"] for r in runs]
        summary[name] = {"rmse_mean": m, "rmse_se": se, "rmse_min": min(values),
                         "rmse_max": max(values), "published": PUBLISHED.get(name)}
        ours = f"{m:.1f} ± {se:.1f}"
        if name == "local":
            share = mean_se([r["local"]["worse_than_fedavg_share"] for r in runs])[0]
            share10 = mean_se([r["local"]["worse_by_10pct_share"] for r in runs])[0]
            summary[name].update(worse_than_fedavg_share=share, worse_by_10pct_share=share10)
            ours += f" (> FedAvg on {100 * share:.0f}% of factories)"
        table.add_row(label, ours, PUBLISHED.get(name, "—"))
    console.print(table)

    config = {"seeds": seeds, "training": dataclasses.asdict(Training(rounds=rounds))}
    payload = {"config": config, "summary": summary, "runs": runs,
               "seconds": time.perf_counter() - start}
    md = ["| model | ours: test RMSE (cycles) | published |", "|---|---|---|"]
    for name, label in ROWS.items():
        s = summary[name]
        extra = (f" (worse than FedAvg on {100 * s['worse_than_fedavg_share']:.0f}% of factories)"
                 if name == "local" else "")
        md.append(f"| {label} | {s['rmse_mean']:.1f} ± {s['rmse_se']:.1f}{extra} | "
                  f"{PUBLISHED.get(name, '—')} |")
    write_outputs(args.out, "turbofan_report", payload, md, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
