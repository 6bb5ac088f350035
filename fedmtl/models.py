"""Models: Flax NNX modules split once into shared and personal parameter pytrees.

Users write any `nnx.Module`; `Model.of(module, personal=...)` splits it by a path filter into
`shared` parameters (averaged by the server) and `personal` ones (never leave the node). FedAvg,
FedPer and Local are the same module under different filters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fedmtl.data import FederatedData

Params = Any  # an nnx.State pytree of arrays


def _filter(personal) -> Any:
    """`personal` as an NNX filter over parameters: a path substring, a filter, all or nothing."""
    if personal is None or personal is False:
        return nnx.Nothing
    if personal is True or personal is ...:
        return nnx.Param
    if isinstance(personal, str):
        return nnx.All(nnx.Param, nnx.PathContains(personal))
    return nnx.All(nnx.Param, personal)


@dataclasses.dataclass(frozen=True)
class Model:
    """A module split into static structure and initial parameter pytrees.

    Attributes:
      graphdef: the module's static structure.
      shared: initial parameters the server aggregates.
      personal: initial parameters that stay on each node.
      rest: non-parameter state (kept constant; training updates parameters only).
      name: the module's class name, for messages.
    """

    graphdef: Any
    shared: Params
    personal: Params
    rest: Params
    name: str = "model"

    @classmethod
    def of(cls, module: nnx.Module, personal: Any = None) -> Model:
        """Splits `module` (split once, at the edge; pytrees from here on).

        Args:
          module: any `nnx.Module` mapping a batch [B, *F] to outputs [B, C] (or [B, 1] / [B]
            for regression).
          personal: which parameters stay on the node: a path substring such as "head", any NNX
            filter, True (all: local training) or None (none: FedAvg).

        Raises:
          UnsupportedModel: the module keeps running statistics (`nnx.BatchStat`, e.g.
            `nnx.BatchNorm`), which training would never update.
        """
        _check_no_batch_stats(module)
        graphdef, personal_params, shared, rest = nnx.split(
            module, _filter(personal), nnx.Param, ...
        )
        return cls(graphdef, shared, personal_params, rest, type(module).__name__)

    def apply(self, shared: Params, personal: Params, x: jax.Array) -> jax.Array:
        """Outputs [B, ...] of the model with the given parameters on a batch x [B, *F]."""
        return nnx.merge(self.graphdef, shared, personal, self.rest)(x)

    def num_params(self) -> int:
        leaves = jax.tree.leaves((self.shared, self.personal))
        return int(sum(leaf.size for leaf in leaves))


class UnsupportedModel(ValueError):
    """A module fedmtl cannot train faithfully; the message names the module, the layers and
    what to use instead."""


def _check_no_batch_stats(module: nnx.Module) -> None:
    """Raises `UnsupportedModel` if `module` keeps running statistics (`nnx.BatchStat`).

    A `Model` trains parameters only and keeps the rest constant, so BatchNorm's running
    statistics would silently stay at their initial values, and in training mode the padding
    rows of a batch would enter its batch statistics.
    """
    stats = nnx.state(module, nnx.BatchStat)
    paths = ["/".join(map(str, path)) for path, _ in nnx.to_flat_state(stats)]
    if paths:
        shown = ", ".join(paths[:4]) + (", ..." if len(paths) > 4 else "")
        raise UnsupportedModel(
            f"{type(module).__name__} keeps running statistics (BatchStat variables {shown}, "
            f"e.g. of nnx.BatchNorm), which fedmtl does not support: training updates "
            f"parameters only, so they would never train, and padding rows would enter the batch "
            f"statistics; use nnx.LayerNorm or nnx.GroupNorm instead (e.g. MLP(..., "
            f"norm=\"layer\"))"
        )


class ModelDataMismatch(ValueError):
    """A model that does not fit the data's features or labels; the message names both."""


_CHECK_BATCH = 2  # > 1, so outputs that dropped or reduced the batch axis are caught


def check_model(model: Model, data: FederatedData) -> None:
    """Checks `model` against the data's shapes without computing anything (`jax.eval_shape`).

    Classification needs float outputs [B, C] with C = `data.num_classes`; regression needs
    float outputs with as many values per example as the targets ([B] or [B, 1] for scalar
    targets).

    Raises:
      ModelDataMismatch: the model rejects the data's feature shape, or its outputs do not fit
        the task, naming the model, the shapes and what was expected.
    """
    b, features = _CHECK_BATCH, data.feature_shape
    x = jax.ShapeDtypeStruct((b, *features), data.train.x.dtype)
    try:
        out = jax.eval_shape(lambda x: model.apply(model.shared, model.personal, x), x)
    except Exception as e:  # whatever the model raises: name it in one line
        message = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelDataMismatch(
            f"{model.name} does not accept features of shape {features} (the data's "
            f"feature_shape): {message}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ModelDataMismatch(
            f"{model.name} returns a {type(out).__name__}; expected one array of outputs [B, ...]"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ModelDataMismatch(
            f"{model.name} outputs dtype {out.dtype}; expected floating-point outputs"
        )
    if not out.shape or out.shape[0] != b:
        raise ModelDataMismatch(
            f"{model.name} outputs shape {out.shape} for a batch of {b} examples; expected the "
            f"batch as the leading axis [{b}, ...]"
        )
    if data.task == "classification":
        if len(out.shape) != 2 or out.shape[1] != data.num_classes:
            per_example = math.prod(out.shape[1:])
            raise ModelDataMismatch(
                f"{model.name} outputs {per_example} values per example (shape {out.shape} "
                f"for {b} examples) but the data has {data.num_classes} classes; expected "
                f"[B, {data.num_classes}] logits"
            )
        return
    targets = data.train.y.shape[1:]
    if math.prod(out.shape[1:]) != math.prod(targets):
        expected = f"[B, {', '.join(map(str, targets))}]" if targets else "[B] or [B, 1]"
        raise ModelDataMismatch(
            f"{model.name} outputs {math.prod(out.shape[1:])} values per example (shape "
            f"{out.shape} for {b} examples) but the regression targets have "
            f"{math.prod(targets)}; expected {expected}"
        )


class LogisticRegression(nnx.Module):
    """Multinomial logistic regression: one linear layer, named `head`.

    Args:
      use_bias: False: a bias-free linear model x -> x W (the head holds only `kernel`).
    """

    def __init__(self, in_features: int, num_outputs: int, *, use_bias: bool = True,
                 rngs: nnx.Rngs):
        self.head = nnx.Linear(in_features, num_outputs, use_bias=use_bias, rngs=rngs)

    def __call__(self, x):
        return self.head(x.reshape(x.shape[0], -1))


NORMS = ("layer",)  # the normalization layers the built-in models can add


def _norms(norm: str | None, sizes: Sequence[int], rngs: nnx.Rngs) -> nnx.List | None:
    """One normalization layer per hidden layer of the given feature sizes, or None."""
    if norm is None:
        return None
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected None or one of: {', '.join(NORMS)}")
    return nnx.List([nnx.LayerNorm(size, rngs=rngs) for size in sizes])


class MLP(nnx.Module):
    """A ReLU MLP whose hidden layers form the `body` and whose output layer is the `head`.

    Args:
      norm: None (default): no normalization. "layer": a LayerNorm after each hidden layer,
        before its ReLU, held in `norms` (so the path filter "norms" finds their parameters,
        FedBN's personal ones). The body and head start from the same values either way.
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int], num_outputs: int, *,
        norm: str | None = None, rngs: nnx.Rngs,
    ):
        sizes = [in_features, *hidden]
        self.body = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.head = nnx.Linear(sizes[-1], num_outputs, rngs=rngs)
        norms = _norms(norm, hidden, rngs)  # drawn last: body and head keep their values
        if norms is not None:
            self.norms = norms

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        norms = getattr(self, "norms", None)
        for i, layer in enumerate(self.body):
            x = layer(x)
            x = jax.nn.relu(x if norms is None else norms[i](x))
        return self.head(x)


class Conv1D(nnx.Module):
    """A small 1-D conv net for windows [B, T, C]: two conv layers, mean pooling, then `head`.

    Args:
      norm: None (default) or "layer": a LayerNorm over the channels after each conv, before
        its ReLU, held in `norms` (as in `MLP`).
    """

    def __init__(
        self, in_channels: int, num_outputs: int, *, channels: int = 32, kernel: int = 5,
        norm: str | None = None, rngs: nnx.Rngs,
    ):
        self.body = nnx.List([
            nnx.Conv(in_channels, channels, (kernel,), strides=(2,), rngs=rngs),
            nnx.Conv(channels, channels, (kernel,), strides=(2,), rngs=rngs),
        ])
        self.head = nnx.Linear(channels, num_outputs, rngs=rngs)
        norms = _norms(norm, [channels, channels], rngs)
        if norms is not None:
            self.norms = norms

    def __call__(self, x):
        norms = getattr(self, "norms", None)
        for i, layer in enumerate(self.body):
            x = conv1d_same(x, layer.kernel[...], layer.bias[...], layer.strides[0])
            x = jax.nn.relu(x if norms is None else norms[i](x))
        return self.head(jnp.mean(x, axis=1))


def conv1d_same(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """`nnx.Conv`'s 1-D convolution with "SAME" padding, as one gather and one einsum.

    XLA's CPU convolution is ~18x slower inside the engine's loop (a vmapped `lax.conv` in a
    while loop) than this im2col form of the same sum; on accelerators both are fast.

    Args:
      x: [B, T, C_in]; kernel: [K, C_in, C_out]; bias: [C_out].

    Returns:
      [B, ceil(T / stride), C_out].
    """
    length, width = x.shape[1], kernel.shape[0]
    out = -(-length // stride)
    pad = max((out - 1) * stride + width - length, 0)
    x = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
    taps = jnp.arange(out)[:, None] * stride + jnp.arange(width)[None, :]  # [T_out, K]
    return jnp.einsum("btkc,kco->bto", x[:, taps], kernel) + bias[None, None, :]


def build(name: str, feature_shape: tuple[int, ...], num_outputs: int, *, seed: int = 0,
          hidden: Sequence[int] = (64,), norm: str | None = None) -> nnx.Module:
    """A built-in model by name: "logreg", "linear" (logistic regression without a bias),
    "mlp" or "conv1d"; `norm` ("layer") adds normalization layers to "mlp" and "conv1d"
    (FedBN's personal parameters; see `MLP`)."""
    rngs = nnx.Rngs(seed)
    in_features = 1
    for d in feature_shape:
        in_features *= d
    if name in ("logreg", "linear"):
        if norm is not None:
            raise ValueError(f"{name} has no hidden layers to normalize (norm={norm!r}); use "
                             f"mlp or conv1d")
        return LogisticRegression(in_features, num_outputs, use_bias=name == "logreg",
                                  rngs=rngs)
    if name == "mlp":
        return MLP(in_features, hidden, num_outputs, norm=norm, rngs=rngs)
    if name == "conv1d":
        if len(feature_shape) != 2:
            raise ValueError(f"conv1d needs features [T, C], got shape {feature_shape}")
        return Conv1D(feature_shape[1], num_outputs, norm=norm, rngs=rngs)
    raise ValueError(f"unknown model {name!r}; expected one of: logreg, linear, mlp, conv1d")
