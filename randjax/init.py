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

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.nn import initializers

from randjax import tree

Initializer = initializers.Initializer

_GAIN = math.sqrt(2.0)  # ReLU gain, as in hidden-networks

kaiming_normal: Initializer = initializers.variance_scaling(2.0, "fan_in", "normal")
"""He et al. (2015) normal init as PyTorch's ``kaiming_normal_``: fan-in,
untruncated, std = sqrt(2 / fan_in)."""


def fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a kernel shape, JAX convention.

    Dense ``(in, out)`` gives ``(in, out)``; conv ``(h, w, in, out)`` counts
    the receptive field into both: ``(h * w * in, h * w * out)``.

    Raises:
        ValueError: ``shape`` has fewer than two dimensions.

    Example:
        >>> from randjax.init import fans
        >>> fans((3, 3, 16, 32)), fans((784, 300))
        ((144, 288), (784, 300))
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(
            f"fans need a kernel with ndim >= 2 (in, out) or (..., in, out), "
            f"got shape {shape}")
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def fan_in(shape) -> int:
    """Fan-in of a kernel shape, JAX convention: ``prod(shape[:-1])``.

    Dense ``(in, out)`` gives ``in``; conv ``(h, w, in, out)`` gives
    ``h * w * in``.

    Raises:
        ValueError: ``shape`` has fewer than two dimensions.

    Example:
        >>> from randjax.init import fan_in
        >>> fan_in((3, 3, 16, 32)), fan_in((784, 300))
        (144, 784)
    """
    return fans(shape)[0]


def he_uniform(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Keras ``he_uniform``: U(+-sqrt(6 / fan_in)).

    ``fan_in`` as `fan_in` for kernels and, as in Keras, the length of a 1-D
    (bias) shape.

    Example:
        >>> import jax
        >>> from randjax.init import he_uniform
        >>> bool((abs(he_uniform(jax.random.key(0), (6, 4))) <= 1.0).all())
        True

    References:
        He et al., "Delving Deep into Rectifiers", ICCV 2015; Keras
        ``HeUniform``.
    """
    fan = shape[0] if len(shape) == 1 else fan_in(shape)
    bound = math.sqrt(6.0 / fan)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


_INITIALIZERS: dict[str, Initializer] = {
    "kaiming_normal": kaiming_normal,
    "kaiming_uniform": initializers.variance_scaling(2.0, "fan_in", "uniform"),
    "he_uniform": he_uniform,
    "xavier_normal": initializers.variance_scaling(1.0, "fan_avg", "normal"),
    "xavier_uniform": initializers.variance_scaling(1.0, "fan_avg", "uniform"),
    "lecun_normal": initializers.lecun_normal(),
    "pytorch_default": initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
}


def _signed_constant(density: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        value = _GAIN / math.sqrt(fan_in(shape) * density)
        w = kaiming_normal(key, shape, jnp.float32)
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


def scaled_signed_constant(density: float) -> Initializer:
    """`signed_constant` with fan-in multiplied by the kept fraction.

    Entries are ``+-sqrt(2) / sqrt(fan_in * density)``, i.e. `signed_constant`
    divided by ``sqrt(density)`` (hidden-networks' ``scale_fan``).

    Args:
        density: Python float in (0, 1], the fraction of weights kept.

    Returns:
        An initializer ``init(key, shape, dtype=float32)``.

    Raises:
        ValueError: ``density`` is not in (0, 1].

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
    return _signed_constant(tree.check_density(density))


def scaled_kaiming_normal(density: float) -> Initializer:
    """Kaiming normal (PyTorch's) with fan-in multiplied by the kept fraction.

    Untruncated normal with variance ``2 / (fan_in * density)``: for the same
    key, ``kaiming_normal`` divided by ``sqrt(density)``.

    Args:
        density: the kept fraction, a Python float in (0, 1].

    Returns:
        The initializer ``init(key, shape, dtype=float32)`` of that variance.

    Raises:
        ValueError: ``density`` outside (0, 1].

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
    return initializers.variance_scaling(2.0 / density, "fan_in", "normal")


_INITIALIZERS["signed_constant"] = signed_constant

# Initializers that depend on the kept fraction (``get(name, density=...)``).
_SCALED: dict[str, Callable[[float], Initializer]] = {
    "scaled_kaiming_normal": scaled_kaiming_normal,
    "scaled_signed_constant": scaled_signed_constant,
}


def names() -> list[str]:
    """The registered initializer names."""
    return sorted([*_INITIALIZERS, *_SCALED])


def get(name: str, density: float = 1.0) -> Initializer:
    """The initializer called ``name`` (see `names`).

    Args:
        name: a registered name.
        density: the kept fraction in (0, 1], used only by the ``scaled_*``
            initializers (fan-in times ``density``); ignored by the others.

    Returns:
        An initializer ``init(key, shape, dtype=float32)``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the names);
            ``density`` is not in (0, 1] for a ``scaled_*`` name.

    Example:
        >>> import jax
        >>> from randjax import init
        >>> init.get("scaled_signed_constant", density=0.5)(
        ...     jax.random.key(0), (2, 2)).shape
        (2, 2)
    """
    if not isinstance(name, str) or name not in (*_SCALED, *_INITIALIZERS):
        raise ValueError(f"unknown initializer {name!r}; choose one of {names()}")
    if name in _SCALED:
        return _SCALED[name](density)
    return _INITIALIZERS[name]


def name_of(initializer: Callable) -> str | None:
    """The registered name of ``initializer`` (the object `get` returns), or None.

    Example:
        >>> from randjax import init
        >>> init.name_of(init.get("he_uniform")), init.name_of(lambda k, s, d: None)
        ('he_uniform', None)
    """
    return next((name for name, fn in _INITIALIZERS.items() if fn is initializer), None)


def resolve(value: str | Callable | None, name: str, density: float = 1.0
            ) -> Callable | None:
    """An initializer from a registered name or a callable; None passes through.

    Args:
        value: None, a name from `names` (resolved by `get` with
            ``density``) or an initializer ``init(key, shape, dtype)``.
        name: the argument's name, for the error message.
        density: the kept fraction for the ``scaled_*`` names.

    Raises:
        ValueError: ``value`` is neither, or an unknown name (the message
            names the argument and lists the names).
    """
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        try:
            return get(value, density=density)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    raise ValueError(
        f"{name} must be None, an initializer name ({names()}) or a "
        f"callable init(key, shape, dtype), got {value!r}")
