"""Driving the compiled rounds from the host: fused chunks, the one host sync per chunk,
divergence checks, learning curves, progress callbacks and checkpoint hooks."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from fedmtl.engine.state import DivergenceError, EngineState, _concat
from fedmtl.systems import SystemsError

CURVE = "eval/"  # history keys of learning curves: "eval/<kind>/<metric>" [N, E]
CURVE_ROUNDS = "eval_round"  # the rounds they were measured after [E]


def curves(history: dict[str, np.ndarray]) -> dict:
    """The learning curves of a history: {"round": [E], kind: {metric: [N, E]}} ({} when the
    run had no `eval_every`)."""
    if CURVE_ROUNDS not in history:
        return {}
    out: dict = {"round": np.asarray(history[CURVE_ROUNDS])}
    for key, values in history.items():
        if key.startswith(CURVE):
            kind, metric = key[len(CURVE):].split("/", 1)
            out.setdefault(kind, {})[metric] = np.asarray(values)
    return out


def _latest(metrics: dict) -> dict[str, float]:
    """A chunk's last value of each metric as a float (a mean over seeds and, for learning
    curves, over the nodes with a finite value); curves the chunk did not measure are left
    out."""
    out = {}
    for key, v in metrics.items():
        last = np.asarray(v[..., -1], float) if v.shape[-1] else np.zeros(0)
        last = last[np.isfinite(last)]
        if last.size:
            out[key] = float(last.mean())
    return out


class Driving:
    """`run` of `Engine` (a mixin: it calls the engine's jitted chunk of rounds)."""

    def run(self, state: EngineState, rounds: int | None = None, *, callback=None,
            checkpoint_every: int | None = None,
            on_checkpoint: Callable[[EngineState, dict], None] | None = None):
        """Runs `rounds` rounds (default: the federation's), `rounds_per_sync` per jitted scan.

        After each fused chunk (the only host sync) the chunk's training losses are checked:
        a non-finite one stops the run with `DivergenceError` naming the round, instead of
        training on for hours and failing at evaluation.

        With `Federation.eval_every` = k, every node's models of every kind are tested after
        every k-th round inside the scan, and the history holds the learning curves
        (`curves`): "eval_round" [E] and "eval/<kind>/<metric>" [N, E] (metrics as in
        `evaluate`, without AUC, which needs the host).

        Args:
          callback: called as callback(round_done, metrics) after each fused chunk, with the
            chunk's last round metrics as floats (learning curves: the mean over nodes of the
            chunk's latest evaluation, when it had one).
          checkpoint_every: K: chunks also end after every K-th round (the results do not
            depend on where chunks end), and `on_checkpoint` is called there and at the end.
          on_checkpoint: called as on_checkpoint(state, history so far) at those rounds,
            before the next chunk reuses the state's buffers (save it synchronously).

        Returns:
          (state, history): history maps each metric to a numpy array [rounds] (curves as
          above).

        Raises:
          DivergenceError: a round's training loss is NaN or infinite; the error carries the
            state and history up to the end of that chunk.
        """
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        if on_checkpoint is not None and checkpoint_every is None:
            raise ValueError("on_checkpoint needs checkpoint_every (the rounds to call it at)")
        return self._drive(state, rounds, self._run, callback,
                           checkpoint_every=checkpoint_every, on_checkpoint=on_checkpoint)

    def _drive(self, state: EngineState, rounds: int | None, chunk_fn, callback,
               runs: list[str] | None = None, *, checkpoint_every: int | None = None,
               on_checkpoint=None):
        """`run`'s loop over fused chunks of `chunk_fn`; with `runs` (each run's label, e.g.
        "seed 3"), state and metrics carry a leading run axis [S] (`sweep`)."""
        rounds = self.federation.rounds if rounds is None else rounds
        chunk = self.federation.rounds_per_sync
        first = int(np.ravel(state.round)[0])
        history, done = [], 0
        while done < rounds:
            n = min(chunk, rounds - done)
            if checkpoint_every:
                n = min(n, checkpoint_every - (first + done) % checkpoint_every)
            state, metrics = chunk_fn(state, *self._inputs(), np.int32(first + done), n)
            done += n
            metrics = self._host_metrics(jax.device_get(metrics), first + done - n, n)
            overflow = metrics.pop("overflow", np.zeros(0, bool)).reshape(-1, n).any(axis=0)
            loss = metrics["train_loss"]
            if self.mechanism is not None:  # ε after each round (RDP), from host numbers
                upto = max(first + done, self.federation.rounds)
                epsilon = self.epsilons(upto)[first + done - n:first + done]
                metrics["epsilon"] = np.broadcast_to(epsilon, loss.shape).copy()
            history.append(metrics)
            if overflow.any():
                round_ = first + done - n + int(np.flatnonzero(overflow)[0]) + 1
                raise SystemsError(
                    f"round {round_} sampled more nodes than the Poisson cohort's {self.cohort} "
                    "slots; raise Systems.capacity (CLI: --capacity)")
            bad = np.argwhere(~np.isfinite(loss.reshape(-1, n)))
            if bad.size:
                run, r = bad[0]
                one = state if runs is None else jax.tree.map(lambda a, i=run: a[i], state)
                where = "" if runs is None else f" ({runs[run]})"
                raise DivergenceError(
                    self._divergence(one, first + done - n + int(r) + 1) + where,
                    state=state, history=_concat(history))
            if on_checkpoint is not None and (  # saved before anything else can interrupt
                    done == rounds or (first + done) % checkpoint_every == 0):
                on_checkpoint(state, _concat(history))
            if callback is not None:
                callback(first + done, _latest(metrics))
        return state, _concat(history)

    def _host_metrics(self, metrics: dict, start: int, n: int) -> dict:
        """A chunk's metrics on the host, its learning curves ("curves" {kind: {metric:
        [..., n, N]}} and "evaluated" [..., n]) reduced to the evaluated rounds: "eval_round"
        [..., E] and "eval/<kind>/<metric>" [..., N, E] in raw units, real nodes only."""
        found = metrics.pop("curves", None)
        due = metrics.pop("evaluated", None)
        if found is None:
            return metrics
        keep = np.flatnonzero(np.reshape(due, (-1, n))[0])
        lead = np.shape(due)[:-1]
        metrics[CURVE_ROUNDS] = np.broadcast_to(start + keep + 1, (*lead, keep.size)).copy()
        units = self._units()
        for kind, values in found.items():
            for metric, v in values.items():
                v = np.take(np.asarray(v)[..., : self.num_real], keep, axis=-2)
                metrics[f"{CURVE}{kind}/{metric}"] = np.swapaxes(v, -1, -2) * units.get(metric, 1)
        return metrics

    def _divergence(self, state: EngineState, round_: int) -> str:
        """What to tell a user whose training loss became non-finite in round `round_`."""
        leaves = jax.device_get(jax.tree.leaves(state.nodes))
        finite = [np.isfinite(leaf[: self.num_real].reshape(self.num_real, -1)).all(axis=1)
                  for leaf in leaves]
        broken = np.flatnonzero(~np.all(finite, axis=0)) if finite else np.array([], int)
        where = (f"; {broken.size} node(s) hold non-finite personal state, first node "
                 f"{self.data.names[broken[0]]!r}" if broken.size else "")
        return (f"{self.algorithm.name}: training diverged: non-finite training loss in round "
                f"{round_}{where}; lower the learning rate or scale the data")
