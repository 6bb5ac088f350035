"""Recipes: algorithms the engine builds inside its compiled program, so that the initial
weights follow the run's seed and chosen hyperparameters (learning rates, proximal weights)
are traced inputs: runs that differ in them share one compilation and can be swept as one
vectorized program (`Engine.sweep`, `fedmtl.tuning.sweep_grid`)."""

from __future__ import annotations

import inspect
import numbers
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
            raise AlgorithmError(f"{self.name}: {', '.join(unknown)} is not among its traced "
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
      tune: the keywords of `factory` to trace; each a real number (given in `kwargs`, else
        the factory's default) that the factory uses in arithmetic only (a learning rate, a
        proximal weight), not to decide the model's shapes or the program's structure.
      kwargs: the factory's keywords.

    Raises:
      AlgorithmError: a tuned keyword that is not a float (an integer such as a step count
        decides the program's structure; an optax optimizer is not one number), or what the
        factory raises for its arguments (the recipe is built once here, with seed 0).
    """
    name = getattr(factory, "__name__", "recipe")
    defaults = {p.name: p.default for p in inspect.signature(factory).parameters.values()
                if p.default is not p.empty}
    hyper = {}
    for key in tune:
        value = kwargs.pop(key) if key in kwargs else defaults.get(key)
        if isinstance(value, (bool, numbers.Integral)) or not isinstance(value, numbers.Real):
            raise AlgorithmError(f"{name}: tune={key!r} needs a float value ({key}=0.05, or "
                                 f"the factory's default), got {value!r}; only continuous "
                                 f"numbers can be traced")
        hyper[key] = float(value)
    build = lambda key, **h: factory(module(key), **kwargs, **h)
    return Recipe(build(jax.random.key(0), **hyper).name, build, hyper)
