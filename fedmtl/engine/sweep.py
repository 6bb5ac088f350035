"""Seed sweeps as one program: S runs of the same federation with a leading seed axis on the
engine state, the rounds and the evaluation `jax.vmap`-ed over it, compiled once."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedmtl.engine.state import EngineState


class Sweep:
    """Seed sweeps of `Engine` (a mixin: it reuses the engine's rounds and evaluation)."""

    def _sweep_jits(self) -> None:
        """The vmapped twins of `_run`, `_init` and `_evaluate` (built with them; jit compiles
        only when a sweep first calls them)."""
        inputs = (None,) * len(self._inputs())
        self._run_many = jax.jit(jax.vmap(self._rounds, in_axes=(0, *inputs, None, None)),
                                 static_argnums=(len(inputs) + 2,), donate_argnums=(0,))
        self._init_many = jax.jit(jax.vmap(self._init_state))
        self._evaluate_many = jax.jit(jax.vmap(self._evaluate_all,
                                               in_axes=(0, None, None, None)))

    def sweep(self, seeds: Sequence[int], rounds: int | None = None, *, callback=None
              ) -> tuple[EngineState, dict[str, np.ndarray]]:
        """Runs one federation per seed as one vectorized program.

        Each seed's run equals `run(init(seed), rounds)` bit for bit (tested): the seed drives
        initialization, cohorts, shuffling, systems draws, noise and fine-tuning; the attacker
        set, availability phases and secure-aggregation keys follow `Federation.seed`.

        Args:
          seeds: S distinct run seeds.
          rounds: rounds per run (default: the federation's).
          callback: as in `run`, with each metric's mean over the seeds.

        Returns:
          (states, history): state leaves [S, ...]; history {metric: [S, rounds]}.

        Raises:
          DivergenceError: a seed's training loss became non-finite (the message names the
            seed and round).
        """
        seeds = [int(s) for s in seeds]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"sweep needs distinct seeds, got {seeds}")
        states = self._init_many(jnp.stack([self._seed(s) for s in seeds]))
        return self._drive(states, rounds, self._run_many, callback, seeds)

    def evaluate_sweep(self, states: EngineState) -> list[dict[str, dict[str, np.ndarray]]]:
        """`evaluate` of every run of a `sweep` (one vectorized evaluation): per seed,
        {kind: {metric: [N]}}."""
        evaluated = jax.device_get(self._evaluate_many(states, self.train, self.test,
                                                        self.layout))
        count = int(np.shape(states.round)[0])
        return [self._node_metrics(jax.tree.map(lambda a, s=s: a[s], evaluated))
                for s in range(count)]
