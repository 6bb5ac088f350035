"""Recipes: algorithms the engine builds inside its compiled program, so that the initial
weights follow the run's seed and chosen hyperparameters (learning rates, proximal weights)
are traced inputs: runs that differ in them share one compilation and can be swept as one
vectorized program (`Engine.sweep`, `experiment.sweep_grid`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
from flax import nnx

from fedmtl.algorithms.base import Algorithm, AlgorithmError


class Recipe(NamedTuple):
    """How to build an algorithm from a run's model key and hyperparameters.

    The engine calls `build(key, **hyper)` inside its jitted functions: `key` is the run's
    model key, `jax.random.key(seed)` for `Engine.init(seed)` (so `nnx.Rngs(key)` draws the
    weights a module built with `nnx.Rngs(seed)` has), and each hyperparameter a traced
    float32 scalar []. Use `recipe` to make one from an algorithm factory.

    Attributes:
      name: the algorithm's name (what its `Algorithm.name` is), for reports.
      build: (key, **hyper) -> Algorithm.
      hyper: {name: default value} of the traced hyperparameters (each a keyword of build).
    """

    name: str
    build: Callable[..., Algorithm]
    hyper: Mapping[str, float] = {}

    def concrete(self, seed: int, hyper: Mapping[str, float] | None = None) -> Algorithm:
        """The algorithm of run seed `seed` with `hyper` over the defaults, built with plain
        Python values (every value is checked as the factory checks it).

        Raises:
          AlgorithmError: a name that is not among the recipe's hyperparameters, or what the
            factory raises for a bad value.
        """
        values = {**self.hyper, **self.values(hyper)}
        return self.build(jax.random.key(seed), **values)

    def values(self, hyper: Mapping[str, Any] | None) -> dict[str, Any]:
        """`hyper` checked against the recipe's names (AlgorithmError naming the unknown)."""
        hyper = dict(hyper or {})
        unknown = sorted(set(hyper) - set(self.hyper))
        if unknown:
            known = ", ".join(self.hyper) or "none"
            raise AlgorithmError(f"recipe: {', '.join(unknown)} is not among its traced "
                                 f"hyperparameters ({known}); name it in recipe(..., tune=)")
        return hyper


def recipe(factory: Callable[..., Algorithm], module: Callable[[jax.Array], nnx.Module], *,
           tune: tuple[str, ...] | list[str] = (), **kwargs) -> Recipe:
    """A `Recipe` of `factory(module(key), **kwargs)` whose keywords named in `tune` are traced.

    Example:
      >>> r = recipe(fedavg, lambda key: MLP(60, [64], 10, rngs=nnx.Rngs(key)),
      ...            local_optimizer=0.05, tune=["local_optimizer"])
      >>> engine = Engine(r, data, Federation(rounds=20))   # weights follow the seed
      >>> states, history = engine.sweep([0, 0, 1, 1], hyper={"local_optimizer":
      ...                                 [0.05, 0.1, 0.05, 0.1]})   # one compilation

    Args:
      factory: an algorithm factory, e.g. `fedavg`.
      module: key -> a fresh `nnx.Module` whose weights are drawn from `nnx.Rngs(key)`.
      tune: the keywords of `factory` to trace; each must be in `kwargs` (its default) and
        be a number the factory uses in arithmetic only (a learning rate, a proximal weight),
        not to decide the model's shapes or the program's structure.
      kwargs: the factory's keywords.

    Raises:
      AlgorithmError: a tuned keyword without a numeric value in `kwargs`, or what the
        factory raises for its arguments (the recipe is built once here, with seed 0).
    """
    for key in tune:
        value = kwargs.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AlgorithmError(f"{getattr(factory, '__name__', 'recipe')}: tune={key!r} "
                                 f"needs a number in {key}=..., got {value!r}")
    hyper = {key: float(kwargs.pop(key)) for key in tune}
    build = lambda key, **h: factory(module(key), **kwargs, **h)
    return Recipe(build(jax.random.key(0), **hyper).name, build, hyper)
