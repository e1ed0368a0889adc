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
import functools
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from randjax import tree
from randjax.init import kaiming_normal

Initializer = Callable[..., jax.Array]

# Fields of `Model` that every model accepts (the registry's option names).
COMMON_OPTIONS = (
    "num_classes", "width", "use_bias", "batch_norm", "bn_affine", "bn_momentum",
    "bn_epsilon", "bn_scale_init", "dropout", "kernel_init", "bias_init", "dtype",
    "fast_conv_grad",
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
            (0.9 == PyTorch ``momentum=0.1``), in [0, 1]; 1 never updates
            the running statistics (a warning says so).
        bn_epsilon: BatchNorm epsilon, > 0.
        bn_scale_init: initializer of the BatchNorm scale.
        dropout: dropout rate, applied where each model's docstring says.
        kernel_init: initializer of conv and dense kernels.
        bias_init: initializer of conv and dense biases.
        dtype: computation dtype (parameters stay float32).
        fast_conv_grad: convs compute their gradients with
            `conv_general_dilated` (faster on CPU, the same values to float
            rounding); ``False`` uses plain ``lax.conv_general_dilated``
            (e.g. for forward-mode autodiff).

    Every option is checked when the module is constructed (`randjax.models.get`
    or directly): a wrong type or value raises ValueError naming the option
    (`check_options`).
    """

    #: How many rates ``dropout`` may hold as a tuple (one per dropout site);
    #: 0: a single rate only.
    dropout_sites: ClassVar[int] = 0
    #: Whether ``use_bias=None`` (the family's own choice) is accepted.
    bias_may_be_none: ClassVar[bool] = False

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
    fast_conv_grad: bool = True

    def __post_init__(self):
        check_options(self)
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
            conv_general_dilated=conv_general_dilated if self.fast_conv_grad else None,
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


def check_options(model: Model) -> None:
    """ValueError naming the first common option of ``model`` of a wrong type or value.

    `Model` calls it when constructed (a plain function, not a method: flax
    intercepts the methods of a module, e.g. for ``capture_intermediates``).

    Raises:
        ValueError: ``num_classes`` not an int >= 1; ``width`` not a finite
            real > 0; a flag not a Python bool; ``bn_momentum`` outside [0, 1];
            ``bn_epsilon`` not a finite real > 0; a dropout rate outside
            [0, 1); an initializer not callable; ``dtype`` not a floating dtype.
    """
    tree.check_int(model.num_classes, "num_classes", minimum=1)
    if tree.check_real(model.width, "width") <= 0:
        raise ValueError(f"width must be > 0, got {model.width!r}")
    if not (model.use_bias is None and model.bias_may_be_none):
        tree.check_bool(model.use_bias, "use_bias")
    for flag in ("batch_norm", "bn_affine", "fast_conv_grad"):
        tree.check_bool(getattr(model, flag), flag)
    if tree.check_real(model.bn_momentum, "bn_momentum", low=0.0, high=1.0) == 1.0:
        warnings.warn("bn_momentum=1.0 never updates the BatchNorm running statistics: "
                      "evaluation uses their initial (or loaded) values", stacklevel=5)
    if tree.check_real(model.bn_epsilon, "bn_epsilon") <= 0:
        raise ValueError(f"bn_epsilon must be > 0 (it keeps 1 / sqrt(var + epsilon) "
                         f"finite), got {model.bn_epsilon!r}")
    _check_dropout(model)
    for name in ("kernel_init", "bias_init", "bn_scale_init"):
        tree.check_callable(getattr(model, name), name, "init(key, shape, dtype)")
    _check_dtype(model.dtype)


def _check_dropout(model: Model) -> None:
    rates = model.dropout
    if not isinstance(rates, tuple):
        rates = (rates,)
    elif not model.dropout_sites:
        raise ValueError(f"dropout must be one rate in [0, 1) for "
                         f"{type(model).__name__}, got {model.dropout!r}")
    elif len(rates) != model.dropout_sites:
        raise ValueError(f"{type(model).__name__} dropout must be a rate or "
                         f"{model.dropout_sites} rates, got {model.dropout!r}")
    for rate in rates:
        if tree.check_real(rate, "dropout") < 0 or rate >= 1:
            raise ValueError(f"dropout rates must be in [0, 1), got {model.dropout!r}")


def _check_dtype(dtype) -> None:
    if dtype is None:  # flax infers it from the inputs
        return
    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except (TypeError, ValueError, SyntaxError):  # numpy's parse of a dtype string
        floating = False
    if not floating:
        raise ValueError(f"dtype must be a floating dtype (or None), got {dtype!r}")


# -- convolution with a fast kernel gradient on CPU ----------------------------
#
# XLA:CPU computes a conv's kernel gradient as a convolution whose window is the
# whole feature map, several times slower than the forward conv on large maps.
# Matmuls give the same kernel gradient much faster: ``window^T @ dy`` with
# the window a shifted, strided slice of the padded input. Over the whole
# batch at once (one matmul per tap) they stream every operand through memory
# nine times; over groups of images whose slices stay in the caches, with a
# kernel row's taps side by side (one matmul per row), they run 1.3-2.3x as
# fast again inside an epoch's loop (Conv4's convs). Tried and slower:
# shifting the output gradient instead of the input; the output gradient
# transposed once; whole-batch im2col; every tap side by side where the
# input has many channels (fine for 3 channels).
# ``python -m experiments.benchmark --conv_phases --in_loop=3`` times each
# layer's gradients, ``--nofast_conv_grad`` compares XLA's own. On GPU/TPU
# (cuDNN) XLA's own kernel gradient is fast and is kept.
#
# Inside a loop body (a `lax.scan` epoch), XLA:CPU's own input gradient -- the
# conv's VJP, which flips the kernel through its dimension numbers -- runs
# several times slower than the same program outside a loop. Written as a
# plain forward conv of ``dy`` with the flipped kernel materialised, it runs
# as fast in a loop as outside. ``python -m experiments.benchmark
# --conv_phases --in_loop=3`` times both, alone and inside a `lax.fori_loop`.


def _channels_last(nd: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers((0, nd + 1, *spatial), (nd + 1, nd, *range(nd)),
                                    (0, nd + 1, *spatial))


def _lax_conv(x, w, strides, pads, precision):
    return lax.conv_general_dilated(x, w, strides, pads, precision=precision,
                                    dimension_numbers=_channels_last(x.ndim - 2))


# Rows of the matmuls of one batch group in `_kernel_grad_matmul`: the
# group's input windows and output gradient stay in the CPU's caches.
_KERNEL_GRAD_GROUP_ROWS = 4096
# Columns the side-by-side taps reach at least, where the kernel has them.
_KERNEL_GRAD_MIN_WIDTH = 64


def _kernel_grad_matmul(x, dy, window, strides, pads, precision):
    """d loss / d kernel of `_lax_conv` by matmuls, accumulated in float32.

    A loop over groups of images. In each, the windows of the taps of the
    kernel's trailing axes (the last one, more while that makes fewer than
    ``_KERNEL_GRAD_MIN_WIDTH`` columns) are put side by side in the
    channels, and each tap of the other axes is one ``(m, o)^T @ (m,
    width)`` matmul on a strided slice of them (m = the group's output
    positions).
    """
    n, c, o = x.shape[0], x.shape[-1], dy.shape[-1]
    if dy.size == 0:
        return jnp.zeros((*window, c, o), x.dtype)
    xp = lax.pad(x, jnp.zeros((), x.dtype),
                 [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    out, nd = dy.shape[1:-1], len(window)
    joined = next(j for j in range(1, nd + 1)
                  if j == nd or math.prod(window[nd - j:]) * c >= _KERNEL_GRAD_MIN_WIDTH)
    lead, tail = window[:nd - joined], window[nd - joined:]
    width = math.prod(tail) * c
    group = max(g for g in range(1, n + 1)
                if n % g == 0 and (g == 1 or g * math.prod(out) <= _KERNEL_GRAD_GROUP_ROWS))

    def shifted(a, offset, first):
        """The strided window of the spatial axes ``first, first + 1, ...`` at ``offset``."""
        for d, k in enumerate(offset, start=first):
            a = lax.slice_in_dim(a, k, k + (out[d - 1] - 1) * strides[d - 1] + 1,
                                 strides[d - 1], d)
        return a

    def add_group(i, acc):
        xs = lax.dynamic_slice_in_dim(xp, i * group, group, 0)
        dys = lax.dynamic_slice_in_dim(dy, i * group, group, 0).reshape(-1, o)
        side_by_side = jnp.concatenate(   # (group, *padded lead, *out tail, width)
            [shifted(xs, offset, 1 + len(lead)) for offset in itertools.product(*map(range, tail))],
            axis=-1)
        return acc + jnp.stack([   # the lead taps, row-major
            lax.dot_general(dys, shifted(side_by_side, offset, 1).reshape(-1, width),
                            (((0,), (0,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.float32)
            for offset in itertools.product(*map(range, lead))])

    dw = lax.fori_loop(0, n // group, add_group,
                       jnp.zeros((math.prod(lead), o, width), jnp.float32))
    dw = dw.reshape(*lead, o, *tail, c)                   # -> (*lead, *tail, c, o)
    return dw.transpose(*range(len(lead)), *range(len(lead) + 1, nd + 2),
                        len(lead)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fast_conv(x, w, strides, pads, precision):
    return _lax_conv(x, w, strides, pads, precision)


def _fast_conv_fwd(x, w, strides, pads, precision):
    return _lax_conv(x, w, strides, pads, precision), (x, w)


def _input_grad_conv(dy, w, x_shape, strides, pads, precision):
    """d loss / d input of `_lax_conv` as a plain forward conv: ``dy`` dilated
    by the strides, the kernel flipped with its channel axes swapped."""
    if dy.size == 0:
        return jnp.zeros(x_shape, dy.dtype)
    window = w.shape[:-2]
    flipped = jnp.flip(w, tuple(range(len(window)))).swapaxes(-1, -2)
    # the rows past the forward conv's last window (floor semantics) get padding
    pads = [(k - 1 - lo, k - 1 - hi + (n + lo + hi - k - (m - 1) * s))
            for n, m, k, s, (lo, hi) in zip(x_shape[1:-1], dy.shape[1:-1], window, strides, pads)]
    return lax.conv_general_dilated(dy, flipped, (1,) * len(window), pads,
                                     lhs_dilation=strides, precision=precision,
                                     dimension_numbers=_channels_last(len(window)))


def _fast_conv_bwd(strides, pads, precision, res, dy):
    x, w = res
    xla_dx = lambda dy: jax.vjp(lambda x: _lax_conv(x, w, strides, pads, precision), x)[1](dy)[0]
    xla_dw = lambda x, dy: jax.vjp(lambda w: _lax_conv(x, w, strides, pads, precision),
                                   w)[1](dy)[0]
    # The branches are picked when the computation is lowered, for the platform
    # it is compiled for -- unlike `jax.default_backend()` at trace time, this
    # is right for a CPU jit on a GPU host (jax.default_device, jit(device=...))
    # and for exported functions.
    dx = lax.platform_dependent(
        dy, cpu=lambda dy: _input_grad_conv(dy, w, x.shape, strides, pads, precision),
        default=xla_dx)
    dw = lax.platform_dependent(
        x, dy,
        cpu=lambda x, dy: _kernel_grad_matmul(x, dy, w.shape[:-2], strides, pads, precision),
        default=xla_dw,
    )
    return dx, dw


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated`` with faster gradients on CPU (see above),
    for ``nn.Conv(conv_general_dilated=...)``.

    The forward pass is ``lax.conv_general_dilated`` itself; on CPU the input
    gradient is a forward conv with the flipped kernel (fast inside loop
    bodies too), elsewhere the conv's VJP.  The fast path covers
    channels-last convs (NHWC / HWIO and their 1-D / 3-D analogues) with any
    strides and padding; anything else (dilation, feature or batch groups,
    other layouts, mixed dtypes, ``preferred_element_type``) is plain
    ``lax.conv_general_dilated``.  Being a ``jax.custom_vjp``, the fast path
    supports reverse-mode autodiff only
    (``Model(fast_conv_grad=False)`` for forward mode).
    """
    nd = lhs.ndim - 2
    if (nd < 1 or rhs.ndim != lhs.ndim or lhs.dtype != rhs.dtype
            or dimension_numbers is None
            or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            != _channels_last(nd)
            or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
            or feature_group_count != 1 or batch_group_count != 1
            or preferred_element_type is not None):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if isinstance(precision, list):  # nondiff args must be hashable
        precision = tuple(precision)
    return _fast_conv(lhs, rhs, tuple(int(s) for s in window_strides), pads, precision)


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """``window`` x ``window`` max-pool, stride ``window``, floor semantics; an
    axis smaller than the window is pooled over its full size (1 stays 1).

    Values and gradients are those of ``nn.max_pool`` (the first maximum of a
    window takes the gradient); on CPU the gradient is an argmax + one-hot
    instead of XLA's select-and-scatter, which is several times slower there.
    """
    w = tuple(min(window, s) for s in x.shape[1:3])
    return _window_max(x, w)


def _windows(x: jax.Array, w: tuple[int, int]) -> jax.Array:
    """``(N, H, W, C) -> (N, H//wh, W//ww, C, wh*ww)``, dropping the remainder."""
    n, h, wd, c = x.shape
    (wh, ww), ho, wo = w, h // w[0], wd // w[1]
    x = x[:, :ho * wh, :wo * ww]
    return x.reshape(n, ho, wh, wo, ww, c).transpose(0, 1, 3, 5, 2, 4).reshape(
        n, ho, wo, c, wh * ww)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x, w):
    return nn.max_pool(x, w, strides=w)


def _window_max_fwd(x, w):
    return _window_max(x, w), x


def _window_max_bwd(w, x, g):
    def one_hot_grad(x, g):
        n, h, wd, c = x.shape
        (wh, ww), ho, wo = w, h // w[0], wd // w[1]
        first_max = jax.nn.one_hot(jnp.argmax(_windows(x, w), -1), wh * ww, dtype=g.dtype)
        dx = (first_max * g[..., None]).reshape(n, ho, wo, c, wh, ww)
        dx = dx.transpose(0, 1, 4, 2, 5, 3).reshape(n, ho * wh, wo * ww, c)
        return jnp.pad(dx, ((0, 0), (0, h - ho * wh), (0, wd - wo * ww), (0, 0)))

    xla_grad = lambda x, g: jax.vjp(lambda x: nn.max_pool(x, w, strides=w), x)[1](g)[0]
    return (lax.platform_dependent(x, g, cpu=one_hot_grad, default=xla_grad),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


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
