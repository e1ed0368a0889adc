"""Reparametrizations: how trainable and frozen pytrees become model parameters.

Every method in randjax that changes *what* is trained (edge-popup scores,
supermask logits, Slot Machine scores, masks under pruning) is a `Reparam`: a
pair of pure functions over parameter pytrees. The model never knows; it only
sees the effective parameters that `apply` rebuilds. This module holds the
type, the leaf filter the methods share, `dense` (the identity
reparametrization of ordinary training), and the weight-freezing methods
`edge_popup` and `supermask`.

Tree layout of `edge_popup` and `supermask`: ``trainable`` and ``frozen``
both have the container structure of ``params``, with ``None`` where a tree
holds nothing (optax and `jax.tree` treat ``None`` as an empty subtree). A
leaf chosen by ``filter`` has its scores (or logits) in ``trainable`` and its
frozen weight in ``frozen``; any other leaf (biases, BatchNorm) sits in
``frozen`` (``None`` in ``trainable``), or in ``trainable`` with
``train_others=True``. So ``trainable["Dense_0"]["kernel"]`` is the score of
that kernel and ``frozen["Dense_0"]["kernel"]`` its weight.

References:
    Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
    CVPR 2020. https://arxiv.org/abs/1911.13299
    Zhou et al., "Deconstructing Lottery Tickets: Zeros, Signs, and the
    Supermask", NeurIPS 2019. https://arxiv.org/abs/1905.01067
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from randjax import init as init_lib
from randjax import masks
from randjax.init import is_kernel  # noqa: F401  (randjax.reparam.is_kernel)

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
        spec: the constructor's name and JSON-serialisable arguments
            (``{"method": "edge_popup", "density": 0.5, ...}``), what
            `randjax.export` needs to rebuild a network; None where a method
            has nothing to export.
    """

    init: Callable[[jax.Array, PyTree], tuple[PyTree, PyTree]]
    apply: Callable[..., PyTree]
    spec: dict | None = None


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


# ---------------------------------------------------------------------------
# Shared machinery of the weight-freezing methods.

_SCOPES = ("layer", "global")
_is_none = lambda x: x is None


def _resolve_init(value, name: str, density: float = 1.0):
    """An initializer from a registered name or a callable (None passes)."""
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        return init_lib.get(value, density=density)
    raise ValueError(
        f"{name} must be None, an initializer name ({init_lib.names()}) or a "
        f"callable init(key, shape, dtype), got {value!r}")


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a Python bool, got {value!r}")
    return value


def _split_params(key, params, filter, make_trainable, weight_init, train_others,
                  method, named=(), store_weights=True):
    """Shared ``init``: per selected leaf, (trainable, weight); others by flag.

    ``make_trainable(key, leaf)`` builds the score/logit array of a selected
    leaf; ``weight_init`` (or None: keep the given weight) re-draws it. With
    ``store_weights=False`` the frozen leaf is the raw data of the weight's
    key instead (`jax.random.key_data`), from which `_weights` redraws it.
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
                leaf = _draw(weight_init, weight_key, leaf.shape, leaf.dtype)
        except ValueError as error:
            raise ValueError(f"{method}: leaf {where}: {error}") from None
        frozen.append(leaf if store_weights else jax.random.key_data(weight_key))
    return treedef.unflatten(trainable), treedef.unflatten(frozen)


def leaf_keys(key: jax.Array, index: int) -> tuple[jax.Array, jax.Array]:
    """``(score_key, weight_key)`` of the ``index``-th selected leaf.

    The weight-freezing methods derive both keys of a leaf from the key given
    to ``init`` and the leaf's position among the selected leaves (flattening
    order), so a weight can be redrawn, or exported, from that key alone.
    """
    score_key, weight_key = jax.random.split(jax.random.fold_in(key, index))
    return score_key, weight_key


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _draw(weight_init, key, shape, dtype):
    # Jitted, so ``init`` (eager) and ``apply`` (inside the caller's jit)
    # draw with the same compiled arithmetic: the weights are bitwise equal.
    return weight_init(key, shape, dtype)


def _weights(pairs, weight_init, store_weights):
    """The frozen weights of the selected ``(trainable, frozen)`` pairs."""
    if store_weights:
        return [w for _, w in pairs]
    return [_draw(weight_init, jax.random.wrap_key_data(kd), s.shape, s.dtype)
            for s, kd in pairs]


def _check_lean(store_weights, weight_init, method):
    store_weights = _check_bool(store_weights, "store_weights")
    if not store_weights and weight_init is None:
        raise ValueError(
            f"{method}: store_weights=False redraws the weights from their key in "
            "apply, so weight_init must be an initializer name or callable, got None")
    return store_weights


def _pair_leaves(trainable, frozen, method):
    """Flattens both trees (None as leaf): (treedef, trainable, frozen) lists."""
    t_leaves, t_def = jax.tree.flatten(trainable, is_leaf=_is_none)
    f_leaves, f_def = jax.tree.flatten(frozen, is_leaf=_is_none)
    if t_def != f_def:
        raise ValueError(
            f"{method}.apply: trainable and frozen must have the structure that "
            f"init returned, got {t_def} and {f_def}")
    return t_def, t_leaves, f_leaves


def _rebuild(treedef, t_leaves, f_leaves, effective):
    """Effective params: selected leaves (both present) from ``effective``."""
    out = []
    for t, f in zip(t_leaves, f_leaves):
        if t is not None and f is not None:
            out.append(effective.pop(0))
        else:
            out.append(f if t is None else t)
    return treedef.unflatten(out)


def _selected(t_leaves, f_leaves):
    return [(t, f) for t, f in zip(t_leaves, f_leaves)
            if t is not None and f is not None]


# ---------------------------------------------------------------------------
# Edge-popup.


def edge_popup(density: float, *, scope: str = "layer",
               filter: Callable[[tuple, Any], bool] = is_kernel,
               weight_init: str | Callable | None = None,
               score_init: str | Callable = "pytorch_default",
               rounding: str = "round", train_others: bool = False,
               scale_fan: str = "kept", store_weights: bool = True) -> Reparam:
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
            (default `is_kernel`, ndim >= 2).
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

    Returns:
        A `Reparam` whose ``spec`` lets `randjax.export` save it when
        ``weight_init`` is a name.

    Raises:
        ValueError: ``density`` not a Python real in (0, 1]; unknown
            ``scope`` or ``rounding``; unknown initializer name (the message
            lists the names). From ``init``: a selected leaf is not floating
            or is empty; the filter selects nothing; a named initializer
            needs a kernel (ndim >= 2).

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
    density = masks.check_density(density)
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    if rounding not in masks._ROUNDINGS:
        raise ValueError(
            f"rounding must be one of {masks._ROUNDINGS}, got {rounding!r}")
    train_others = _check_bool(train_others, "train_others")
    spec = dict(method="edge_popup", density=density, scope=scope, rounding=rounding,
                scale_fan=scale_fan, weight_init=weight_init)
    named = tuple((argument, value) for argument, value in
                  (("score_init", score_init), ("weight_init", weight_init))
                  if isinstance(value, str))
    weight_init = scaled_init(weight_init, density, scale_fan)
    score_init = _resolve_init(score_init, "score_init")
    if score_init is None:
        raise ValueError("score_init must be an initializer name or callable, got None")
    store_weights = _check_lean(store_weights, weight_init, "edge_popup")

    def init(key, params):
        make = lambda k, leaf: score_init(k, leaf.shape, leaf.dtype)
        return _split_params(key, params, filter, make, weight_init, train_others,
                             "edge_popup", named, store_weights)

    def apply(trainable, frozen, *, key=None, train=True):
        del key, train
        treedef, t_leaves, f_leaves = _pair_leaves(trainable, frozen, "edge_popup")
        pairs = _selected(t_leaves, f_leaves)
        weights = _weights(pairs, weight_init, store_weights)
        scores = [s for s, _ in pairs]
        effective = [w * m.astype(w.dtype) for w, m in
                     zip(weights, edge_popup_masks(scores, density, scope, rounding))]
        return _rebuild(treedef, t_leaves, f_leaves, effective)

    return Reparam(init, apply, spec if isinstance(spec["weight_init"], str) else None)


def scaled_init(weight_init, density: float, scale_fan: str):
    """Resolves edge-popup's ``weight_init`` (see `edge_popup`'s ``scale_fan``)."""
    if scale_fan not in ("kept", "reference"):
        raise ValueError(f"scale_fan must be 'kept' or 'reference', got {scale_fan!r}")
    fraction = density if scale_fan == "kept" else 1.0 - density
    if (isinstance(weight_init, str) and weight_init.startswith("scaled_")
            and fraction <= 0):
        raise ValueError(
            f"scale_fan='reference' multiplies fan-in by 1 - density = 0 at density "
            f"{density}; use scale_fan='kept' or an unscaled {weight_init!r}")
    return _resolve_init(weight_init, "weight_init", fraction)


def edge_popup_masks(scores: list[jax.Array], density: float, scope: str = "layer",
                     rounding: str = "round") -> list[jax.Array]:
    """Edge-popup's masks (dtype of each score) for a list of score arrays.

    ``scope="layer"``: ``topk_mask(|s|, density)`` per array; ``"global"``:
    one top-k over all of them, split back. `edge_popup`'s ``apply`` and
    `randjax.export` both use it.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.reparam import edge_popup_masks
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
# Zhou et al.'s supermask.


def supermask(*, logit_init: float = 0.0,
              filter: Callable[[tuple, Any], bool] = is_kernel,
              sample_at_eval: bool = True, dynamic_scaling: bool = False,
              train_others: bool = False,
              weight_init: str | Callable | None = None,
              store_weights: bool = True) -> Reparam:
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

    Trees: as in `edge_popup` (logits in ``trainable``, weights in
    ``frozen``, ``None`` elsewhere).

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
            redraws the weight inside ``apply`` (as `edge_popup`).

    Returns:
        A `Reparam`; its ``apply`` needs ``key`` whenever it samples.

    Raises:
        ValueError: ``logit_init`` not a finite real; a flag not a bool;
            unknown initializer name. From ``init``: as `edge_popup`. From
            ``apply``: ``key`` is None while sampling.

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
    if (isinstance(logit_init, bool) or not isinstance(logit_init, numbers.Real)
            or not math.isfinite(logit_init)):
        raise ValueError(f"logit_init must be a finite Python real, got {logit_init!r}")
    sample_at_eval = _check_bool(sample_at_eval, "sample_at_eval")
    dynamic_scaling = _check_bool(dynamic_scaling, "dynamic_scaling")
    train_others = _check_bool(train_others, "train_others")
    named = (("weight_init", weight_init),) if isinstance(weight_init, str) else ()
    weight_init = _resolve_init(weight_init, "weight_init")
    store_weights = _check_lean(store_weights, weight_init, "supermask")
    logit_init = float(logit_init)

    def init(key, params):
        make = lambda k, leaf: jnp.full(leaf.shape, logit_init, leaf.dtype)
        return _split_params(key, params, filter, make, weight_init, train_others,
                             "supermask", named, store_weights)

    def apply(trainable, frozen, *, key=None, train=True):
        sample = train or sample_at_eval
        if sample and key is None:
            raise ValueError(
                "supermask.apply samples masks (train=True or sample_at_eval=True) "
                "and needs key=jax.random key, got None")
        treedef, t_leaves, f_leaves = _pair_leaves(trainable, frozen, "supermask")
        pairs = _selected(t_leaves, f_leaves)
        effective = []
        weights = _weights(pairs, weight_init, store_weights)
        for i, ((logits, _), w) in enumerate(zip(pairs, weights)):
            if sample:
                mask = masks.bernoulli_mask(jax.random.fold_in(key, i), logits)
            else:
                mask = masks.threshold_mask(logits)
            w_eff = w * mask.astype(w.dtype)
            if dynamic_scaling:
                kept = jnp.maximum(1.0, jnp.sum(lax.stop_gradient(mask), dtype=jnp.float32))
                w_eff = w_eff * (mask.size / kept).astype(w.dtype)
            effective.append(w_eff)
        return _rebuild(treedef, t_leaves, f_leaves, effective)

    return Reparam(init, apply)
