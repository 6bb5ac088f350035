"""Seed sweeps as one program: S runs of the same federation with a leading seed axis on the
engine state, the rounds and the evaluation `jax.vmap`-ed over it, compiled once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedmtl import devices as devices_lib
from fedmtl.engine.state import EngineState


def run_labels(seeds: Sequence[int], hyper: Mapping[str, Sequence[float]] | None = None
               ) -> list[str]:
    """Each run of a sweep named for messages: "seed 3", or "seed 3, local_optimizer=0.1"."""
    return [f"seed {s}" + "".join(f", {k}={v[i]}" for k, v in (hyper or {}).items())
            for i, s in enumerate(seeds)]


class Sweep:
    """Seed sweeps of `Engine` (a mixin: it reuses the engine's rounds and evaluation)."""

    def _sweep_jits(self) -> None:
        """The vmapped twins of `_run`, `_init` and `_evaluate` (built with them; jit compiles
        only when a sweep first calls them)."""
        inputs = (None,) * len(self._inputs())
        self._run_many = jax.jit(jax.vmap(self._rounds, in_axes=(0, *inputs, None, None)),
                                 static_argnums=(len(inputs) + 2,), donate_argnums=(0,))
        # (seeds [S, 2], hyper [S]) -> states replicated over the mesh, as `_run_many` returns
        # them: a chunk after the first reuses the first one's compilation
        self._init_many = jax.jit(jax.vmap(self._init_state),
                                  out_shardings=devices_lib.replicated(self.mesh))
        self._evaluate_many = jax.jit(jax.vmap(self._evaluate_all,
                                               in_axes=(0, None, None, None)))

    def sweep(self, seeds: Sequence[int], rounds: int | None = None, *,
              hyper: Mapping[str, Sequence[float]] | None = None, callback=None
              ) -> tuple[EngineState, dict[str, np.ndarray]]:
        """Runs S federations as one vectorized program: run i has seed seeds[i] and, for an
        engine built from a `Recipe`, the hyperparameters {name: values[i]} of `hyper` (the
        recipe's defaults for names not given).

        Each run equals `run(init(seeds[i], {name: values[i]}), rounds)` bit for bit (tested):
        the seed drives initialization (a recipe's initial weights too), cohorts, shuffling,
        systems draws, noise and fine-tuning; the attacker set, availability phases and
        secure-aggregation keys follow `Federation.seed`.

        Args:
          seeds: S run seeds; with `hyper`, runs may share a seed (not a whole setting).
          rounds: rounds per run (default: the federation's).
          hyper: {name: S values}, a recipe's traced hyperparameters per run (e.g. a grid
            of learning rates × seeds laid out flat: `fedmtl.tuning.sweep_grid`).
          callback: as in `run`, with each metric's mean over the runs.

        Returns:
          (states, history): state leaves [S, ...]; history {metric: [S, rounds]}.

        Raises:
          ValueError: no runs, two identical runs, or hyperparameter lists whose length is not S.
          AlgorithmError: `hyper` names what the engine's recipe does not trace.
          DivergenceError: a run's training loss became non-finite (the message names its
            seed and round).
        """
        seeds = [int(s) for s in seeds]
        hyper = {k: list(values) for k, values in (hyper or {}).items()}
        wrong = {k: len(v) for k, v in hyper.items() if len(v) != len(seeds)}
        if wrong:
            raise ValueError(f"sweep needs one value per seed ({len(seeds)}); got {wrong}")
        per_run = [self._hyper({k: v[i] for k, v in hyper.items()}) for i in range(len(seeds))]
        hyper = {k: [float(v) for v in values] for k, values in hyper.items()}  # checked
        runs = list(zip(seeds, *hyper.values(), strict=True))
        if not seeds or len(set(runs)) != len(runs):
            raise ValueError(f"sweep needs distinct runs, got {runs if hyper else seeds}")
        states = self._init_many(jnp.stack([self._seed(s) for s in seeds]),
                                 jax.tree.map(lambda *v: jnp.stack(v), *per_run))
        return self._drive(states, rounds, self._run_many, callback, run_labels(seeds, hyper))

    def evaluate_sweep(self, states: EngineState) -> list[dict[str, dict[str, np.ndarray]]]:
        """`evaluate` of every run of a `sweep` (one vectorized evaluation): per seed,
        {kind: {metric: [N]}}."""
        evaluated = jax.device_get(self._evaluate_many(states, self.train, self.test,
                                                        self.layout))
        count = int(np.shape(states.round)[0])
        return [self._node_metrics(jax.tree.map(lambda a, s=s: a[s], evaluated))
                for s in range(count)]
