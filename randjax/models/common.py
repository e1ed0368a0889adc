"""Options and layer helpers shared by every model in the zoo.

Every model is a Linen module deriving from `Model`, so every model accepts the
same options (``num_classes``, ``width``, ``use_bias``, ``batch_norm``, ...).
A model family overrides the *defaults* of these fields to follow its reference
implementation; the architecture itself (layer sizes, depth) is a ``ClassVar``
and is not an option.

Conventions (all models):

* Input is NHWC; the output is ``(batch, num_classes)`` logits.
* ``__call__(x, train=False)``: BatchNorm uses batch statistics and dropout is
  active only when ``train=True`` (dropout draws from the ``"dropout"`` rng).
* Parameters are flax's standard leaves: ``kernel``/``bias`` of ``Dense`` and
  ``Conv``, ``scale``/``bias`` of ``BatchNorm`` in ``params`` and its
  ``mean``/``var`` in ``batch_stats``.
* Fully connected layers are ``nn.Dense`` with kernels ``(in, out)``; the
  PyTorch references' 1x1-conv "linear" layers (hidden-networks) are the same
  map.  Flattening is in NHWC order (PyTorch flattens CHW), which only matters
  when porting trained weights.
* ``kernel_init`` defaults to Kaiming-He normal, fan-in, untruncated
  (``variance_scaling(2.0, "fan_in", "normal")``, PyTorch's
  ``kaiming_normal_``), used by open_lth and hidden-networks; the Keras models
  of LaPerm override it with ``he_uniform``.
* Max-pooling is 2x2 with stride 2 and floor semantics (PyTorch / Keras
  ``valid``), except that an axis whose size is already 1 is not pooled: a
  deep net on an 8x8 input keeps a 1x1 map instead of reaching size 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

kaiming_normal: Initializer = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")
"""He et al. (2015) normal init, fan-in, untruncated: std = sqrt(2 / fan_in)."""


def he_uniform(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Keras ``he_uniform``: U(+-sqrt(6 / fan_in)), fan_in = product of all but
    the last axis (``(in, out)`` dense, ``(h, w, in, out)`` conv kernels) and,
    as in Keras, the length of a 1-D (bias) shape."""
    fan_in = shape[0] if len(shape) == 1 else math.prod(shape[:-1])
    bound = math.sqrt(6.0 / fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


# Fields of `Model` that every model accepts (the registry's option names).
COMMON_OPTIONS = (
    "num_classes", "width", "use_bias", "batch_norm", "bn_affine", "bn_momentum",
    "bn_epsilon", "bn_scale_init", "dropout", "kernel_init", "bias_init", "dtype",
)


class Model(nn.Module):
    """Base class: the common options and the layer helpers built from them.

    Attributes:
      num_classes: size of the output layer.
      width: multiplier on every hidden width / channel count (rounded, >= 1);
        the input and output sizes are not scaled.
      use_bias: add biases to conv and dense layers.
      batch_norm: insert BatchNorm where the model family puts it.
      bn_affine: learn BatchNorm scale and offset; ``False`` gives the
        non-affine BatchNorm of edge-popup (no ``scale``/``bias`` leaves).
      bn_momentum: running-average decay in flax's convention
        (0.9 == PyTorch ``momentum=0.1``).
      bn_epsilon: BatchNorm epsilon.
      bn_scale_init: initializer of the BatchNorm scale.
      dropout: dropout rate, applied where each model's docstring says.
      kernel_init: initializer of conv and dense kernels.
      bias_init: initializer of conv and dense biases.
      dtype: computation dtype (parameters stay float32).
    """

    num_classes: int = 10
    width: float = 1.0
    use_bias: bool = False
    batch_norm: bool = False
    bn_affine: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_scale_init: Initializer = jax.nn.initializers.ones
    dropout: Any = 0.0
    kernel_init: Initializer = kaiming_normal
    bias_init: Initializer = jax.nn.initializers.zeros
    dtype: Any = jnp.float32

    def __post_init__(self):
        if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width!r}")
        rates = self.dropout if isinstance(self.dropout, tuple) else (self.dropout,)
        if not all(0.0 <= r < 1.0 for r in rates):
            raise ValueError(f"dropout rates must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1], got {self.bn_momentum!r}")
        super().__post_init__()

    # -- helpers (call them from inside an ``nn.compact`` method) ------------

    def common(self) -> dict[str, Any]:
        """The common options, to build a sub-block with the same settings."""
        return {k: getattr(self, k) for k in COMMON_OPTIONS}

    def ch(self, n: int) -> int:
        """A hidden width scaled by ``width``: ``max(1, round(n * width))``."""
        return max(1, int(round(n * self.width)))

    def dense(self, features: int, *, use_bias: bool | None = None, name=None) -> nn.Dense:
        return nn.Dense(
            features,
            use_bias=self.use_bias if use_bias is None else use_bias,
            kernel_init=self.kernel_init, bias_init=self.bias_init,
            dtype=self.dtype, name=name,
        )

    def conv(self, features: int, kernel_size: int = 3, strides: int = 1,
             padding: Any = "SAME", *, use_bias: bool | None = None, name=None) -> nn.Conv:
        return nn.Conv(
            features, (kernel_size, kernel_size), strides=strides, padding=padding,
            use_bias=self.use_bias if use_bias is None else use_bias,
            kernel_init=self.kernel_init, bias_init=self.bias_init,
            dtype=self.dtype, name=name,
        )

    def norm(self, x: jax.Array, train: bool, name=None) -> jax.Array:
        """BatchNorm over all but the last axis if ``batch_norm``, else identity."""
        if not self.batch_norm:
            return x
        return nn.BatchNorm(
            use_running_average=not train, momentum=self.bn_momentum,
            epsilon=self.bn_epsilon, use_scale=self.bn_affine, use_bias=self.bn_affine,
            scale_init=self.bn_scale_init, dtype=self.dtype, name=name,
        )(x)

    def drop(self, x: jax.Array, train: bool, rate: float | None = None) -> jax.Array:
        """Dropout with ``rate`` (default: the ``dropout`` option); rng ``"dropout"``."""
        rate = self.dropout if rate is None else rate
        if rate == 0.0:
            return x
        return nn.Dropout(rate, deterministic=not train)(x)


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """``window`` x ``window`` max-pool, stride ``window``, floor semantics; an
    axis smaller than the window is pooled over its full size (1 stays 1)."""
    w = tuple(min(window, s) for s in x.shape[1:3])
    return nn.max_pool(x, w, strides=w)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes of an NHWC array: ``(N, H, W, C) -> (N, C)``."""
    return jnp.mean(x, axis=(1, 2))


def flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def valid_or_same(x: jax.Array, kernel_size: int) -> Sequence[tuple[int, int]]:
    """Keras ``valid`` padding per spatial axis, or ``same`` padding on an axis
    smaller than the kernel (so that small inputs still fit)."""
    k = kernel_size
    return [(0, 0) if s >= k else ((k - 1) // 2, k - 1 - (k - 1) // 2) for s in x.shape[1:3]]


def option_names(cls: type[Model]) -> list[str]:
    """The constructor options of a model class (its dataclass fields)."""
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
