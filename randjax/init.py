"""Weight initializers by name, with the conventions of the reference code.

The papers are implemented in PyTorch, whose initializers differ from Flax's
defaults: ``kaiming_normal`` here is PyTorch's ``kaiming_normal_`` (fan-in,
gain sqrt(2), *untruncated* normal), not Flax's truncated ``he_normal``;
``pytorch_default`` is what ``nn.Linear`` / ``nn.Conv2d`` use when nothing is
said (``kaiming_uniform_(a=sqrt(5))``, i.e. U(+-1/sqrt(fan_in))). Fans follow
JAX's convention for kernels: dense ``(in, out)``, conv ``(h, w, in, out)``
with the receptive field counted into both fans.

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
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
from jax.nn import initializers

from randjax.masks import check_density

Initializer = initializers.Initializer

_GAIN = math.sqrt(2.0)  # ReLU gain, as in hidden-networks

_INITIALIZERS: dict[str, Initializer] = {
    "kaiming_normal": initializers.variance_scaling(2.0, "fan_in", "normal"),
    "kaiming_uniform": initializers.variance_scaling(2.0, "fan_in", "uniform"),
    "xavier_normal": initializers.variance_scaling(1.0, "fan_avg", "normal"),
    "xavier_uniform": initializers.variance_scaling(1.0, "fan_avg", "uniform"),
    "lecun_normal": initializers.lecun_normal(),
    "pytorch_default": initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
}


def is_kernel(path: tuple, leaf) -> bool:
    """The default leaf filter: weight matrices and conv kernels (ndim >= 2)."""
    del path
    return getattr(leaf, "ndim", 0) >= 2


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
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(
            f"fan_in needs a kernel with ndim >= 2 (in, out) or (..., in, out), "
            f"got shape {shape}")
    return math.prod(shape[:-1])


def _signed_constant(density: float) -> Initializer:
    kaiming = _INITIALIZERS["kaiming_normal"]

    def init(key, shape, dtype=jnp.float32):
        value = _GAIN / math.sqrt(fan_in(shape) * density)
        w = kaiming(key, shape, jnp.float32)
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
    return _signed_constant(check_density(density))


def scaled_kaiming_normal(density: float) -> Initializer:
    """Kaiming normal (PyTorch's) with fan-in multiplied by the kept fraction.

    Untruncated normal with variance ``2 / (fan_in * density)``: for the same
    key, ``kaiming_normal`` divided by ``sqrt(density)``.

    Args:
        density: Python float in (0, 1], the fraction of weights kept.

    Returns:
        An initializer ``init(key, shape, dtype=float32)``.

    Raises:
        ValueError: ``density`` is not in (0, 1].

    Example:
        >>> import jax
        >>> from randjax.init import scaled_kaiming_normal
        >>> scaled_kaiming_normal(0.5)(jax.random.key(0), (4, 3)).shape
        (4, 3)

    References:
        Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
        Network?", CVPR 2020; He et al., ICCV 2015.
    """
    density = check_density(density)
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
    if name in _SCALED:
        return _SCALED[name](density)
    try:
        return _INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown initializer {name!r}; choose one of {names()}") from None


# ---------------------------------------------------------------------------
# Sparse and single-value initialisations of whole parameter trees (LaPerm,
# Sec. 5.5): pure functions over params with a key, unlike the per-leaf
# initializers above.


def _selected_paths(params, filter):
    """(path, leaf) of every leaf chosen by ``filter``, in flattening order."""
    if not callable(filter):
        raise ValueError(f"filter must be a callable filter(path, leaf), got {filter!r}")
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    chosen = [(path, leaf) for path, leaf in leaves
              if hasattr(leaf, "ndim") and filter(path, leaf)]
    if not chosen:
        raise ValueError("the filter selects no leaf of params")
    return chosen


def _path_names(path) -> set[str]:
    return {str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path}


def random_prune(key: jax.Array, params, density: float, *, input_density: float = 0.8,
                 input_layer: str | None = None, filter=None):
    """Randomly zeroes each selected weight with probability ``1 - density``.

    Every entry of a selected leaf is kept independently with probability
    ``density`` (a Bernoulli mask, as the reference's ``random_prune``); the
    input layer keeps ``max(density, input_density)`` instead, since pruning
    the first layer hard cuts off input pixels. Pruned entries become +0.0;
    under LaPerm the zeros are then permuted with the other values.

    Args:
        key: a `jax.random` key; leaf ``i`` (in flattening order among the
            selected leaves) draws its mask with ``fold_in(key, i)``.
        params: a parameter pytree.
        density: Python float in (0, 1], the expected fraction kept.
        input_density: Python float in [0, 1], the lowest fraction the input
            layer keeps (0 prunes it like every other layer).
        input_layer: the name of the input layer's module (a key in the
            leaf's path, e.g. ``"Conv_0"``); default: the first selected
            leaf in flattening order, which is ``Conv_0`` or ``Dense_0`` in
            every `randjax.models` network.
        filter: ``filter(path, leaf) -> bool`` selects the leaves to prune
            (default: kernels, ``leaf.ndim >= 2``; biases and BatchNorm stay).

    Returns:
        ``params`` with the selected leaves masked (same shapes and dtypes).

    Raises:
        ValueError: ``density`` is not in (0, 1]; ``input_density`` is not
            in [0, 1]; no leaf is selected; ``input_layer`` names no
            selected leaf.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from randjax.init import random_prune
        >>> params = {"Dense_0": {"kernel": jnp.ones((100, 100))},
        ...           "Dense_1": {"kernel": jnp.ones((100, 100)), "bias": jnp.ones(100)}}
        >>> pruned = random_prune(jax.random.key(0), params, 0.3)
        >>> [round(float((pruned[k]["kernel"] != 0).mean()), 1) for k in params]
        [0.8, 0.3]
        >>> bool((pruned["Dense_1"]["bias"] == 1).all())
        True

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 5.4-5.5;
        ihsuy/Train-by-Reconnect, weight_utils.random_prune.
    """
    density = check_density(density)
    if (isinstance(input_density, bool) or not isinstance(input_density, numbers.Real)
            or not 0.0 <= input_density <= 1.0):
        raise ValueError(f"input_density must be a Python float in [0, 1], got {input_density!r}")
    chosen = _selected_paths(params, is_kernel if filter is None else filter)
    if input_layer is None:
        first = {id(chosen[0][1])}
    else:
        first = {id(leaf) for path, leaf in chosen if input_layer in _path_names(path)}
        if not first:
            raise ValueError(f"input_layer {input_layer!r} names no selected leaf of params")
    rates = {id(leaf): max(density, float(input_density)) if id(leaf) in first else density
             for _, leaf in chosen}
    keys = {id(leaf): jax.random.fold_in(key, i) for i, (_, leaf) in enumerate(chosen)}

    def prune(leaf):
        if id(leaf) not in rates:
            return leaf
        keep = jax.random.uniform(keys[id(leaf)], jnp.shape(leaf)) < rates[id(leaf)]
        return jnp.where(keep, leaf, jnp.zeros((), jnp.result_type(leaf)))

    return jax.tree.map(prune, params)


def shared_value(params, value: float, *, filter=None):
    """Sets every nonzero weight of the selected leaves to one shared value.

    With `random_prune` first this builds the paper's weight-agnostic
    networks: every weight is 0 or ``value``, and LaPerm can only decide
    where the zeros go. The reference's ``agnosticize(model, 0.01, (1, 4))``
    is ``shared_value(random_prune(key, params, 0.25, input_density=0.0),
    0.01)``.

    Args:
        params: a parameter pytree.
        value: the shared value, a finite Python float.
        filter: ``filter(path, leaf) -> bool`` selects the leaves (default:
            kernels, ``leaf.ndim >= 2``).

    Returns:
        ``params`` with each selected leaf replaced by
        ``where(leaf != 0, value, 0)`` (same shape and dtype).

    Raises:
        ValueError: ``value`` is not a finite real number; no leaf is selected.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.init import shared_value
        >>> shared_value({"kernel": jnp.array([[0.0, -2.0], [0.3, 0.0]])}, 0.5)["kernel"].tolist()
        [[0.0, 0.5], [0.5, 0.0]]

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 5.5;
        ihsuy/Train-by-Reconnect, weight_utils.agnosticize.
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value)):
        raise ValueError(f"value must be a finite Python float, got {value!r}")
    chosen = {id(leaf) for _, leaf in
              _selected_paths(params, is_kernel if filter is None else filter)}

    def fill(leaf):
        if id(leaf) not in chosen:
            return leaf
        dtype = jnp.result_type(leaf)
        return jnp.where(leaf != 0, jnp.asarray(value, dtype), jnp.zeros((), dtype))

    return jax.tree.map(fill, params)
