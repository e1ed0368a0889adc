"""Edge-popup: train scores over frozen random weights, keep the top-k |scores|.

Tree layout (see `randjax.tree`): ``trainable`` and ``frozen`` both have the
container structure of ``params``, with ``None`` where a tree holds nothing
(optax and `jax.tree` treat ``None`` as an empty subtree). A leaf chosen by
``filter`` has its scores in ``trainable`` and its frozen weight in
``frozen``; any other leaf (biases, BatchNorm) sits in ``frozen`` (``None``
in ``trainable``), or in ``trainable`` with ``train_others=True``. So
``trainable["Dense_0"]["kernel"]`` is the score of that kernel and
``frozen["Dense_0"]["kernel"]`` its weight.

Export: the codec registered as ``"edge_popup"`` stores each masked leaf as
its weight key and one bit per weight (`randjax.export.save`).

References:
    Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
    CVPR 2020. https://arxiv.org/abs/1911.13299
    Reference code: allenai/hidden-networks (PyTorch).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from randjax import export, masks, tree
from randjax import init as init_lib
from randjax.reparam import Reparam

__all__ = ["edge_popup", "edge_popup_masks", "scaled_init"]

_SCOPES = ("layer", "global")


def edge_popup(density: float, *, scope: str = "layer",
               filter: tree.Filter = tree.is_kernel,
               weight_init: str | Callable | None = None,
               score_init: str | Callable = "pytorch_default",
               rounding: str = "round", train_others: bool = False,
               scale_fan: str = "kept", store_weights: bool = True,
               output_axis: int = -1) -> Reparam:
    """Edge-popup: train scores, keep the weights with the top-k |scores|.

    Weights are frozen at initialisation. Each selected weight ``w`` gets a
    trainable score ``s`` of its shape; the effective weight is
    ``w * topk_mask(|s|, density)``, with a straight-through gradient (through
    the absolute value) so every score learns. With ``scope="layer"`` each
    leaf keeps its own top ``k = round(density * n)`` (as hidden-networks'
    ``GetSubnet``); with ``scope="global"`` one top-k over the concatenated
    |scores| of all selected leaves keeps exactly ``round(density * N)`` in
    all, distributed freely between leaves. ``key`` and ``train`` of
    ``apply`` are ignored: the mask is deterministic.

    Trees (see the module docstring): ``trainable`` holds the scores (plus
    the other leaves with ``train_others=True``), ``frozen`` the weights (plus
    the other leaves by default), ``None`` elsewhere.

    Args:
        density: Python float in (0, 1], the fraction of weights kept.
        scope: ``"layer"`` (top-k per leaf) or ``"global"`` (one top-k).
        filter: ``filter(path, leaf) -> bool`` picks the masked leaves
            (default `randjax.tree.is_kernel`, ndim >= 2).
        weight_init: None keeps the weights given to ``init``; a name from
            `randjax.init.names` (resolved with ``density``, so
            ``"scaled_signed_constant"`` uses fan-in times ``density``) or an
            initializer ``init(key, shape, dtype)`` re-draws them.
        score_init: name or initializer for the scores; the default
            ``"pytorch_default"`` is U(+-1/sqrt(fan_in)), hidden-networks'
            ``kaiming_uniform_(a=sqrt(5))``.
        rounding: ``"round"`` or ``"reference"``, the kept count of
            `randjax.masks.topk_mask`.
        train_others: whether unselected leaves (biases, BatchNorm) train.
        scale_fan: the fraction a ``scaled_*`` ``weight_init`` multiplies
            fan-in by: ``"kept"`` (default, the paper: ``density``) or
            ``"reference"`` (hidden-networks' builder: ``1 - density``, as
            its ``prune_rate`` is the kept fraction there too). They agree at
            density 0.5, the reference's default.
        store_weights: False keeps only each weight's key (two uint32) in
            ``frozen`` and redraws the weight inside ``apply``: less memory,
            the same logits. Needs ``weight_init``.
        output_axis: the kernels' output axis, from which named initializers
            read fan-in: -1 (default, Flax ``(..., in, out)``) or 0 (Equinox /
            PyTorch ``(out, in, ...)``). The masks do not depend on it.

    Returns:
        A `Reparam` whose ``spec`` lets `randjax.export` save it when
        ``weight_init`` is a name.

    Raises:
        ValueError: ``density`` not a Python real in (0, 1]; unknown
            ``scope`` or ``rounding``; ``filter`` not callable; a flag not a
            bool; unknown initializer name (the message lists the names);
            ``output_axis`` not -1 or 0. From ``init``: a selected leaf is not
            floating or is empty; the filter selects nothing; a named initializer
            needs a kernel (ndim >= 2). From ``apply``: a frozen leaf whose
            shape or dtype does not fit its scores, or swapped trees (the
            message names the leaf).

    Example:
        >>> import jax, jax.numpy as jnp, randjax
        >>> params = {"w": jnp.ones((4, 5)), "b": jnp.zeros(5)}
        >>> rp = randjax.edge_popup(0.3)
        >>> trainable, frozen = rp.init(jax.random.key(0), params)
        >>> trainable["b"] is None, frozen["b"].shape
        (True, (5,))
        >>> int((rp.apply(trainable, frozen)["w"] != 0).sum())
        6

    References:
        Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
        Network?", CVPR 2020; allenai/hidden-networks, utils/conv_type.py.
    """
    density = tree.check_density(density)
    tree.check_choice(scope, _SCOPES, "scope")
    tree.check_choice(rounding, masks.ROUNDINGS, "rounding")
    train_others = tree.check_bool(train_others, "train_others")
    filter = tree.check_filter(filter)
    spec = dict(method="edge_popup", density=density, scope=scope, rounding=rounding,
                scale_fan=scale_fan, weight_init=weight_init)
    if output_axis != -1:   # files of the default layout keep their spec
        spec["output_axis"] = output_axis
    named = tuple((argument, value) for argument, value in
                  (("score_init", score_init), ("weight_init", weight_init))
                  if isinstance(value, str))
    weight_init = scaled_init(weight_init, density, scale_fan, output_axis)
    score_init = init_lib.resolve(score_init, "score_init", output_axis=output_axis)
    if score_init is None:
        raise ValueError("score_init must be an initializer name or callable, got None")
    store_weights = tree.check_store_weights(store_weights, weight_init, "edge_popup")

    def init(key, params):
        make = lambda k, leaf: score_init(k, leaf.shape, leaf.dtype)
        return tree.split(key, params, filter=filter, make_trainable=make,
                          weight_init=weight_init, train_others=train_others,
                          method="edge_popup", named=named, store_weights=store_weights)

    def apply(trainable, frozen, *, key=None, train=True):
        del key, train
        paired = tree.pair(trainable, frozen, "edge_popup",
                           frozen_like=tree.weight_like(store_weights),
                           others="trainable" if train_others else "frozen")
        weights = paired.weights(weight_init, store_weights)
        scores = [s for s, _ in paired.selected()]
        return paired.rebuild(
            w * m.astype(w.dtype) for w, m in
            zip(weights, edge_popup_masks(scores, density, scope, rounding)))

    return Reparam(init, apply, spec if isinstance(spec["weight_init"], str) else None)


def scaled_init(weight_init, density: float, scale_fan: str, output_axis: int = -1):
    """Resolves edge-popup's ``weight_init`` (see `edge_popup`'s ``scale_fan``)."""
    init_lib.fan_axes(output_axis)
    tree.check_choice(scale_fan, ("kept", "reference"), "scale_fan")
    fraction = density if scale_fan == "kept" else 1.0 - density
    if (isinstance(weight_init, str) and weight_init.startswith("scaled_")
            and fraction <= 0):
        raise ValueError(
            f"scale_fan='reference' multiplies fan-in by 1 - density = 0 at density "
            f"{density}; use scale_fan='kept' or an unscaled {weight_init!r}")
    return init_lib.resolve(weight_init, "weight_init", fraction, output_axis)


def edge_popup_masks(scores: list[jax.Array], density: float, scope: str = "layer",
                     rounding: str = "round") -> list[jax.Array]:
    """Edge-popup's masks (dtype of each score) for a list of score arrays.

    ``scope="layer"``: ``topk_mask(|s|, density)`` per array; ``"global"``:
    one top-k over all of them, split back. `edge_popup`'s ``apply`` and its
    export codec both use it.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.methods.edge_popup import edge_popup_masks
        >>> [m.tolist() for m in edge_popup_masks(
        ...     [jnp.array([3., -1.]), jnp.array([0.5, -2.])], 0.5, "global")]
        [[1.0, 0.0], [0.0, 1.0]]
    """
    if scope == "layer":
        return [masks.topk_mask(jnp.abs(s), density, rounding=rounding) for s in scores]
    dtype = jnp.result_type(*[s.dtype for s in scores])
    flat = jnp.concatenate([jnp.abs(s).ravel().astype(dtype) for s in scores])
    mask = masks.topk_mask(flat, density, rounding=rounding)
    out, start = [], 0
    for s in scores:
        out.append(mask[start:start + s.size].reshape(s.shape).astype(s.dtype))
        start += s.size
    return out


# ---------------------------------------------------------------------------
# Export: the weight's key and one bit per weight.


def _weight_init(spec):
    return scaled_init(spec["weight_init"], spec["density"], spec["scale_fan"],
                       spec.get("output_axis", -1))


def _encode(spec, selected, key):
    shapes = [t.shape for t, _, _ in selected]
    keys = export.frozen_keys(_weight_init(spec), repr(spec["weight_init"]), shapes,
                              selected, key)
    kept = edge_popup_masks([t for t, _, _ in selected], spec["density"], spec["scope"],
                            spec["rounding"])
    return [(dict(key=kd, mask=np.packbits(np.asarray(mask).ravel() != 0)), shape)
            for kd, mask, shape in zip(keys, kept, shapes)]


def _check_spec(spec):
    export.check_spec(spec, dict(
        density=tree.check_density,
        scope=lambda v: tree.check_choice(v, _SCOPES, "scope"),
        rounding=lambda v: tree.check_choice(v, masks.ROUNDINGS, "rounding"),
        scale_fan=lambda v: tree.check_choice(v, ("kept", "reference"), "scale_fan"),
        weight_init=init_lib.get))
    init_lib.fan_axes(spec.get("output_axis", -1))


def _mask_bits(mask: np.ndarray, n: int, name: str) -> np.ndarray:
    """The ``n`` bits of a packed mask; ValueError if a padding bit is set."""
    bits = np.unpackbits(mask)
    if bits[n:].any():
        raise ValueError(f"array {name!r} has bits set past its {n} entries")
    return bits[:n]


def _decode(spec, arrays):
    del arrays
    _check_spec(spec)
    weight_init = _weight_init(spec)
    key = (np.uint32, export.key_data_shape())

    def rebuild(leaf, stored):
        shape, dtype = tuple(leaf["shape"]), jnp.dtype(leaf["dtype"])
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"header field 'dtype' is {leaf['dtype']!r}, but an "
                             "edge_popup weight is floating")
        n = math.prod(shape)
        export.check_stored(leaf, stored, {"key": key, "mask": (np.uint8, (-(-n // 8),))})
        bits = _mask_bits(stored["mask"], n, f"mask_{leaf['index']}")
        weight = tree.draw(weight_init, jax.random.wrap_key_data(
            jnp.asarray(stored["key"])), shape, dtype)
        return weight * jnp.asarray(bits.reshape(shape), dtype)

    return rebuild


export.register_codec("edge_popup", export.Codec(decode=_decode, encode=_encode))
