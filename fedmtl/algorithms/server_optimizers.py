"""Adaptive server optimizers of Reddi et al., "Adaptive Federated Optimization" (ICLR 2021),
as optax transformations for `delta_server`.

The paper's Algorithm 2 (FedAdagrad, FedAdam, FedYogi), with Δ_t the round's averaged node
delta and, per coordinate,

    m_t = β₁ m_{t−1} + (1 − β₁) Δ_t                             (m_{−1} = 0)
    v_t = v_{t−1} + Δ_t²                                         FedAdagrad
    v_t = β₂ v_{t−1} + (1 − β₂) Δ_t²                             FedAdam
    v_t = v_{t−1} − (1 − β₂) Δ_t² sign(v_{t−1} − Δ_t²)           FedYogi
    x_{t+1} = x_t + η m_t / (√v_t + τ)                           (v_{−1} = τ²)

without bias correction. `delta_server` hands its optimizer the pseudo-gradient g = −Δ_t, so
these transformations take Δ_t = −g and return the update +η m_t / (√v_t + τ) that
`optax.apply_updates` adds to x_t.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AdaptiveState(NamedTuple):
    """m: the first moment m_t; v: the second moment v_t (pytrees shaped like the params)."""

    m: Any
    v: Any


def _check(name: str, argument: str, value, low: float, high: float | None = None) -> float:
    """`value` as a float in [low, high) (low < value when high is None), else ValueError; a
    traced value as it is (`base.traced`)."""
    if isinstance(value, jax.core.Tracer):
        return value
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low <= value < high if high is not None else value > low)
    if not ok:
        bound = f"in [{low}, {high})" if high is not None else f"> {low}"
        raise ValueError(f"{name}: {argument} must be a finite number {bound}, got {value!r}")
    return float(value)


def _adaptive(name: str, learning_rate, b1, tau,
              second_moment: Callable[[jax.Array, jax.Array], jax.Array]
              ) -> optax.GradientTransformation:
    """Algorithm 2 of Reddi et al. with `second_moment(v_{t−1}, Δ_t²) -> v_t`."""
    lr = _check(name, "learning_rate", learning_rate, 0.0)
    b1 = _check(name, "b1", b1, 0.0, 1.0)
    tau = _check(name, "tau", tau, 0.0)

    def init(params):
        return AdaptiveState(m=jax.tree.map(jnp.zeros_like, params),
                             v=jax.tree.map(lambda p: jnp.full_like(p, tau * tau), params))

    def update(pseudo_grad, state: AdaptiveState, params=None):
        del params
        delta = jax.tree.map(jnp.negative, pseudo_grad)  # Δ_t = −g
        m = jax.tree.map(lambda m, d: b1 * m + (1.0 - b1) * d, state.m, delta)
        v = jax.tree.map(lambda v, d: second_moment(v, d * d), state.v, delta)
        updates = jax.tree.map(lambda m, v: lr * m / (jnp.sqrt(v) + tau), m, v)
        return updates, AdaptiveState(m, v)

    return optax.GradientTransformation(init, update)


def fedadagrad(learning_rate: float, tau: float, b1: float = 0.0) -> optax.GradientTransformation:
    """FedAdagrad's server step: v_t = v_{t−1} + Δ_t² (b1 = β₁; 0 is plain Adagrad).

    Raises:
      ValueError: learning_rate or tau not finite and > 0, or b1 outside [0, 1).
    """
    return _adaptive("fedadagrad", learning_rate, b1, tau, lambda v, d2: v + d2)


def fedadam(learning_rate: float, b1: float, b2: float, tau: float
            ) -> optax.GradientTransformation:
    """FedAdam's server step: v_t = β₂ v_{t−1} + (1 − β₂) Δ_t² (b1 = β₁, b2 = β₂).

    Raises:
      ValueError: learning_rate or tau not finite and > 0, or b1, b2 outside [0, 1).
    """
    b2 = _check("fedadam", "b2", b2, 0.0, 1.0)
    return _adaptive("fedadam", learning_rate, b1, tau, lambda v, d2: b2 * v + (1.0 - b2) * d2)


def fedyogi(learning_rate: float, b1: float, b2: float, tau: float
            ) -> optax.GradientTransformation:
    """FedYogi's server step: v_t = v_{t−1} − (1 − β₂) Δ_t² sign(v_{t−1} − Δ_t²).

    Raises:
      ValueError: learning_rate or tau not finite and > 0, or b1, b2 outside [0, 1).
    """
    b2 = _check("fedyogi", "b2", b2, 0.0, 1.0)
    return _adaptive("fedyogi", learning_rate, b1, tau,
                     lambda v, d2: v - (1.0 - b2) * d2 * jnp.sign(v - d2))
