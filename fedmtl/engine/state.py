"""What the engine carries between rounds (`EngineState`), where nodes live (`Layout`), the
random streams' purposes, and the error a diverged run raises."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

_INIT, _ROUNDS, _FINETUNE, _SYSTEMS, _ATTACK, _AGGREGATE, _PRIVACY = 0, 1, 2, 3, 4, 5, 6
EVAL_BATCH = 64  # test rows per evaluation step


class DivergenceError(FloatingPointError):
    """Training or evaluation produced NaN or infinite values; the message names the algorithm,
    the round or the node. `state` and `history` hold the run up to the point it stopped."""

    def __init__(self, message: str, *, state=None, history=None):
        super().__init__(message)
        self.state, self.history = state, history


def _concat(history: list[dict]) -> dict[str, np.ndarray]:
    """Chunks of per-round metrics [..., n] -> one array [..., rounds] per metric."""
    return ({k: np.concatenate([h[k] for h in history], axis=-1) for k in history[0]}
            if history else {})


class EngineState(NamedTuple):
    """server: the algorithm's server state; nodes: node states, leaves [N, ...]; round: [];
    clock: [] simulated time elapsed (`fedmtl.systems`); clip_norm: [] the DP clip norm of the
    next round (adaptive clipping moves it; `fedmtl.privacy`); seed: [2] uint32, the run's
    key data (`Engine.init(seed)`): every random stream of training derives from it, so it is
    an input of the compiled rounds, not a constant (a new seed does not recompile); hyper:
    {name: []} float32, the traced hyperparameters of an engine built from a `Recipe` ({}
    otherwise), inputs of the compiled program too."""

    server: Any
    nodes: Any
    round: jax.Array
    clock: jax.Array
    clip_norm: jax.Array
    seed: jax.Array
    hyper: Any = {}


def stream(seed: jax.Array, purpose: int) -> jax.Array:
    """The run's stream for `purpose` (_INIT, _ROUNDS, ...) from its key data `seed` [2]."""
    return jax.random.fold_in(jax.random.wrap_key_data(seed), purpose)


class Layout(NamedTuple):
    """Where nodes live (`fedmtl.devices.Placement`), as arrays the jitted functions take:
    placed [D·B] the data-order node at each place (N at an empty place); position [N] each
    node's place."""

    placed: jax.Array
    position: jax.Array
