"""Slot Machines: choose one of K random candidate values for every connection.

Each connection of a selected kernel holds K frozen random *options* and K
trainable *scores*; the effective weight is the option whose score wins
(`slot_select`): the largest (``"greedy"``) or a sample from softmax(scores)
(``"sample"``, the paper's probabilistic selection, drawn at every forward
pass). The weights themselves never change, only which option is used.

Tree layout (as `randjax.edge_popup`, see `randjax.tree`): ``trainable`` and
``frozen`` have the container structure of ``params``, with ``None`` where a
tree holds nothing.
A leaf of shape ``S`` chosen by ``filter`` has its scores ``(*S, K)`` in
``trainable`` and its options ``(*S, K)`` (``(K,)`` with
``shared_options=True``; the options key's raw data with
``store_weights=False``) in ``frozen``.

Export: the codec registered as ``"slot_machine"`` stores each leaf as its
options' key and the greedy option's index at ``ceil(log2 K)`` bits per
connection (`pack_indices`; `randjax.export.save`).

Factored mode (``slot_machine(k, mode="factored")`` with `slot_sgd`): under
SGD every score of a connection stays on one line,
``s_k(t) = a(t) s_k(0) + option_k c(t)``, so one trainable number per
connection (``u = c / a``) replaces the K scores, and the trained state is
K-fold smaller; see `slot_machine` and `slot_sgd`.

References:
    Aladago & Torresani, "Slot Machines: Discovering Winning Combinations of
    Random Weights in Neural Networks", ICML 2021.
    https://arxiv.org/abs/2101.06475; code: maxwell-aladago/slot-machines.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from randjax import export, tree
from randjax import init as init_lib
from randjax.reparam import Reparam

__all__ = ["SlotSGDState", "pack_indices", "slot_machine", "slot_select", "slot_sgd",
           "to_dense", "unpack_indices"]

PyTree = Any
_MODES = ("greedy", "sample")
_INITS = ("official", "paper")
_FORMS = ("plain", "factored")  # slot_machine(mode=...)


# ---------------------------------------------------------------------------
# Selection with the paper's score gradient.


def _uniform(key, shape, dtype, low, high):
    """`jax.random.uniform` drawn flat and reshaped.

    With partitionable threefry (JAX's default) a multi-dimensional draw
    compiles several times slower on CPU than a flat one; the values and
    the runtime are the same.
    """
    flat = jax.random.uniform(key, (math.prod(shape),), dtype, low, high)
    return flat.reshape(shape)


# Up to this K the selection is an unrolled loop over the K slices: one fused
# elementwise pass, no index array and no gather, faster on CPU than argmax
# with take_along_axis or a one-hot sum. Above it, the vectorised form keeps
# the program (and compile time) small.
_UNROLL_MAX = 64


def _option(options, k):
    return options[k] if options.ndim == 1 else options[..., k]


def _greedy(options, scores):
    """The option of the largest score per connection (first on ties)."""
    k = scores.shape[-1]
    if k > _UNROLL_MAX:
        index = jnp.argmax(scores, axis=-1)
        if options.ndim == 1:
            return options[index]
        return jnp.take_along_axis(options, index[..., None], axis=-1)[..., 0]
    best, w = scores[..., 0], _option(options, 0)
    for i in range(1, k):
        better = scores[..., i] > best  # strict: the first maximum wins, as argmax
        best = jnp.where(better, scores[..., i], best)
        w = jnp.where(better, _option(options, i), w)
    return w


def _sampled(options, scores, u):
    """Inverse-CDF sample from softmax(scores), ``u`` ~ U[0, 1) per connection.

    One uniform per connection instead of `jax.random.categorical`'s K
    Gumbels: the same distribution from K times fewer random bits, which
    dominate the cost on CPU.
    """
    k = scores.shape[-1]
    dtype = jnp.promote_types(scores.dtype, jnp.float32)
    scores = scores.astype(dtype)
    top = jnp.max(scores, axis=-1)
    if k > _UNROLL_MAX:
        cdf = jnp.cumsum(jnp.exp(scores - top[..., None]), axis=-1)
        index = jnp.sum(cdf[..., :-1] <= (u * cdf[..., -1])[..., None], axis=-1)
        if options.ndim == 1:
            return options[index]
        return jnp.take_along_axis(options, index[..., None], axis=-1)[..., 0]
    weights = [jnp.exp(scores[..., i] - top) for i in range(k)]
    total = weights[0]
    for e in weights[1:]:
        total = total + e
    threshold = u.astype(dtype) * total  # < total, so an option of weight 0 never wins
    # The answer is the last option whose cumulative weight before it is <= threshold.
    cdf, w = weights[0], _option(options, 0)
    for i in range(1, k):
        w = jnp.where(cdf <= threshold, _option(options, i), w)
        cdf = cdf + weights[i]
    return w


@jax.custom_vjp
def _slot(options, scores, u):
    return _greedy(options, scores) if u is None else _sampled(options, scores, u)


def _slot_fwd(options, scores, u):
    # A scalar of the scores' dtype: residuals must be arrays.
    return _slot(options, scores, u), (options, jnp.zeros((), scores.dtype))


def _slot_bwd(residuals, g):
    options, score_dtype = residuals[0], residuals[1].dtype
    # Paper Eq. 9: every score of a connection learns, in proportion to its
    # own option, whichever option was selected. Options are frozen.
    grad_scores = (g[..., None] * options).astype(score_dtype)
    return jnp.zeros_like(options), grad_scores, None


_slot.defvjp(_slot_fwd, _slot_bwd)


def _check_mode(mode, name="mode"):
    return tree.check_choice(mode, _MODES, name)


def slot_select(options: jax.Array, scores: jax.Array, *, mode: str = "greedy",
                key: jax.Array | None = None) -> jax.Array:
    """The option of every connection that its scores select.

    ``mode="greedy"`` takes the option with the largest score (the first on
    ties); ``mode="sample"`` draws the index from ``softmax(scores)`` along
    the last axis with ``key`` (by inverse CDF from one uniform per
    connection; `jax.random.categorical` would draw K Gumbels per connection
    from the same distribution). The selection is
    piecewise constant, so the gradient is the paper's (Eq. 9):
    ``dL/dscores[..., k] = dL/dw[...] * options[..., k]`` for every ``k``,
    selected or not; ``options`` get a zero gradient.

    Args:
        options: the frozen candidate values, shape ``(..., K)``, or ``(K,)``
            shared by every connection.
        scores: their scores, shape ``(..., K)``.
        mode: ``"greedy"`` or ``"sample"``.
        key: a `jax.random` key; needed for ``"sample"``.

    Returns:
        The effective weights, shape ``scores.shape[:-1]``, dtype of
        ``options``; every entry is bitwise one of its options.

    Raises:
        ValueError: unknown ``mode``; ``scores`` is a scalar; ``options``
            neither of the shape of ``scores`` nor ``(K,)``; ``key`` is None
            with ``mode="sample"``.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax import slot_select
        >>> options = jnp.array([[-1., 2., 3.], [4., 5., 6.]])
        >>> scores = jnp.array([[0.1, 0.9, 0.3], [0.7, 0.2, 0.1]])
        >>> slot_select(options, scores)
        Array([2., 4.], dtype=float32)

    References:
        Aladago & Torresani, "Slot Machines", ICML 2021 (Eq. 9, the gradient).
    """
    _check_mode(mode)
    options, scores = jnp.asarray(options), jnp.asarray(scores)
    if scores.ndim < 1:
        raise ValueError("slot_select: scores must have shape (..., K), got a scalar")
    if options.shape != scores.shape and options.shape != scores.shape[-1:]:
        raise ValueError(
            f"slot_select: options must have the shape of scores {scores.shape} or "
            f"{scores.shape[-1:]} (shared), got {options.shape}")
    if mode == "greedy":
        return _slot(options, scores, None)
    if key is None:
        raise ValueError("slot_select: mode='sample' needs key=jax.random key, got None")
    u = _uniform(key, scores.shape[:-1], jnp.promote_types(scores.dtype, jnp.float32),
                 0.0, 1.0)
    return _slot(options, scores, u)


# ---------------------------------------------------------------------------
# The factored selection: K scores on one line per connection.


def _factored_scores(options, initial, offset):
    """``initial + options * offset[..., None]``: the scores up to the factor ``a > 0``."""
    return initial + options * offset[..., None]


@jax.custom_vjp
def _factored(options, initial, offset):
    w = _greedy(options, _factored_scores(options, initial, offset))
    # A NaN offset (slot_sgd's signal that the factor a(t) left (0, inf)) makes
    # the weight NaN, so the loss shows it instead of a silent option 0.
    return jnp.where(jnp.isnan(offset), offset.astype(w.dtype), w)


def _factored_fwd(options, initial, offset):
    return _factored(options, initial, offset), (options, initial,
                                                  jnp.zeros((), offset.dtype))


def _factored_bwd(residuals, g):
    options, initial, offset_dtype = residuals[0], residuals[1], residuals[2].dtype
    # Eq. 9 gives score k the gradient g * option_k: along the line's
    # direction, which moves c by -lr g per unit step; slot_sgd turns g into
    # the update of u = c / a. Options and initial scores are frozen.
    return jnp.zeros_like(options), jnp.zeros_like(initial), g.astype(offset_dtype)


_factored.defvjp(_factored_fwd, _factored_bwd)


# ---------------------------------------------------------------------------
# Initializers of options and scores.


def _bounds(init: str, shape, output_axis: int = -1) -> tuple[float, float]:
    """``(option bound, score bound)`` of a kernel of ``shape`` (without K)."""
    fan_in, fan_out = init_lib.fans(shape, output_axis)
    if init == "official":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return bound, bound
    sigma = math.sqrt(2.0 / (fan_in + fan_out))
    scale = 0.1 if len(shape) == 2 else 1.0  # paper: lambda 0.1 for FC, 1 for conv
    return sigma, scale * sigma


@functools.cache
def _option_init(init: str, k: int, shared: bool, output_axis: int = -1) -> Callable:
    """``f(key, leaf_shape, dtype)`` drawing a leaf's options.

    Cached, so `randjax.tree.draw` (jitted, this function static) compiles
    each shape once and ``init``, ``apply`` and the export codec run the same
    executable.
    """

    def draw(key, shape, dtype=jnp.float32):
        bound, _ = _bounds(init, shape, output_axis)
        size = (k,) if shared else (*shape, k)
        return _uniform(key, size, dtype, -bound, bound)

    return draw


def _scores(init: str, k: int, output_axis: int, key, leaf) -> jax.Array:
    _, bound = _bounds(init, leaf.shape, output_axis)
    return _uniform(key, (*leaf.shape, k), leaf.dtype, 0.0, bound)


@functools.cache
def _score_init(init: str, k: int, output_axis: int = -1) -> Callable:
    """``f(key, leaf_shape, dtype)`` drawing a leaf's initial scores (`_scores`).

    The factored mode's lean frozen tree redraws them with `randjax.tree.draw`.
    """

    def draw(key, shape, dtype=jnp.float32):
        _, bound = _bounds(init, shape, output_axis)
        return _uniform(key, (*shape, k), dtype, 0.0, bound)

    return draw


# ---------------------------------------------------------------------------
# The reparametrization.


def _check_k(k) -> int:
    return tree.check_int(k, "k", minimum=1, what="options per connection")


def slot_machine(k: int, *, selection: str = "greedy", init: str = "official",
                 eval_selection: str | None = None,
                 filter: tree.Filter = tree.is_kernel,
                 shared_options: bool = False, train_others: bool = False,
                 store_weights: bool = True, output_axis: int = -1,
                 mode: str = "plain") -> Reparam:
    """Slot Machines: train scores that pick one of K frozen random options.

    Every selected leaf of shape ``S`` is replaced by ``slot_select(options,
    scores)`` with options and scores of shape ``(*S, K)``. ``selection``
    is used when ``apply(..., train=True)``, ``eval_selection`` when
    ``train=False``; with ``"sample"`` a fresh index is drawn at every call
    from ``key_i = fold_in(key, i)``, ``i`` the leaf's position among the
    selected leaves (the paper samples at evaluation too, the default).

    Initialisation (fans of ``S`` in JAX's convention: dense ``(in, out)``;
    conv ``(h, w, in, out)`` with the receptive field in both fans; with
    ``output_axis=0`` read as Equinox's / PyTorch's ``(out, in, h, w)``):

    * ``init="official"``, what maxwell-aladago/slot-machines does
      (``linear.py`` ``xavier_uniform_``, L31-35; ``conv2d.py``
      ``xavier_uniform_2d``, L64-69): options U(+-b), scores U(0, b),
      ``b = sqrt(6 / (fan_in + fan_out))``.
    * ``init="paper"`` (the paper's text): options U(+-sigma),
      ``sigma = sqrt(2 / (fan_in + fan_out))``, scores U(0, lambda * sigma),
      lambda 0.1 for dense kernels (ndim 2) and 1 otherwise (convs).

    ``apply`` also takes ``selection=`` to override the mode of that call
    (`to_dense` uses it for greedy weights).

    Factored mode (``mode="factored"``, greedy selection, trained with
    `slot_sgd` only). With SGD (momentum, Nesterov, weight decay on the
    scores, any learning-rate schedule) and the straight-through gradient of
    Eq. 9, ``dL/ds_k = g * option_k`` (``g = dL/dw`` of the connection's
    weight), every update of a connection's K scores is a combination of
    ``s(0)`` (through weight decay) and of its options, so by induction
    ``s_k(t) = a(t) s_k(0) + option_k c(t)``, ``a`` one scalar for the whole
    network (1 without weight decay) and ``c`` one number per connection
    (`slot_sgd` gives the recurrences). As ``a > 0``, the greedy choice
    ``argmax_k s_k = argmax_k (s_k(0) + option_k u)`` with ``u = c / a``. So
    ``trainable`` holds ``u`` (shape ``S``, zero at init) instead of the
    scores ``(*S, K)``, its gradient is ``g``, and `slot_sgd` (which tracks
    ``a`` and the momentum's two parts) turns ``g`` into the update of
    ``u``: the same selections as the plain mode under the matching
    ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum,
    nesterov))``, up to float rounding at near ties, with K-fold smaller
    trainable and optimizer states. ``frozen`` holds the options and the
    initial scores, shape ``(2, *S, K)`` (``[0]`` the options, the K shared
    values broadcast with ``shared_options``; ``[1]`` the plain mode's
    initial scores, drawn from the same keys), or with
    ``store_weights=False`` the raw data of both keys (options', then
    scores'), concatenated. Any other optimizer breaks the identity: Adam
    and AdamW rescale every score by its own running moments, so the scores
    leave the line (train them with the plain mode). Sampling needs the
    absolute scale ``a`` of the scores (``softmax(a s(0) + option c)``),
    which ``apply`` does not see, so ``mode="factored"`` refuses
    ``"sample"``. `slot_sgd` treats every trainable leaf as an offset: with
    ``train_others=True`` give the other leaves an ordinary optimizer
    (`optax.partition`). Export stores the greedy indices, as the plain mode (file
    and `randjax.export.load` unchanged; the spec says ``mode``); they are
    computed by a jitted argmax of the same ``s(0) + option * u``, so the
    loaded logits equal ``apply``'s (tested on CPU; a backend that fuses the
    multiply-add differently in two programs may flip an exact near tie).

    Factored mode: Aladago & Torresani's Slot Machines with the update of
    their Eq. 9; the factorisation is this library's (no reference code).

    Args:
        k: Python int >= 2, options per connection (K).
        selection: ``"greedy"`` (argmax) or ``"sample"`` (probabilistic).
        init: ``"official"`` or ``"paper"``, see above.
        eval_selection: the mode at ``train=False``; None: ``selection``.
        filter: ``filter(path, leaf) -> bool`` picks the leaves (default
            `randjax.tree.is_kernel`, ndim >= 2; fans need a kernel).
        shared_options: one set of K options per leaf, shared by all its
            connections (frozen leaf of shape ``(K,)``); scores stay per
            connection.
        train_others: whether unselected leaves (biases, BatchNorm) train.
        store_weights: False keeps only the options' key (raw key data) in
            ``frozen`` and redraws the options inside ``apply`` with the same
            jitted draw: less memory, bitwise the same logits.
        output_axis: the kernels' output axis, from which the fans are
            read: -1 (default, Flax ``(..., in, out)``) or 0 (Equinox /
            PyTorch ``(out, in, ...)``).
        mode: ``"plain"`` (K trainable scores per connection, any optax
            optimizer) or ``"factored"`` (one trainable number per
            connection, greedy selection, `slot_sgd` only; see above).

    Returns:
        A `Reparam` with ``spec = {"method": "slot_machine", "k", "selection",
        "eval_selection", "init", "shared_options"}`` (plus ``"output_axis"``
        when it is not -1 and ``"mode": "factored"`` in factored mode).

    Raises:
        ValueError: ``k`` not an int >= 2 (bools rejected); unknown
            ``selection``, ``eval_selection`` or ``init``; a flag not a bool;
            ``filter`` not callable; ``output_axis`` not -1 or 0; unknown
            ``mode``, or ``mode="factored"`` with a ``"sample"`` selection. From
            ``init``: a selected leaf not
            floating, empty or not a kernel; the filter selects nothing. From
            ``apply``: ``key`` is None while sampling; options (frozen) whose
            shape or dtype does not fit the scores, or swapped trees (the
            message names the leaf).

    Example:
        >>> import jax, jax.numpy as jnp, randjax
        >>> rp = randjax.slot_machine(4)
        >>> trainable, frozen = rp.init(jax.random.key(0), {"w": jnp.ones((3, 5))})
        >>> trainable["w"].shape, frozen["w"].shape
        ((3, 5, 4), (3, 5, 4))
        >>> w = rp.apply(trainable, frozen)["w"]
        >>> bool((w[..., None] == frozen["w"]).any(-1).all())
        True
        >>> fm = randjax.slot_machine(4, mode="factored")
        >>> trainable, frozen = fm.init(jax.random.key(0), {"w": jnp.ones((3, 5))})
        >>> trainable["w"].shape, frozen["w"].shape
        ((3, 5), (2, 3, 5, 4))

    References:
        Aladago & Torresani, "Slot Machines: Discovering Winning Combinations
        of Random Weights in Neural Networks", ICML 2021 (Eq. 9).
    """
    k = tree.check_int(k, "k", minimum=2, what="options per connection; k=1 is the random "
                       "network itself, with nothing to train")
    selection = _check_mode(selection, "selection")
    eval_selection = _check_mode(selection if eval_selection is None else eval_selection,
                                 "eval_selection")
    tree.check_choice(init, _INITS, "init")
    shared_options = tree.check_bool(shared_options, "shared_options")
    train_others = tree.check_bool(train_others, "train_others")
    store_weights = tree.check_bool(store_weights, "store_weights")
    filter = tree.check_filter(filter)
    init_lib.fan_axes(output_axis)
    factored = tree.check_choice(mode, _FORMS, "mode") == "factored"
    if factored and "sample" in (selection, eval_selection):
        raise ValueError(
            "slot_machine(mode='factored') selects greedily only: sampling from "
            "softmax(scores) needs the scores' absolute scale a(t), which slot_sgd "
            "keeps and apply does not see; got selection="
            f"{selection!r}, eval_selection={eval_selection!r} (use mode='plain')")
    option_init = _option_init(init, k, shared_options, output_axis)
    spec = dict(method="slot_machine", k=k, selection=selection,
                eval_selection=eval_selection, init=init, shared_options=shared_options)
    if output_axis != -1:   # files of the default layout keep their spec
        spec["output_axis"] = output_axis
    if factored:            # files of the plain mode keep their spec
        spec["mode"] = "factored"

    def plain_init(key, params):
        make = functools.partial(_scores, init, k, output_axis)
        return tree.split(key, params, filter=filter, make_trainable=make,
                          weight_init=option_init, train_others=train_others,
                          method="slot_machine", named=(("init", init),),
                          store_weights=store_weights)

    def init_fn(key, params):
        if not factored:
            return plain_init(key, params)
        # The plain mode's draws, then u = 0 (s(t) = s(0) at t = 0) and the
        # frozen (options, s(0)) or their keys.
        paired = tree.pair(*plain_init(key, params), "slot_machine")
        trainable, frozen, index = [], [], 0
        for t, f in zip(paired.trainable, paired.frozen):
            if t is None or f is None:
                trainable.append(t)
                frozen.append(f)
                continue
            trainable.append(jnp.zeros(t.shape[:-1], t.dtype))
            if store_weights:
                frozen.append(jnp.stack([jnp.broadcast_to(f, t.shape), t]))
            else:
                score_key = tree.leaf_keys(key, index)[0]
                frozen.append(jnp.concatenate([f, jax.random.key_data(score_key)]))
            index += 1
        return paired.treedef.unflatten(trainable), paired.treedef.unflatten(frozen)

    def factored_like(offset):
        if not store_weights:
            return tree.Expected(None, jnp.unsignedinteger)
        return tree.Expected((2, *jnp.shape(offset), k))

    def options_like(scores):
        if not store_weights:
            return tree.Expected(None, jnp.unsignedinteger)
        return tree.Expected(tuple(jnp.shape(scores)[-1:] if shared_options
                                   else jnp.shape(scores)))

    def apply(trainable, frozen, *, key=None, train=True, selection=None):
        mode = _check_mode(selection, "selection") if selection else (
            spec["selection"] if train else eval_selection)
        if factored and mode == "sample":
            raise ValueError("slot_machine(mode='factored').apply selects greedily only, "
                             "got selection='sample'")
        if mode == "sample" and key is None:
            raise ValueError(
                f"slot_machine.apply samples (selection {mode!r} at train={train}) "
                "and needs key=jax.random key, got None")
        paired = tree.pair(trainable, frozen, "slot_machine",
                           frozen_like=factored_like if factored else options_like,
                           others="trainable" if train_others else "frozen")
        if factored:
            return paired.rebuild(
                _factored(*_factored_frozen(init, k, shared_options, output_axis, u,
                                            stored), u)
                for u, stored in paired.selected())
        effective = []
        for i, (scores, stored) in enumerate(paired.selected()):
            options = stored if store_weights else tree.draw(
                option_init, jax.random.wrap_key_data(stored), scores.shape[:-1],
                scores.dtype)
            leaf_key = jax.random.fold_in(key, i) if mode == "sample" else None
            effective.append(slot_select(options, scores, mode=mode, key=leaf_key))
        return paired.rebuild(effective)

    return Reparam(init_fn, apply, spec)


def _factored_frozen(init: str, k: int, shared: bool, output_axis: int, offset,
                     stored) -> tuple[jax.Array, jax.Array]:
    """``(options, initial scores)`` of a factored leaf: stored, or redrawn from its keys."""
    if jnp.issubdtype(stored.dtype, jnp.floating):
        return stored[0], stored[1]
    option_key, score_key = jnp.reshape(stored, (2, -1))
    shape, dtype = jnp.shape(offset), offset.dtype
    return (tree.draw(_option_init(init, k, shared, output_axis),
                      jax.random.wrap_key_data(option_key), shape, dtype),
            tree.draw(_score_init(init, k, output_axis),
                      jax.random.wrap_key_data(score_key), shape, dtype))


def to_dense(reparam: Reparam, trainable: PyTree, frozen: PyTree) -> PyTree:
    """The greedy effective parameters of a Slot Machine, as a plain pytree.

    For the paper's fine-tuning study: train the returned parameters
    afterwards as an ordinary network (``randjax.dense()`` and SGD).

    Args:
        reparam: a `slot_machine` `Reparam`.
        trainable: its scores tree.
        frozen: its frozen tree.

    Returns:
        ``params`` with every selected leaf the option of largest score
        (whatever ``selection`` the machine trained with).

    Raises:
        ValueError: ``reparam`` is not a `slot_machine`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import randjax
        >>> from randjax.methods.slot_machine import to_dense
        >>> rp = randjax.slot_machine(8, selection="sample")
        >>> trainable, frozen = rp.init(jax.random.key(0), {"w": jnp.ones((2, 3))})
        >>> to_dense(rp, trainable, frozen)["w"].shape
        (2, 3)

    References:
        Aladago & Torresani, "Slot Machines", ICML 2021
        (fine-tuning the selected networks).
    """
    if (reparam.spec or {}).get("method") != "slot_machine":
        raise ValueError(
            f"to_dense needs a slot_machine Reparam, got spec {reparam.spec!r}")
    return reparam.apply(trainable, frozen, train=False, selection="greedy")


# ---------------------------------------------------------------------------
# The factored mode's optimizer.


class SlotSGDState(NamedTuple):
    """The state of `slot_sgd`.

    With ``s_k(t) = a(t) s_k(0) + option_k c(t)`` the plain mode's scores
    and ``m_k(t) = b(t) s_k(0) + option_k M(t)`` their momentum buffer:

    Attributes:
        count: the steps taken (int32), the schedule's argument.
        scale: ``a(t)``, the scores' common factor of ``s(0)`` (a scalar of
            JAX's default float dtype; exactly 1 without weight decay).
        scale_trace: ``b(t)``, the buffer's factor of ``s(0)`` (a scalar).
        trace: ``M(t)``, the buffer's factor of the options: the tree of
            the offsets ``u``, one number per connection.
    """

    count: jax.Array
    scale: jax.Array
    scale_trace: jax.Array
    trace: PyTree


def _check_hyper(value, name: str, *, below: float | None = None, schedule: bool = False):
    """A hyperparameter of `slot_sgd`: a Python real >= 0 (and < ``below``), or
    an array as `optax.inject_hyperparams` passes it (or a schedule)."""
    if (schedule and callable(value)) or isinstance(value, jax.Array | np.ndarray):
        return value
    value = tree.check_real(value, name, low=0.0)
    if below is not None and value >= below:
        raise ValueError(f"{name} must be in [0, {below}), got {value!r}")
    return value


def slot_sgd(learning_rate: float | optax.Schedule, momentum: float = 0.0,
             nesterov: bool = False, weight_decay: float = 0.0
             ) -> optax.GradientTransformation:
    """SGD on the scores of a factored Slot Machine, in one number per connection.

    Trains ``slot_machine(k, mode="factored")``: its ``updates`` are the
    gradients ``g = dL/dw`` of the connections' weights (the offsets'
    straight-through gradient), its ``params`` the offsets ``u``. It moves
    them as ``optax.chain(optax.add_decayed_weights(weight_decay),
    optax.sgd(learning_rate, momentum, nesterov))`` (PyTorch's
    ``SGD(weight_decay=...)``) moves the plain mode's K scores per
    connection under Eq. 9 (``dL/ds_k = g * option_k``). Both the scores
    and optax's momentum buffer stay on a line per connection,
    ``s_k = a s_k(0) + option_k c`` and ``m_k = b s_k(0) + option_k M``
    (``a = 1``, ``b = c = M = 0`` at the start); one step of optax's rule
    ``m' = grad + mu m``, ``s' = s - lr m'`` (Nesterov: ``s' = s - lr (grad
    + mu m')``) with ``grad_k = g option_k + wd s_k`` is, coefficient by
    coefficient::

        M' = mu M + g + wd c        b' = mu b + wd a
        c' = c - lr M'              a' = a - lr b'
        Nesterov: c' = c - lr (g + wd c + mu M'),  a' = a - lr (wd a + mu b')

    The state keeps ``a``, ``b`` (scalars) and ``M`` (per connection); the
    offset is ``u = c / a``, and the update is ``c' / a' - u``. The greedy
    choice ``argmax_k (s_k(0) + option_k u)`` is the plain mode's as long
    as ``a > 0``, which holds while ``learning_rate * weight_decay`` stays
    small enough for the momentum to damp ``a`` without overshoot (for
    heavy-ball momentum, at most ``(1 - sqrt(momentum))**2``; any
    published setting is far below it). Should ``a'`` reach 0 or below,
    the offsets become NaN (and so do the weights and the loss) rather than
    silently selecting the least-scored options. Over very long runs with
    weight decay ``a`` shrinks geometrically and ``u`` grows as ``1 / a``,
    fine in float32 until ``a`` underflows.

    Every leaf of the trees given must be a factored offset: with
    ``train_others=True`` route the other leaves to an ordinary optimizer
    (`optax.partition`). Adam, AdamW and other per-coordinate rescaling
    break the identity (each score is scaled by its own moments): they need
    the plain mode.

    Args:
        learning_rate: a float >= 0 or an optax schedule of the step count.
        momentum: the momentum ``mu`` in [0, 1) (0: plain SGD).
        nesterov: Nesterov momentum (optax's / PyTorch's form).
        weight_decay: ``wd >= 0``, added to the scores' gradient as
            ``wd * s`` (`optax.add_decayed_weights` before `optax.sgd`).

    The numbers may also be scalar arrays, as `optax.inject_hyperparams`
    passes them (unchecked then).

    Returns:
        An `optax.GradientTransformation` with a `SlotSGDState`; its
        ``update`` needs ``params``.

    Raises:
        ValueError: an argument out of range or of the wrong type (when
            built); ``update`` called without ``params``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from randjax.methods.slot_machine import slot_machine, slot_sgd
        >>> rp = slot_machine(4, mode="factored")
        >>> trainable, frozen = rp.init(jax.random.key(0), {"w": jnp.ones((3, 5))})
        >>> tx = slot_sgd(0.1, momentum=0.9, weight_decay=1e-4)
        >>> state = tx.init(trainable)
        >>> loss = lambda t: jnp.sum(rp.apply(t, frozen)["w"])
        >>> updates, state = tx.update(jax.grad(loss)(trainable), state, trainable)
        >>> trainable = optax.apply_updates(trainable, updates)
        >>> trainable["w"].shape, state.trace["w"].shape, float(state.scale) < 1
        ((3, 5), (3, 5), True)

    References:
        Aladago & Torresani, "Slot Machines: Discovering Winning Combinations
        of Random Weights in Neural Networks", ICML 2021 (Eq. 9, SGD with
        momentum on the scores).
    """
    learning_rate = _check_hyper(learning_rate, "learning_rate", schedule=True)
    mu = _check_hyper(momentum, "momentum", below=1.0)
    nesterov = tree.check_bool(nesterov, "nesterov")
    wd = _check_hyper(weight_decay, "weight_decay")

    def init_fn(params):
        # The scalars in JAX's default float: float32, float64 under jax_enable_x64.
        return SlotSGDState(count=jnp.zeros((), jnp.int32), scale=jnp.ones(()),
                            scale_trace=jnp.zeros(()),
                            trace=jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("slot_sgd.update needs params (the offsets u = c / a)")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        lr = jnp.asarray(lr, state.scale.dtype)
        a, b = state.scale, state.scale_trace
        b_new = mu * b + wd * a
        a_new = a - lr * (wd * a + mu * b_new) if nesterov else a - lr * b_new
        positive = a_new > 0

        def step(g, u, m):
            c = a * u
            m_new = mu * m + g + wd * c
            c_new = c - lr * (g + wd * c + mu * m_new) if nesterov else c - lr * m_new
            u_new = jnp.where(positive, c_new / a_new, jnp.nan)
            return (u_new - u).astype(u.dtype), m_new.astype(m.dtype)

        stepped = jax.tree.map(step, updates, params, state.trace)
        outer = jax.tree.structure(updates)
        new_updates, trace = jax.tree.transpose(
            outer, jax.tree.structure((0, 0)), stepped)
        return new_updates, SlotSGDState(
            count=optax.safe_increment(state.count), scale=a_new,
            scale_trace=b_new, trace=trace)

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Compact export of selection indices.


def _index_bits(k) -> int:
    return (_check_k(k) - 1).bit_length()


def pack_indices(indices, k: int) -> tuple[np.ndarray, int]:
    """Packs selection indices in [0, k) at ``ceil(log2 k)`` bits each.

    Args:
        indices: integer array of indices (any shape; flattened in C order).
        k: Python int >= 1, the options per connection.

    Returns:
        ``(packed, bits)``: a uint8 array of ``ceil(n * bits / 8)`` bytes
        (bit ``b`` of index ``i`` is bit ``i * bits + b`` of the stream, in
        little-endian bit order) and ``bits`` (0 for ``k == 1``).

    Raises:
        ValueError: ``k`` not an int >= 1; ``indices`` not integer or out of
            [0, k).

    Example:
        >>> from randjax.methods.slot_machine import pack_indices, unpack_indices
        >>> packed, bits = pack_indices([0, 5, 7, 2], 8)
        >>> bits, packed.nbytes, unpack_indices(packed, 8, 4).tolist()
        (3, 2, [0, 5, 7, 2])

    References:
        Aladago & Torresani, "Slot Machines", ICML 2021 (a network as a seed
        and one choice among K per connection).
    """
    bits = _index_bits(k)
    indices = np.asarray(indices).ravel()
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= k):
        raise ValueError(
            f"indices must lie in [0, {k}), got range [{indices.min()}, {indices.max()}]")
    indices = indices.astype(np.uint64)
    shifts = np.arange(bits, dtype=np.uint64)
    planes = ((indices[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little"), bits


def unpack_indices(packed, k: int, n: int) -> np.ndarray:
    """Inverts `pack_indices`: the ``n`` indices (int64) packed for ``k``.

    Args:
        packed: the uint8 array `pack_indices` returned.
        k: the same ``k``.
        n: the number of indices packed.

    Returns:
        An int64 array of shape ``(n,)``.

    Raises:
        ValueError: ``k`` not an int >= 1; ``n`` negative; ``packed`` not
            uint8 or of the wrong length.

    Example:
        >>> from randjax.methods.slot_machine import pack_indices, unpack_indices
        >>> unpack_indices(pack_indices([1, 0, 1], 2)[0], 2, 3).tolist()
        [1, 0, 1]

    References:
        Aladago & Torresani, "Slot Machines", ICML 2021.
    """
    bits = _index_bits(k)
    n = tree.check_int(n, "n", minimum=0)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise ValueError(f"packed must be a 1-D uint8 array, got {packed.dtype} "
                         f"of shape {packed.shape}")
    expected = -(-n * bits // 8)
    if packed.size != expected:
        raise ValueError(f"packed must hold {expected} bytes for n={n} indices at "
                         f"{bits} bits, got {packed.size}")
    if bits == 0:
        return np.zeros(n, np.int64)
    planes = np.unpackbits(packed, count=n * bits, bitorder="little").reshape(n, bits)
    return (planes.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=1)


# ---------------------------------------------------------------------------
# Export: the options' key and the greedy index of every connection.


def _option_init_of(spec) -> Callable:
    return _option_init(spec["init"], spec["k"], spec["shared_options"],
                        spec.get("output_axis", -1))


def _encode(spec, selected, key):
    if spec["eval_selection"] != "greedy":
        raise ValueError(
            "export.save exports the one network a Slot Machine evaluates, but this "
            f"one samples at evaluation (eval_selection={spec['eval_selection']!r}): "
            "a new network at every call. To export its greedy network, build the "
            "same slot_machine with eval_selection='greedy' (the trees are the same)")
    described = f"slot_machine options (init={spec['init']!r}, k={spec['k']})"
    if spec.get("mode", "plain") == "factored":
        return _encode_factored(spec, selected, key, described)
    shapes = [t.shape[:-1] for t, _, _ in selected]
    keys = export.frozen_keys(_option_init_of(spec), described, shapes, selected, key)
    return [(dict(key=kd, index=pack_indices(
                np.asarray(jnp.argmax(t, axis=-1)).ravel(), spec["k"])[0]), shape)
            for kd, (t, _, _), shape in zip(keys, selected, shapes)]


@jax.jit
def _factored_index(options, initial, offset):
    # Jitted, as apply runs in the caller's jit: the same rounding of the scores.
    return jnp.argmax(_factored_scores(options, initial, offset), axis=-1)


def _encode_factored(spec, selected, key, described):
    """A factored leaf's file is the plain mode's: options key and greedy indices."""
    args = (spec["init"], spec["k"], spec["shared_options"], spec.get("output_axis", -1))
    checked, found = [], []
    for offset, stored, where in selected:
        if bool(jnp.isnan(offset).any()):
            raise ValueError(f"the factored offsets of {where} are NaN (slot_sgd's factor "
                             "a(t) left (0, inf)): there is no greedy network to export")
        options, initial = _factored_frozen(*args, offset, stored)
        # What frozen_keys checks against the key: the options' draw, or its key.
        if jnp.issubdtype(stored.dtype, jnp.floating):
            option_draw = options[(0,) * offset.ndim] if spec["shared_options"] else options
        else:
            option_draw = jnp.reshape(stored, (2, -1))[0]
        checked.append((offset, option_draw, where))
        found.append(np.asarray(_factored_index(options, initial, offset)).ravel())
    shapes = [offset.shape for offset, _, _ in selected]
    keys = export.frozen_keys(_option_init_of(spec), described, shapes, checked, key)
    return [(dict(key=kd, index=pack_indices(index, spec["k"])[0]), shape)
            for kd, index, shape in zip(keys, found, shapes)]


def _check_greedy(value):
    if value != "greedy":
        raise ValueError("a file holds the greedy network (export.save refuses a Slot "
                         f"Machine that samples at evaluation): must be 'greedy', got {value!r}")


def _check_spec(spec):
    export.check_spec(spec, dict(
        k=_check_k, init=lambda v: tree.check_choice(v, _INITS, "init"),
        shared_options=lambda v: tree.check_bool(v, "shared_options"),
        eval_selection=_check_greedy))
    init_lib.fan_axes(spec.get("output_axis", -1))
    tree.check_choice(spec.get("mode", "plain"), _FORMS, "spec field 'mode'")


def _stored_indices(packed, k: int, n: int, name: str) -> np.ndarray:
    """`unpack_indices`, checking that every index is below ``k`` and the padding is clear."""
    if np.unpackbits(packed, bitorder="little")[n * _index_bits(k):].any():
        raise ValueError(f"array {name!r} has bits set past its {n} indices")
    index = unpack_indices(packed, k, n)
    if index.size and index.max() >= k:
        raise ValueError(f"array {name!r} holds option index {index.max()}, but the "
                         f"spec's k={k} allows indices 0..{k - 1}")
    return index


def _decode(spec, arrays):
    del arrays
    _check_spec(spec)
    option_init, k = _option_init_of(spec), spec["k"]
    key = (np.uint32, export.key_data_shape())

    def rebuild(leaf, stored):
        shape, dtype = tuple(leaf["shape"]), jnp.dtype(leaf["dtype"])
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"header field 'dtype' is {leaf['dtype']!r}, but a "
                             "slot_machine weight is floating")
        n = math.prod(shape)
        export.check_stored(leaf, stored, {
            "key": key, "index": (np.uint8, (-(-n * _index_bits(k) // 8),))})
        index = _stored_indices(stored["index"], k, n, f"index_{leaf['index']}").reshape(shape)
        options = np.asarray(tree.draw(option_init, jax.random.wrap_key_data(
            jnp.asarray(stored["key"])), shape, dtype))
        if options.ndim == 1:  # shared_options: K values for every connection
            return jnp.asarray(options[index])
        return jnp.asarray(np.take_along_axis(options, index[..., None], -1)[..., 0])

    return rebuild


export.register_codec("slot_machine", export.Codec(decode=_decode, encode=_encode))
