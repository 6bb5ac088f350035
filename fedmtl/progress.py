"""How a running comparison shows its progress: rich bars (the default), nothing (`--quiet`,
for batch jobs) or one JSON object per line (`--json-lines`, for machines).

Every display takes the same three calls from `fedmtl.experiment.compare`'s hooks:
`start(name)` before an algorithm compiles, `update(name, round, metrics)` after each fused
chunk (metrics as `Engine.run`'s callback gives them) and `done(name, failed, seconds)`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from fedmtl.report import format_metric

SHORT = {"personalized": "pers", "global": "glob", "local": "local"}


def latest_metrics(metrics: dict, metric: str) -> dict[str, float]:
    """From a progress update: the training loss and, when the chunk measured learning
    curves, each kind's node-mean `metric` ({"train_loss": .., "personalized": .., ...})."""
    out = {"train_loss": metrics["train_loss"]} if "train_loss" in metrics else {}
    for kind in SHORT:
        key = f"eval/{kind}/{metric}"
        if key in metrics:
            out[kind] = metrics[key]
    return out


class RateColumn(ProgressColumn):
    """Rounds per second of one algorithm's bar."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.2f} rounds/s", style="progress.data.speed")


class Bars:
    """One rich bar per algorithm: round of rounds, rate, training loss and the latest
    curve point, elapsed time and ETA. Each bar's clock starts when its algorithm starts."""

    def __init__(self, console: Console, names: list[str], rounds: int, metric: str):
        self.metric = metric
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self.tasks = {n: self.progress.add_task(n, total=rounds, metrics="waiting", start=False)
                      for n in names}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def start(self, name: str) -> None:
        self.progress.start_task(self.tasks[name])
        self.progress.update(self.tasks[name], metrics="compiling…")

    def update(self, name: str, round_done: int, metrics: dict) -> None:
        shown = latest_metrics(metrics, self.metric)
        parts = [f"train loss {shown.pop('train_loss'):.4f}"] if "train_loss" in shown else []
        parts += [f"{SHORT[k]} {format_metric(v, self.metric)}" for k, v in shown.items()]
        self.progress.update(self.tasks[name], completed=round_done, metrics=" · ".join(parts))

    def done(self, name: str, failed: bool, seconds: float) -> None:
        self.progress.update(self.tasks[name], metrics="[red]failed[/]" if failed else "done")
        self.progress.stop_task(self.tasks[name])


class Quiet:
    """Shows nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def start(self, name: str) -> None:
        pass

    def update(self, name: str, round_done: int, metrics: dict) -> None:
        pass

    def done(self, name: str, failed: bool, seconds: float) -> None:
        pass


class JsonLines(Quiet):
    """One JSON object per event on `stream` (default stdout), flushed at once:
    {"event": "start" | "round" | "done", "algorithm", ...}; "round" events carry round,
    rounds, elapsed_s, eta_s, train_loss and the latest curve point by kind."""

    def __init__(self, rounds: int, metric: str, stream: TextIO | None = None):
        self.rounds, self.metric, self.stream = rounds, metric, stream
        self.began: dict[str, float] = {}
        self.first: dict[str, tuple[float, int]] = {}  # the first update: after compiling

    def _emit(self, event: dict) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps(event) + "\n")
        stream.flush()

    def start(self, name: str) -> None:
        self.began[name] = time.perf_counter()
        self._emit({"event": "start", "algorithm": name, "rounds": self.rounds})

    def update(self, name: str, round_done: int, metrics: dict) -> None:
        now = time.perf_counter()
        then, first = self.first.setdefault(name, (now, round_done))
        # the pace since the first update (compilation left out); unknown until a second
        eta = (None if round_done == first else
               round((now - then) / (round_done - first) * (self.rounds - round_done), 3))
        shown = latest_metrics(metrics, self.metric)
        event = {"event": "round", "algorithm": name, "round": round_done,
                 "rounds": self.rounds, "elapsed_s": round(now - self.began[name], 3),
                 "eta_s": eta, "train_loss": shown.pop("train_loss", None)}
        if shown:
            event[self.metric] = shown
        self._emit(event)

    def done(self, name: str, failed: bool, seconds: float) -> None:
        self._emit({"event": "done", "algorithm": name,
                    "status": "failed" if failed else "complete", "seconds": round(seconds, 3)})
