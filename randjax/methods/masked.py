"""Masked training: ordinary weight updates under fixed pruning masks.

The trainable tree holds every parameter (pruned weights zeroed at ``init``);
the frozen tree holds the boolean masks at the pruned leaves and ``None``
elsewhere (`randjax.tree` layout). ``apply`` rebuilds ``where(mask, w, 0)``,
so a pruned weight is an exact zero in every forward pass and gets a zero
gradient, whatever the optimizer does to the trainable copy (momentum,
weight decay, Adam): the masks multiply the kernels in the forward pass, as
in Mikler's ``MaskedDense``/``MaskedConv`` and open_lth's ``PrunedModel``.

Export: the codec registered as ``"masked"`` stores each masked leaf as its
mask's packed bits and the surviving values (`randjax.export.save`).

References:
    Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse,
    Trainable Neural Networks", ICLR 2019. https://arxiv.org/abs/1803.03635
    Mikler, "On Pruning Methods for Neural Networks", 2021.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from randjax import export, pruning, tree
from randjax.reparam import Reparam

__all__ = ["masked"]


def _as_bool(mask, where: str) -> jax.Array:
    array = np.asarray(mask)
    if array.dtype != bool:
        if not (np.issubdtype(array.dtype, np.number) and np.isin(array, (0, 1)).all()):
            raise ValueError(f"masked: masks: the mask of {where or 'the root'} must hold "
                             f"0/1 or booleans, got an array of {array.dtype}")
        array = array != 0
    return jnp.asarray(array)


def masked(masks) -> Reparam:
    """Train the weights a pruning mask keeps; the pruned ones stay exact zeros.

    Args:
        masks: boolean (or 0/1) arrays at the pruned leaves and ``None`` at
            the others, in the parameters' tree structure: what
            `randjax.pruning.masks_at_density` and
            `randjax.pruning.prune_remaining` return. Or a function
            ``masks(key, params) -> masks`` that ``init`` calls with its key
            and the initial parameters: pruning at initialisation (random or
            magnitude scores of the initial weights).

    Returns:
        A `Reparam` whose ``init(key, params)`` returns ``(params with the
        pruned weights zeroed, masks)`` and whose ``apply`` returns
        ``where(mask, w, 0)`` on the masked leaves (``params * masks``, with
        exact zeros) and the other leaves unchanged. ``apply`` reads the
        masks from ``frozen`` only, so training under new masks (the next
        pruning round) reuses the compiled step.

    Raises:
        ValueError: no mask; a mask not of 0/1 values. From ``init``: masks
            whose tree or shapes do not match the parameters. From ``apply``:
            a mask not boolean or not of its weight's shape, or swapped
            trees (the message names the leaf).

    Example:
        >>> import jax, jax.numpy as jnp, randjax
        >>> rp = randjax.masked({"w": jnp.array([True, False]), "b": None})
        >>> trainable, frozen = rp.init(None, {"w": jnp.array([2.0, 3.0]), "b": jnp.ones(1)})
        >>> rp.apply({"w": jnp.array([5.0, 7.0]), "b": trainable["b"]}, frozen)["w"].tolist()
        [5.0, 0.0]
        >>> prune = lambda key, p: randjax.pruning.masks_at_density(
        ...     randjax.pruning.random(key, randjax.pruning.select(p)), 0.5)
        >>> _, frozen = randjax.masked(prune).init(jax.random.key(0), {"w": jnp.ones((4, 4))})
        >>> int(frozen["w"].sum())
        8

    References:
        Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019.
    """
    if not callable(masks):
        masks = _checked(masks)

    def init(key, params):
        chosen = _checked(masks(key, params)) if callable(masks) else masks
        pruning.check_masks(chosen, params)
        return pruning.apply_masks(params, chosen), chosen

    return Reparam(init, _apply, {"method": "masked"})


def _checked(masks):
    """``masks`` with every mask a boolean array; ValueError if none or not 0/1."""
    leaves = jax.tree_util.tree_flatten_with_path(masks, is_leaf=tree.is_none)[0]
    if all(m is None for _, m in leaves):
        raise ValueError("masked: masks hold no mask (every leaf is None)")
    return jax.tree_util.tree_unflatten(
        jax.tree.structure(masks, is_leaf=tree.is_none),
        [None if m is None else _as_bool(m, pruning.path_name(p)) for p, m in leaves])


def _apply(trainable, frozen, *, key=None, train=True):
    del key, train
    paired = tree.pair(trainable, frozen, "masked", others="trainable",
                       frozen_like=lambda w: tree.Expected(tuple(jnp.shape(w)), jnp.bool_))
    return paired.rebuild([jnp.where(m, w, jnp.zeros((), w.dtype))
                           for w, m in paired.selected()])


# ---------------------------------------------------------------------------
# Export: one bit per weight and the surviving values.


def _encode(spec, selected, key):
    del spec, key
    stored = []
    for weights, mask, _ in selected:
        mask = np.asarray(mask)
        values = np.asarray(weights)[mask]
        stored.append((dict(mask=np.packbits(mask.ravel()), values=values), weights.shape))
    return stored


def _decode(spec, arrays):
    del spec, arrays

    def rebuild(leaf, stored):
        shape, dtype = tuple(leaf["shape"]), np.dtype(leaf["dtype"])
        bits = np.unpackbits(stored["mask"], count=math.prod(shape)).astype(bool)
        out = np.zeros(math.prod(shape), dtype)
        out[bits] = stored["values"]
        return jnp.asarray(out.reshape(shape))

    return rebuild


export.register_codec("masked", export.Codec(decode=_decode, encode=_encode))
