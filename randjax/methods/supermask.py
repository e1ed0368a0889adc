"""Zhou et al.'s supermask: train Bernoulli mask logits over frozen weights.

Tree layout as `randjax.edge_popup` (see `randjax.tree`): logits in
``trainable``, weights in ``frozen``, ``None`` elsewhere.

References:
    Zhou et al., "Deconstructing Lottery Tickets: Zeros, Signs, and the
    Supermask", NeurIPS 2019. https://arxiv.org/abs/1905.01067
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from randjax import init as init_lib
from randjax import masks, tree
from randjax.reparam import Reparam

__all__ = ["supermask"]


def supermask(*, logit_init: float = 0.0,
              filter: tree.Filter = tree.is_kernel,
              sample_at_eval: bool = True, dynamic_scaling: bool = False,
              train_others: bool = False,
              weight_init: str | Callable | None = None,
              store_weights: bool = True, output_axis: int = -1) -> Reparam:
    """Zhou et al.'s supermask: train mask logits over frozen weights.

    Each selected weight ``w`` gets a trainable logit ``l`` (constant
    ``logit_init`` at init; 0 is p = 0.5, as in the paper). ``apply`` uses
    ``mask = bernoulli_mask(key_i, l)`` (a fresh sample per call, with a
    straight-through gradient via the sigmoid) when ``train`` or
    ``sample_at_eval``, else the deterministic ``threshold_mask(l)``
    (``l > 0``). ``key_i = fold_in(key, i)`` for the i-th selected leaf in
    flattening order. The effective weight is ``w * mask``, times
    ``n / max(1, sum(mask))`` (``n`` the leaf size) with
    ``dynamic_scaling=True``, the paper's dynamic weight rescaling; the factor
    is treated as a constant in the gradient (`jax.lax.stop_gradient`).

    Args:
        logit_init: Python real, the initial value of every logit.
        filter: ``filter(path, leaf) -> bool`` picks the masked leaves.
        sample_at_eval: sample also when ``train=False`` (the paper's
            evaluation); False thresholds at eval.
        dynamic_scaling: rescale each leaf by ``n / max(1, sum(mask))``.
        train_others: whether unselected leaves (biases, BatchNorm) train.
        weight_init: None keeps the given weights; a name from
            `randjax.init.names` (e.g. ``"signed_constant"``) or an
            initializer re-draws them.
        store_weights: False keeps only each weight's key in ``frozen`` and
            redraws the weight inside ``apply`` (as `randjax.edge_popup`).
        output_axis: the kernels' output axis, from which a named
            ``weight_init`` reads fan-in: -1 (default, Flax) or 0 (Equinox /
            PyTorch ``(out, in, ...)``).

    Returns:
        A `Reparam`; its ``apply`` needs ``key`` whenever it samples.

    Raises:
        ValueError: ``logit_init`` not a finite real; a flag not a bool;
            ``filter`` not callable; unknown initializer name; ``output_axis``
            not -1 or 0. From ``init``:
            as `randjax.edge_popup`. From ``apply``: ``key`` is None while
            sampling; trees that do not pair up, as `randjax.edge_popup`.

    Example:
        >>> import jax, jax.numpy as jnp, randjax
        >>> rp = randjax.supermask(logit_init=3.0, sample_at_eval=False)
        >>> trainable, frozen = rp.init(jax.random.key(0), {"w": jnp.ones((2, 3))})
        >>> rp.apply(trainable, frozen, train=False)["w"]
        Array([[1., 1., 1.],
               [1., 1., 1.]], dtype=float32)
        >>> rp.apply(trainable, frozen, key=jax.random.key(1))["w"].shape
        (2, 3)

    References:
        Zhou et al., "Deconstructing Lottery Tickets: Zeros, Signs, and the
        Supermask", NeurIPS 2019.
    """
    logit_init = tree.check_real(logit_init, "logit_init")
    sample_at_eval = tree.check_bool(sample_at_eval, "sample_at_eval")
    dynamic_scaling = tree.check_bool(dynamic_scaling, "dynamic_scaling")
    train_others = tree.check_bool(train_others, "train_others")
    filter = tree.check_filter(filter)
    named = (("weight_init", weight_init),) if isinstance(weight_init, str) else ()
    init_lib.fan_axes(output_axis)
    weight_init = init_lib.resolve(weight_init, "weight_init", output_axis=output_axis)
    store_weights = tree.check_store_weights(store_weights, weight_init, "supermask")

    def init(key, params):
        make = lambda k, leaf: jnp.full(leaf.shape, logit_init, leaf.dtype)
        return tree.split(key, params, filter=filter, make_trainable=make,
                          weight_init=weight_init, train_others=train_others,
                          method="supermask", named=named, store_weights=store_weights)

    def apply(trainable, frozen, *, key=None, train=True):
        sample = train or sample_at_eval
        if sample and key is None:
            raise ValueError(
                "supermask.apply samples masks (train=True or sample_at_eval=True) "
                "and needs key=jax.random key, got None")
        paired = tree.pair(trainable, frozen, "supermask",
                           frozen_like=tree.weight_like(store_weights),
                           others="trainable" if train_others else "frozen")
        weights = paired.weights(weight_init, store_weights)
        effective = []
        for i, ((logits, _), w) in enumerate(zip(paired.selected(), weights)):
            if sample:
                mask = masks.bernoulli_mask(jax.random.fold_in(key, i), logits)
            else:
                mask = masks.threshold_mask(logits)
            w_eff = w * mask.astype(w.dtype)
            if dynamic_scaling:
                kept = jnp.maximum(1.0, jnp.sum(lax.stop_gradient(mask), dtype=jnp.float32))
                w_eff = w_eff * (mask.size / kept).astype(w.dtype)
            effective.append(w_eff)
        return paired.rebuild(effective)

    return Reparam(init, apply)
