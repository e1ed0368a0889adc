"""Reparametrizations: how trainable and frozen pytrees become model parameters.

Every method in randjax that changes *what* is trained (edge-popup scores,
supermask logits, Slot Machine scores, masks under pruning) is a `Reparam`: a
pair of pure functions over parameter pytrees. The model never knows; it only
sees the effective parameters that `apply` rebuilds. This module holds the
type, the leaf filter the methods share, and `dense`, the identity
reparametrization of ordinary training.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

PyTree = Any


class Reparam(NamedTuple):
    """A parametrization as two pure functions.

    Attributes:
        init: ``init(key, params) -> (trainable, frozen)`` splits (and may
            re-initialise) model parameters into the pytree the optimizer
            updates and the pytree that stays fixed.
        apply: ``apply(trainable, frozen, *, key=None, train=True) -> params``
            rebuilds the effective model parameters. ``key`` feeds stochastic
            methods (supermask sampling); ``train`` selects train or eval
            behaviour.
    """

    init: Callable[[jax.Array, PyTree], tuple[PyTree, PyTree]]
    apply: Callable[..., PyTree]


def is_kernel(path: tuple, leaf: Any) -> bool:
    """The default leaf filter: weight matrices and conv kernels (ndim >= 2)."""
    del path
    return getattr(leaf, "ndim", 0) >= 2


def dense() -> Reparam:
    """Ordinary training: every parameter is trainable, nothing is frozen.

    Returns:
        A `Reparam` whose ``init`` returns ``(params, None)`` and whose
        ``apply`` returns the trainable tree unchanged.

    Example:
        >>> import jax.numpy as jnp, randjax
        >>> rp = randjax.dense()
        >>> trainable, frozen = rp.init(None, {"w": jnp.ones((2, 2))})
        >>> rp.apply(trainable, frozen)["w"].shape
        (2, 2)
    """

    def init(key, params):
        del key
        return params, None

    def apply(trainable, frozen, *, key=None, train=True):
        del frozen, key, train
        return trainable

    return Reparam(init, apply)
