"""Weight initializers by name, with the conventions of the reference code.

Initializers are functions ``init(key, shape, dtype) -> array``, as
`jax.nn.initializers`; `get` returns one by name, `resolve` accepts a name
or a callable, and `fans` / `fan_in` give the fans every fan-scaled
initializer (and Slot Machines' option bounds) use.

The papers are implemented in PyTorch, whose initializers differ from Flax's
defaults: ``kaiming_normal`` here is PyTorch's ``kaiming_normal_`` (fan-in,
gain sqrt(2), *untruncated* normal), not Flax's truncated ``he_normal``;
``pytorch_default`` is what ``nn.Linear`` / ``nn.Conv2d`` use when nothing is
said (``kaiming_uniform_(a=sqrt(5))``, i.e. U(+-1/sqrt(fan_in))). Fans follow
JAX's convention for kernels: dense ``(in, out)``, conv ``(h, w, in, out)``
with the receptive field counted into both fans.

**Layouts.** Flax and the zoo put a kernel's output units on its last axis
(``(..., in, out)``, the default ``output_axis=-1``); Equinox and weights
converted from PyTorch put them first (``(out, in)``, ``(out, in, kh, kw)``):
pass ``output_axis=0`` to `fans`, `fan_in`, `get` and `resolve`, and the
input axis is then axis 1. The fans are the same numbers in either layout.

``he_uniform`` is Keras' ``he_uniform`` (the LaPerm reference's models):
U(+-sqrt(6 / fan_in)), a 1-D (bias) shape counting its length as fan-in.

Edge-popup's hidden-networks code adds ``signed_constant`` (every weight is
``+-gain / sqrt(fan_in)``, the sign of a Kaiming-normal draw) and, with
``scale_fan``, variants whose fan-in is multiplied by the kept fraction
``density`` so the pruned network keeps the variance of a dense one:
``scaled_kaiming_normal`` and ``scaled_signed_constant``, reached by name
with ``get(name, density=...)``.

References:
    He et al., "Delving Deep into Rectifiers", ICCV 2015.
    Glorot & Bengio, "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS 2010.
    Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
    CVPR 2020 (signed constant, scale_fan); allenai/hidden-networks,
    utils/builder.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.nn import initializers

from randjax import tree

Initializer = initializers.Initializer

_GAIN = math.sqrt(2.0)  # ReLU gain, as in hidden-networks

def _normal(scale: float, mode: str, output_axis: int = -1) -> Initializer:
    """``variance_scaling(scale, mode, "normal")`` drawing the same bits in and out of `jax.jit`.

    In one jitted program XLA folds the standard deviation into the constant
    factor inside `jax.random.normal` (sqrt 2), which rounds differently from
    the draw followed by a multiplication, as eager mode (and every earlier
    run) computes it. A barrier keeps the two apart, so the one jitted
    initialisation of `randjax.train.init_state` draws exactly the weights
    that ``model.init`` draws eagerly.
    """
    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = fans(shape, output_axis)
        denominator = fan_in if mode == "fan_in" else (fan_in + fan_out) / 2
        std = jnp.sqrt(jnp.array(scale / denominator, dtype=dtype))
        return jax.lax.optimization_barrier(jax.random.normal(key, shape, dtype)) * std

    return init


kaiming_normal: Initializer = _normal(2.0, "fan_in")
"""He et al. (2015) normal init as PyTorch's ``kaiming_normal_``: fan-in,
untruncated, std = sqrt(2 / fan_in)."""


def fan_axes(output_axis: int = -1) -> tuple[int, int]:
    """``(in_axis, out_axis)`` of a kernel layout, as `jax.nn.initializers` takes them.

    Args:
        output_axis: -1 (Flax ``(..., in, out)``: ``(-2, -1)``) or 0
            (Equinox / PyTorch ``(out, in, ...)``: ``(1, 0)``).

    Raises:
        ValueError: ``output_axis`` is neither (bools rejected).
    """
    if isinstance(output_axis, bool) or output_axis not in (-1, 0):
        raise ValueError(
            f"output_axis must be -1 (Flax layout (..., in, out)) or 0 (Equinox / PyTorch "
            f"layout (out, in, ...)), got {output_axis!r}")
    return (-2, -1) if output_axis == -1 else (1, 0)


def fans(shape, output_axis: int = -1) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a kernel shape.

    Dense ``(in, out)`` gives ``(in, out)``; conv ``(h, w, in, out)`` counts
    the receptive field into both: ``(h * w * in, h * w * out)``. With
    ``output_axis=0`` the shape is read as ``(out, in, ...)`` (Equinox,
    PyTorch): ``(out, in, h, w)`` gives the same fans as ``(h, w, in, out)``.

    Raises:
        ValueError: ``shape`` has fewer than two dimensions; ``output_axis``
            is not -1 or 0.

    Example:
        >>> from randjax.init import fans
        >>> fans((3, 3, 16, 32)), fans((784, 300)), fans((32, 16, 3, 3), output_axis=0)
        ((144, 288), (784, 300), (144, 288))
    """
    in_axis, out_axis = fan_axes(output_axis)
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(
            f"fans need a kernel with ndim >= 2 (in, out) or (..., in, out), "
            f"got shape {shape}")
    receptive = math.prod(shape) // (shape[in_axis] * shape[out_axis])
    return shape[in_axis] * receptive, shape[out_axis] * receptive


def fan_in(shape, output_axis: int = -1) -> int:
    """Fan-in of a kernel shape: the size of one output unit's weight vector.

    Dense ``(in, out)`` gives ``in``; conv ``(h, w, in, out)`` gives
    ``h * w * in``; with ``output_axis=0``, ``(out, in, h, w)`` gives
    ``in * h * w``.

    Raises:
        ValueError: ``shape`` has fewer than two dimensions; ``output_axis``
            is not -1 or 0.

    Example:
        >>> from randjax.init import fan_in
        >>> fan_in((3, 3, 16, 32)), fan_in((784, 300)), fan_in((300, 784), output_axis=0)
        (144, 784, 784)
    """
    return fans(shape, output_axis)[0]


def he_uniform(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32, *,
               output_axis: int = -1) -> jax.Array:
    """Keras ``he_uniform``: U(+-sqrt(6 / fan_in)).

    ``fan_in`` as `fan_in` (of the layout ``output_axis``) for kernels and,
    as in Keras, the length of a 1-D (bias) shape.

    Example:
        >>> import jax
        >>> from randjax.init import he_uniform
        >>> bool((abs(he_uniform(jax.random.key(0), (6, 4))) <= 1.0).all())
        True

    References:
        He et al., "Delving Deep into Rectifiers", ICCV 2015; Keras
        ``HeUniform``.
    """
    fan = shape[0] if len(shape) == 1 else fan_in(shape, output_axis)
    bound = math.sqrt(6.0 / fan)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _registry(output_axis: int) -> dict[str, Initializer]:
    """The named initializers for kernels whose output units lie on ``output_axis``."""
    if output_axis == -1:   # the module's own objects, so that `name_of` finds them
        return {"kaiming_normal": kaiming_normal, "xavier_normal": _normal(1.0, "fan_avg"),
                "he_uniform": he_uniform, "signed_constant": signed_constant,
                **_variance_scaling(-2, -1)}
    in_axis, out_axis = fan_axes(output_axis)
    return {"kaiming_normal": _normal(2.0, "fan_in", output_axis),
            "xavier_normal": _normal(1.0, "fan_avg", output_axis),
            "he_uniform": functools.partial(he_uniform, output_axis=output_axis),
            "signed_constant": _signed_constant(1.0, output_axis),
            **_variance_scaling(in_axis, out_axis)}


def _variance_scaling(in_axis: int, out_axis: int) -> dict[str, Initializer]:
    def scaling(scale, mode, distribution):
        return initializers.variance_scaling(scale, mode, distribution,
                                             in_axis=in_axis, out_axis=out_axis)

    return {"kaiming_uniform": scaling(2.0, "fan_in", "uniform"),
            "xavier_uniform": scaling(1.0, "fan_avg", "uniform"),
            "lecun_normal": scaling(1.0, "fan_in", "truncated_normal"),
            "pytorch_default": scaling(1.0 / 3.0, "fan_in", "uniform")}


def _signed_constant(density: float, output_axis: int = -1) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        value = _GAIN / math.sqrt(fan_in(shape, output_axis) * density)
        w = kaiming_normal(key, shape, jnp.float32)  # only its signs are used
        return jnp.where(w < 0, -value, value).astype(dtype)

    return init


signed_constant: Initializer = _signed_constant(1.0)
signed_constant.__doc__ = """Signed constant: ``sign(w) * sqrt(2) / sqrt(fan_in)``.

``w`` is a Kaiming-normal draw (so each sign is a fair coin); every entry is
exactly ``+-sqrt(2) / sqrt(fan_in)`` (a zero draw counts as positive).

Args:
    key: a `jax.random` key.
    shape: kernel shape with ndim >= 2 (fan-in as in `fan_in`).
    dtype: output dtype.

Returns:
    An array of ``shape`` and ``dtype``.

Example:
    >>> import jax, numpy as np
    >>> from randjax.init import signed_constant
    >>> w = signed_constant(jax.random.key(0), (8, 4))
    >>> np.unique(np.round(np.asarray(w), 4)).tolist()
    [-0.5, 0.5]

References:
    Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
    CVPR 2020.
"""


def scaled_signed_constant(density: float, output_axis: int = -1) -> Initializer:
    """`signed_constant` with fan-in multiplied by the kept fraction.

    Entries are ``+-sqrt(2) / sqrt(fan_in * density)``, i.e. `signed_constant`
    divided by ``sqrt(density)`` (hidden-networks' ``scale_fan``).

    Args:
        density: Python float in (0, 1], the fraction of weights kept.
        output_axis: the kernels' output axis (-1 Flax, 0 Equinox / PyTorch).

    Returns:
        An initializer ``init(key, shape, dtype=float32)``.

    Raises:
        ValueError: ``density`` is not in (0, 1]; ``output_axis`` not -1 or 0.

    Example:
        >>> import jax, numpy as np
        >>> from randjax.init import scaled_signed_constant
        >>> w = scaled_signed_constant(0.25)(jax.random.key(0), (8, 4))
        >>> np.unique(np.round(np.asarray(w), 4)).tolist()
        [-1.0, 1.0]

    References:
        Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
        Network?", CVPR 2020.
    """
    fan_axes(output_axis)
    return _signed_constant(tree.check_density(density), output_axis)


def scaled_kaiming_normal(density: float, output_axis: int = -1) -> Initializer:
    """Kaiming normal (PyTorch's) with fan-in multiplied by the kept fraction.

    Untruncated normal with variance ``2 / (fan_in * density)``: for the same
    key, ``kaiming_normal`` divided by ``sqrt(density)``.

    Args:
        density: the kept fraction, a Python float in (0, 1].
        output_axis: the kernels' output axis (-1 Flax, 0 Equinox / PyTorch).

    Returns:
        The initializer ``init(key, shape, dtype=float32)`` of that variance.

    Raises:
        ValueError: ``density`` outside (0, 1]; ``output_axis`` not -1 or 0.

    Example:
        >>> import jax
        >>> from randjax.init import scaled_kaiming_normal
        >>> scaled_kaiming_normal(0.5)(jax.random.key(0), (4, 3)).shape
        (4, 3)

    References:
        Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
        Network?", CVPR 2020; He et al., ICCV 2015.
    """
    density = tree.check_density(density)
    fan_axes(output_axis)
    return _normal(2.0 / density, "fan_in", output_axis)


_INITIALIZERS: dict[str, Initializer] = _registry(-1)
_TRANSPOSED: dict[str, Initializer] = _registry(0)   # output_axis=0

# Initializers that depend on the kept fraction (``get(name, density=...)``).
_SCALED: dict[str, Callable[[float, int], Initializer]] = {
    "scaled_kaiming_normal": scaled_kaiming_normal,
    "scaled_signed_constant": scaled_signed_constant,
}


def names() -> list[str]:
    """The registered initializer names."""
    return sorted([*_INITIALIZERS, *_SCALED])


def get(name: str, density: float = 1.0, output_axis: int = -1) -> Initializer:
    """The initializer called ``name`` (see `names`).

    Args:
        name: a registered name.
        density: the kept fraction in (0, 1], used only by the ``scaled_*``
            initializers (fan-in times ``density``); ignored by the others.
        output_axis: the layout of the kernels it will draw: -1 (default,
            Flax ``(..., in, out)``) or 0 (Equinox / PyTorch ``(out, in, ...)``);
            the fans are read from that layout.

    Returns:
        An initializer ``init(key, shape, dtype=float32)``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the names);
            ``density`` is not in (0, 1] for a ``scaled_*`` name;
            ``output_axis`` is not -1 or 0.

    Example:
        >>> import jax
        >>> from randjax import init
        >>> init.get("scaled_signed_constant", density=0.5)(
        ...     jax.random.key(0), (2, 2)).shape
        (2, 2)
    """
    if not isinstance(name, str) or name not in (*_SCALED, *_INITIALIZERS):
        raise ValueError(f"unknown initializer {name!r}; choose one of {names()}")
    fan_axes(output_axis)
    if name in _SCALED:
        return _SCALED[name](density, output_axis)
    return (_INITIALIZERS if output_axis == -1 else _TRANSPOSED)[name]


def name_of(initializer: Callable) -> str | None:
    """The registered name of ``initializer`` (the object `get` returns), or None.

    Example:
        >>> from randjax import init
        >>> init.name_of(init.get("he_uniform")), init.name_of(lambda k, s, d: None)
        ('he_uniform', None)
    """
    return next((name for name, fn in _INITIALIZERS.items() if fn is initializer), None)


def resolve(value: str | Callable | None, name: str, density: float = 1.0,
            output_axis: int = -1) -> Callable | None:
    """An initializer from a registered name or a callable; None passes through.

    Args:
        value: None, a name from `names` (resolved by `get` with
            ``density``) or an initializer ``init(key, shape, dtype)``.
        name: the argument's name, for the error message.
        density: the kept fraction for the ``scaled_*`` names.
        output_axis: the kernels' layout for a name (as `get`); a callable
            is used as given.

    Raises:
        ValueError: ``value`` is neither, or an unknown name (the message
            names the argument and lists the names).
    """
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        try:
            return get(value, density=density, output_axis=output_axis)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    raise ValueError(
        f"{name} must be None, an initializer name ({names()}) or a "
        f"callable init(key, shape, dtype), got {value!r}")
