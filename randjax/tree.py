"""The shared toolkit of the methods: leaf filters, tree splitting, keys, checks.

Every method in `randjax.methods` works on parameter pytrees the same way:

* a **filter** ``filter(path, leaf) -> bool`` picks the leaves it touches
  (default `is_kernel`: weight matrices and conv kernels);
* a reparametrization's ``init`` **splits** the parameters into a
  ``trainable`` and a ``frozen`` tree of the same container structure, with
  ``None`` where a tree holds nothing (`split`); its ``apply`` **pairs** the
  two trees leaf by leaf and **rebuilds** the effective parameters
  (`pair`, `Paired.selected`, `Paired.rebuild`);
* the ``i``-th selected leaf draws its random values from `leaf_keys` of the
  ``init`` key, with one jitted `draw`, so a frozen weight can be redrawn
  bitwise from its key (memory-lean training, compact export);
* arguments are checked when a method is built, with `ValueError` messages
  that name the argument (`check_bool`, `check_int`, `check_real`,
  `check_choice`, `check_density`, `check_filter`).

A selected leaf is one where both trees hold an array; a leaf with an array
in one tree only (``None`` in the other) is passed through unchanged.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
KeyPath = tuple
Filter = Callable[[KeyPath, Any], bool]

__all__ = [
    "Expected", "Filter", "Paired", "check_bool", "check_callable", "check_choice",
    "check_density", "check_filter", "check_int", "check_real", "check_store_weights", "draw",
    "is_kernel", "is_none", "leaf_keys", "pair", "split", "weight_like",
]


# ---------------------------------------------------------------------------
# Filters.


def is_kernel(path: KeyPath, leaf) -> bool:
    """The default leaf filter: weight matrices and conv kernels (ndim >= 2).

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.tree import is_kernel
        >>> is_kernel((), jnp.ones((3, 4))), is_kernel((), jnp.ones(4))
        (True, False)
    """
    del path
    return getattr(leaf, "ndim", 0) >= 2


def is_none(x) -> bool:
    """``x is None``: the ``is_leaf`` that keeps ``None`` entries as leaves."""
    return x is None


# ---------------------------------------------------------------------------
# Argument checks (at build time, outside jit).


def check_bool(value, name: str) -> bool:
    """``value`` if it is a Python bool, else ValueError naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a Python bool, got {value!r}")
    return value


def check_int(value, name: str, *, minimum: int | None = None, what: str = "") -> int:
    """``value`` as an int if it is a Python integer (not a bool) >= ``minimum``.

    ``what`` is added to the message in parentheses (e.g. what the number
    counts).
    """
    bound = "" if minimum is None else f" >= {minimum}"
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (minimum is not None and value < minimum)):
        note = f" ({what})" if what else ""
        raise ValueError(f"{name} must be a Python int{bound}{note}, got {value!r}")
    return int(value)


def check_real(value, name: str, *, low: float | None = None,
               high: float | None = None) -> float:
    """``value`` as a float if it is a finite Python real in ``[low, high]``.

    Bools, arrays and tracers are refused: the methods need static numbers.
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or isinstance(value, jax.Array) or not math.isfinite(value)):
        raise ValueError(f"{name} must be a finite Python real, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        interval = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def check_choice(value, choices: Iterable, name: str):
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_density(density) -> float:
    """``density`` as a float, or ValueError unless a Python real in (0, 1].

    Example:
        >>> from randjax.tree import check_density
        >>> check_density(0.5)
        0.5
    """
    if (isinstance(density, bool) or not isinstance(density, numbers.Real)
            or isinstance(density, jax.Array)):
        raise ValueError(
            "density must be a Python float in (0, 1] (it fixes the static "
            f"number of kept entries), got {density!r}")
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    return float(density)


def check_filter(filter, name: str = "filter") -> Filter:
    """``filter`` if it is callable as ``filter(path, leaf)``, else ValueError."""
    if not callable(filter):
        raise ValueError(f"{name} must be a callable filter(path, leaf), got {filter!r}")
    return filter


def check_callable(value, name: str, signature: str = "") -> Callable:
    """``value`` if it is callable, else ValueError naming ``name`` (and ``signature``).

    Example:
        >>> from randjax.tree import check_callable
        >>> check_callable("ones", "kernel_init", "init(key, shape, dtype)")
        Traceback (most recent call last):
        ...
        ValueError: kernel_init must be a callable init(key, shape, dtype), got 'ones'
    """
    if not callable(value):
        raise ValueError(f"{name} must be a callable {signature or ''}".rstrip()
                         + f", got {value!r}")
    return value


# ---------------------------------------------------------------------------
# Keys and draws.


def leaf_keys(key: jax.Array, index: int) -> tuple[jax.Array, jax.Array]:
    """``(score_key, weight_key)`` of the ``index``-th selected leaf.

    The weight-freezing methods derive both keys of a leaf from the key given
    to ``init`` and the leaf's position among the selected leaves (flattening
    order), so a weight can be redrawn, or exported, from that key alone.

    Example:
        >>> import jax
        >>> from randjax.tree import leaf_keys
        >>> score_key, weight_key = leaf_keys(jax.random.key(0), 3)
        >>> bool((jax.random.key_data(score_key) != jax.random.key_data(weight_key)).any())
        True
    """
    score_key, weight_key = jax.random.split(jax.random.fold_in(key, index))
    return score_key, weight_key


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def draw(initializer: Callable, key: jax.Array, shape: tuple, dtype) -> jax.Array:
    """``initializer(key, shape, dtype)``, jitted (``initializer`` static).

    ``init`` runs eagerly and ``apply`` inside the caller's jit; both draw
    through this one compiled program, so a redrawn weight is bitwise the
    stored one. ``initializer`` must be hashable and stable (a module-level
    function, or one cached per configuration) so each shape compiles once.
    """
    return initializer(key, shape, dtype)


# ---------------------------------------------------------------------------
# Splitting into (trainable, frozen) and rebuilding.


def split(key: jax.Array, params: PyTree, *, filter: Filter,
          make_trainable: Callable[[jax.Array, jax.Array], jax.Array],
          weight_init: Callable | None, train_others: bool, method: str,
          named: tuple = (), store_weights: bool = True) -> tuple[PyTree, PyTree]:
    """The ``init`` of a weight-freezing method: ``(trainable, frozen)``.

    Per leaf selected by ``filter`` (the ``i``-th, in flattening order),
    ``trainable`` holds ``make_trainable(score_key, leaf)`` (scores, logits)
    and ``frozen`` the weight: ``leaf`` itself, or a fresh
    ``weight_init(weight_key, shape, dtype)`` with `draw`, with
    ``(score_key, weight_key) = leaf_keys(key, i)``. With
    ``store_weights=False`` the frozen leaf is the raw data of
    ``weight_key`` (`jax.random.key_data`), from which `Paired.weights`
    redraws the weight. Other leaves go to ``trainable`` with
    ``train_others``, to ``frozen`` otherwise.

    Args:
        key: the ``init`` key.
        params: the model's parameters.
        filter: picks the selected leaves.
        make_trainable: ``make_trainable(score_key, leaf) -> array``.
        weight_init: None keeps the given weights; else an initializer.
        train_others: whether unselected leaves are trainable.
        method: the method's name, for error messages.
        named: ``(argument, name)`` pairs of initializers given by name,
            which need kernels (ndim >= 2) to compute fans.
        store_weights: store weights (True) or only their keys.

    Returns:
        ``(trainable, frozen)``, both of ``params``' container structure.

    Raises:
        ValueError: the filter selects nothing; ``key`` is None; a selected
            leaf is not floating, is empty, or is not a kernel while a named
            initializer needs one; ``make_trainable`` or ``weight_init``
            refuses a leaf (the message names it).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not any(filter(path, leaf) for path, leaf in leaves):
        raise ValueError(f"{method}: filter selects no leaf of params")
    if key is None:
        raise ValueError(f"{method}.init needs a jax.random key, got None")
    trainable, frozen = [], []
    index = 0
    for path, leaf in leaves:
        if not filter(path, leaf):
            trainable.append(leaf if train_others else None)
            frozen.append(None if train_others else leaf)
            continue
        leaf = jnp.asarray(leaf)
        where = jax.tree_util.keystr(path)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(
                f"{method}: selected leaf {where} must have a floating dtype, "
                f"got {leaf.dtype}")
        if leaf.size == 0:
            raise ValueError(f"{method}: selected leaf {where} is empty")
        for argument, name in named:
            if leaf.ndim < 2:
                raise ValueError(
                    f"{method}: {argument}={name!r} needs kernels with ndim >= 2 "
                    f"(fan_in), but the filter selects leaf {where} of shape "
                    f"{leaf.shape}; pass an initializer callable or a narrower filter")
        score_key, weight_key = leaf_keys(key, index)
        index += 1
        try:
            trainable.append(make_trainable(score_key, leaf))
            if weight_init is not None:
                leaf = draw(weight_init, weight_key, leaf.shape, leaf.dtype)
        except ValueError as error:
            raise ValueError(f"{method}: leaf {where}: {error}") from None
        frozen.append(leaf if store_weights else jax.random.key_data(weight_key))
    return treedef.unflatten(trainable), treedef.unflatten(frozen)


class Paired(NamedTuple):
    """``trainable`` and ``frozen`` flattened side by side (``None`` kept as a leaf).

    Attributes:
        treedef: the common tree structure.
        trainable: the trainable tree's leaves.
        frozen: the frozen tree's leaves, in the same order.
    """

    treedef: Any
    trainable: list
    frozen: list

    def selected(self) -> list[tuple[Any, Any]]:
        """``(trainable, frozen)`` of every selected leaf (both present), in order."""
        return [(t, f) for t, f in zip(self.trainable, self.frozen)
                if t is not None and f is not None]

    def paths(self) -> list[KeyPath]:
        """The key path of every leaf, in order."""
        placeholders = self.treedef.unflatten([0] * self.treedef.num_leaves)
        return [path for path, _ in jax.tree_util.tree_flatten_with_path(placeholders)[0]]

    def weights(self, weight_init: Callable | None, store_weights: bool) -> list:
        """The frozen weights of the selected leaves: stored, or redrawn from their keys.

        A redrawn weight has the shape and dtype of its trainable leaf.
        """
        pairs = self.selected()
        if store_weights:
            return [w for _, w in pairs]
        return [draw(weight_init, jax.random.wrap_key_data(kd), t.shape, t.dtype)
                for t, kd in pairs]

    def rebuild(self, effective: Iterable) -> PyTree:
        """The parameters: selected leaves from ``effective`` (in order), others as they are."""
        effective = iter(effective)
        out = [next(effective) if t is not None and f is not None else
               (f if t is None else t) for t, f in zip(self.trainable, self.frozen)]
        return self.treedef.unflatten(out)


class Expected(NamedTuple):
    """What the frozen leaf of a selected pair must be (`pair`'s ``frozen_like``).

    Attributes:
        shape: its shape; None for any 1-D shape (the raw data of a key).
        kind: a dtype, or a kind such as ``jnp.floating``, its dtype must be
            a sub-dtype of.
    """

    shape: tuple | None
    kind: Any = jnp.floating


def _fits(leaf, expected: Expected) -> bool:
    shape, dtype = tuple(jnp.shape(leaf)), getattr(leaf, "dtype", None)
    shape_ok = len(shape) == 1 if expected.shape is None else shape == tuple(expected.shape)
    return shape_ok and dtype is not None and jnp.issubdtype(dtype, expected.kind)


def _describe_leaf(leaf) -> str:
    return f"{tuple(jnp.shape(leaf))} {getattr(leaf, 'dtype', type(leaf).__name__)}"


def _where(paired: Paired, index: int) -> str:
    return jax.tree_util.keystr(paired.paths()[index])


def _check_pairs(paired: Paired, method: str, frozen_like: Callable | None,
                 others: str | None) -> None:
    """`pair`'s checks of the selected leaves' shapes and of where the others sit."""
    hint = " (swapped trainable/frozen? apply takes (trainable, frozen))"
    for i, (t, f) in enumerate(zip(paired.trainable, paired.frozen)):
        if t is not None and f is not None and frozen_like is not None:
            expected = frozen_like(t)
            if not _fits(f, expected):
                swapped = _fits(t, frozen_like(f))
                kind = getattr(expected.kind, "__name__", str(expected.kind))
                shape = "1-D" if expected.shape is None else tuple(expected.shape)
                raise ValueError(
                    f"{method}.apply: leaf {_where(paired, i)}: a trainable leaf "
                    f"{_describe_leaf(t)} needs a frozen leaf of shape {shape} ({kind}), "
                    f"got {_describe_leaf(f)}{hint if swapped else ''}")
        elif others is not None and (t is None) != (f is None):
            side = "frozen" if t is None else "trainable"
            if side != others:
                raise ValueError(
                    f"{method}.apply: unselected leaf {_where(paired, i)} is in {side}, "
                    f"but this {method} keeps the unselected leaves in {others}{hint}")


def weight_like(store_weights: bool) -> Callable[[Any], Expected]:
    """`pair`'s ``frozen_like`` when the frozen leaf is the weight under the trainable one.

    The weight has the trainable leaf's shape and a floating dtype; with
    ``store_weights=False`` (see `split`) it is its key's raw data instead,
    a 1-D unsigned integer array.
    """
    if store_weights:
        return lambda t: Expected(tuple(jnp.shape(t)))
    return lambda t: Expected(None, jnp.unsignedinteger)


def pair(trainable: PyTree, frozen: PyTree, method: str, *,
         frozen_like: Callable[[Any], Expected] | None = None,
         others: str | None = None) -> Paired:
    """Flattens both trees side by side; ValueError if their structures differ.

    The checks cost nothing at run time: shapes and dtypes are static, so
    inside ``jit`` they run once, when tracing.

    Args:
        trainable: the trainable tree.
        frozen: the frozen tree.
        method: the method's name, for error messages.
        frozen_like: ``frozen_like(trainable_leaf) -> Expected``, the shape and
            dtype kind of the frozen leaf of every selected pair; another one
            (which would broadcast silently) raises ValueError.
        others: ``"trainable"`` or ``"frozen"``: the tree that holds the
            unselected leaves (those in one tree only); a leaf in the other
            raises ValueError.

    Raises:
        ValueError: the structures differ, or a check above fails; the
            message names the leaf, both shapes, and says when the trees
            look swapped.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.tree import pair
        >>> paired = pair({"w": jnp.ones(2), "b": None}, {"w": jnp.zeros(2), "b": jnp.ones(1)},
        ...               "example")
        >>> [(t.tolist(), f.tolist()) for t, f in paired.selected()]
        [([1.0, 1.0], [0.0, 0.0])]
        >>> rebuilt = paired.rebuild([jnp.full(2, 5.0)])
        >>> rebuilt["w"].tolist(), rebuilt["b"].tolist()
        ([5.0, 5.0], [1.0])
    """
    t_leaves, t_def = jax.tree.flatten(trainable, is_leaf=is_none)
    f_leaves, f_def = jax.tree.flatten(frozen, is_leaf=is_none)
    if t_def != f_def:
        raise ValueError(
            f"{method}.apply: trainable and frozen must have the structure that "
            f"init returned, got {t_def} and {f_def}")
    paired = Paired(t_def, t_leaves, f_leaves)
    if frozen_like is not None or others is not None:
        check_choice(others, ("trainable", "frozen", None), "others")
        _check_pairs(paired, method, frozen_like, others)
    return paired


def check_store_weights(store_weights, weight_init: Callable | None, method: str) -> bool:
    """``store_weights`` as a bool; False needs an initializer to redraw the weights."""
    store_weights = check_bool(store_weights, "store_weights")
    if not store_weights and weight_init is None:
        raise ValueError(
            f"{method}: store_weights=False redraws the weights from their key in "
            "apply, so weight_init must be an initializer name or callable, got None")
    return store_weights
