"""Training Optimal Masks (TOM): learn which weights of a pretrained network to keep.

Mikler's thesis ("On Pruning Methods for Neural Networks", 2021, Sec. 3.3.1)
finds masks by gradient descent instead of by magnitude:

1. train the dense network for a short part (10%) of its schedule, then
   freeze every parameter;
2. train one logit ``b`` per kernel weight (`tom`): each step samples the
   masks ``c ~ Bernoulli(sigmoid(b))``, the network runs with ``w * c``,
   and the gradient ``dL/dc`` is applied to ``b`` as it is (straight
   through, `randjax.masks.bernoulli_mask` with ``gradient="identity"``),
   clipped to ``[-0.1, 0.1]``, with a penalty on the masks pushing the
   density down; ``b`` is kept in ``[-15, 15]`` (`tom_gradients`);
3. keep exactly the top ``density`` of the logits (`final_masks`; the
   evaluation of step 2 uses the same masks);
4. retrain the weights under those masks for the full schedule
   (`randjax.masked`), from the weights of step 1.

TOM's claim is the accuracy of iterative pruning at the cost of one-shot
pruning: the masks take one short training run, not one per round.

How it differs from Zhou et al.'s supermask (`randjax.supermask`), which
also trains Bernoulli logits over frozen weights: the weights are briefly
trained, not random; the gradient reaches ``b`` without the sigmoid's slope;
it is clipped and ``b`` is bounded; a penalty lowers the density; the mask
that counts is the top ``density`` of ``b``, not a sample or ``b > 0``; and
the weights are retrained under it.

Mikler's code (``experimental/newer_trune_workspace.py``, commit 2d48c44 of
sjmikler/on-pruning-methods-for-neural-networks) differs from the text; its
choices are options here: ``logit_init=4.0`` (the default: the text gives
no value), the gradient divided by ``|w|`` (``divide_by_weight=True``),
clipping at ``0.1 / learning_rate``, i.e. at most 0.1 per step before
momentum (``clip=0.1 / lr``), the penalty ``1e-7 * sum(b)`` (whose gradient
is ``penalty="l1"``'s), SGD with rate 10, momentum 0.9 and Nesterov, and
8,000 mask steps (the experiment's config). Its BatchNorm statistics keep
updating while masks train, as `randjax.fit` does in training mode.

References:
    Mikler, "On Pruning Methods for Neural Networks", 2021, Sec. 3.3.1
    (sjmikler/on-pruning-methods-for-neural-networks).
    Zhou et al., "Deconstructing Lottery Tickets: Zeros, Signs, and the
    Supermask", NeurIPS 2019. https://arxiv.org/abs/1905.01067
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from randjax import masks, pruning, tree
from randjax.reparam import Reparam

__all__ = ["PENALTIES", "TomState", "expected_density", "final_masks", "tom", "tom_gradients"]

PyTree = Any

#: The penalties on the masks of `tom_gradients`.
PENALTIES = ("l1", "l2", "none")


def _kept_counts(sizes: list[int], density: float) -> list[int]:
    """`randjax.pruning`'s exact count: ``max(1, round(density * n))``."""
    return [max(1, round(density * n)) for n in sizes]


def _top_with_ties_by(scores: jax.Array, second: jax.Array | None, k: int) -> jax.Array:
    """The ``k`` largest ``scores``; among those tied at the threshold, the largest ``second``."""
    if second is None:
        return masks.keep_largest(scores, k)
    threshold = masks.kth_largest(scores, k)
    above = scores > threshold
    tied = jnp.where(scores == threshold, second, -jnp.inf)
    return above | masks.keep_largest(tied, k - jnp.sum(above, dtype=jnp.int32))


def final_masks(logits: PyTree, density: float, *, scope: str = "global",
                weights: PyTree = None) -> PyTree:
    """Masks keeping exactly the top ``density`` of the logits (TOM's step 3).

    The count is `randjax.pruning`'s ``"exact"`` rule (``max(1,
    round(density * n))``), over all logits (``scope="global"``, as Mikler
    prunes) or per leaf (``"layer"``). Logits tie often: the bound clips
    many to exactly ``+-bound``, and briefly trained ones barely leave
    their initial value. Among the logits tied at the threshold, those of
    the largest ``|w|`` are kept when ``weights`` are given (magnitude
    pruning's choice; `tom` and the pruning driver pass them), else the
    first in flattening order; then the masks equal
    ``pruning.masks_at_density(logits, density, scope=scope)``. Unlike that
    function this jits (the counts come from the shapes).

    Args:
        logits: the logits of `tom`'s trainable tree (``None`` elsewhere).
        density: the kept fraction, in (0, 1].
        scope: ``"global"`` or ``"layer"``.
        weights: the weights the logits mask (`tom`'s frozen tree), for the
            ties; entries where ``logits`` has ``None`` are ignored.

    Returns:
        Boolean masks at the logits' leaves, ``None`` elsewhere: what
        `randjax.masked` trains under.

    Raises:
        ValueError: ``density`` outside (0, 1]; an unknown ``scope``; no
            logit; ``weights`` of another structure or shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.methods.tom import final_masks
        >>> logits = {"a": jnp.array([3.0, -1.0, 2.0]), "b": jnp.array([0.5]), "c": None}
        >>> m = final_masks(logits, 0.5)
        >>> m["a"].tolist(), m["b"].tolist(), m["c"]
        ([True, False, True], [False], None)
        >>> tied = {"w": jnp.array([15.0, 15.0, 15.0, -15.0])}
        >>> final_masks(tied, 0.5, weights={"w": jnp.array([0.1, -0.9, 0.5, 2.0])})["w"].tolist()
        [False, True, True, False]
    """
    density = tree.check_density(density)
    tree.check_choice(scope, pruning.SCOPES, "scope")
    leaves, treedef = jax.tree.flatten(logits, is_leaf=tree.is_none)
    present = [i for i, leaf in enumerate(leaves) if leaf is not None]
    if not present:
        raise ValueError("final_masks: the logits hold no array (every leaf is None)")
    magnitudes = [None] * len(leaves)
    if weights is not None:
        w_leaves = treedef.flatten_up_to(weights)
        for i in present:
            if np.shape(w_leaves[i]) != np.shape(leaves[i]):
                raise ValueError(f"final_masks: a weight of shape {np.shape(w_leaves[i])} "
                                 f"for logits of shape {np.shape(leaves[i])}")
            magnitudes[i] = jnp.abs(jnp.ravel(w_leaves[i])).astype(jnp.float32)
    out = list(leaves)
    groups = [present] if scope == "global" else [[i] for i in present]
    for group in groups:
        flat = jnp.concatenate([jnp.ravel(leaves[i]).astype(jnp.float32) for i in group])
        second = (None if weights is None
                  else jnp.concatenate([magnitudes[i] for i in group]))
        (k,) = _kept_counts([flat.size], density)
        kept, start = _top_with_ties_by(flat, second, k), 0
        for i in group:
            out[i] = kept[start:start + leaves[i].size].reshape(leaves[i].shape)
            start += leaves[i].size
    return treedef.unflatten(out)


def expected_density(logits: PyTree) -> jax.Array:
    """The masks' expected density, ``mean(sigmoid(b))`` over all logits.

    The penalty of `tom_gradients` lowers it; the final masks keep the top
    ``density`` whatever it is, but they fit the trained network best when
    mask training has brought it near ``density`` (raise ``penalty_scale``
    if it stays high).
    """
    leaves = [b for b in jax.tree.leaves(logits) if b is not None]
    if not leaves:
        raise ValueError("expected_density: the logits hold no array")
    total = sum(jnp.sum(jax.nn.sigmoid(b.astype(jnp.float32))) for b in leaves)
    return total / sum(b.size for b in leaves)


def tom(density: float, *, logit_init: float = 4.0, scope: str = "global",
        filter: tree.Filter = tree.is_kernel, bits: str = "hash") -> Reparam:
    """TOM's mask training: Bernoulli mask logits over frozen, briefly trained weights.

    Each selected weight ``w`` gets a trainable logit ``b`` (``logit_init``
    at init: ``sigmoid(4) = 0.98``, nearly dense). In training ``apply``
    samples ``c = bernoulli_mask(fold_in(key, i), b, gradient="identity")``
    for the ``i``-th selected leaf and returns ``w * c``: ``dL/dc`` reaches
    ``b`` unchanged. The samples' uniform bits come from
    `randjax.masks.hash_bits` by default: TOM draws a mask for every weight
    at every step, which with threefry costs more than a small network's
    step itself (``python -m experiments.benchmark --methods=dense,tom
    --tom_bits=threefry`` times it; ``bits="threefry"`` is
    `jax.random.bernoulli`'s generator).
    At evaluation (``train=False``) the mask is `final_masks` of the logits:
    exactly the top ``density`` of them. Every other parameter (biases,
    BatchNorm) is frozen. Train the logits with
    `tom_gradients` in front of the optimizer.

    Args:
        density: the kept fraction of the final masks, in (0, 1].
        logit_init: Python real, every logit's initial value.
        scope: ``"global"`` (one ranking of all logits, the default, as
            Mikler's global pruning) or ``"layer"`` (each leaf keeps
            ``density``).
        filter: ``filter(path, leaf) -> bool`` picks the masked leaves
            (default: kernels).
        bits: ``"hash"`` or ``"threefry"``: the samples' uniform bits
            (`randjax.masks.bernoulli_mask`).

    Returns:
        A `Reparam`; ``init(key, params)`` gives ``(logits, weights)``;
        ``apply`` needs ``key`` when ``train``.

    Raises:
        ValueError: ``density`` outside (0, 1]; ``logit_init`` not a finite
            real; unknown ``scope`` or ``bits``. From ``init``: as
            `randjax.supermask`.
            From ``apply``: ``key`` is None in training; trees that do not
            pair up, as `randjax.edge_popup`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from randjax.methods.tom import tom
        >>> rp = tom(0.5)
        >>> logits, weights = rp.init(jax.random.key(0), {"w": jnp.arange(1.0, 5.0).reshape(2, 2)})
        >>> logits = {"w": jnp.array([[4.0, -2.0], [1.0, 3.0]])}
        >>> rp.apply(logits, weights, train=False)["w"].tolist()
        [[1.0, 0.0], [0.0, 4.0]]

    References:
        Mikler, "On Pruning Methods for Neural Networks", 2021, Sec. 3.3.1.
    """
    density = tree.check_density(density)
    logit_init = tree.check_real(logit_init, "logit_init")
    tree.check_choice(scope, pruning.SCOPES, "scope")
    filter = tree.check_filter(filter)
    tree.check_choice(bits, masks.BITS, "bits")

    def init(key, params):
        make = lambda k, leaf: jnp.full(leaf.shape, logit_init, leaf.dtype)
        return tree.split(key, params, filter=filter, make_trainable=make, weight_init=None,
                          train_others=False, method="tom")

    def apply(trainable, frozen, *, key=None, train=True):
        paired = tree.pair(trainable, frozen, "tom", frozen_like=tree.weight_like(True),
                           others="frozen")
        selected = paired.selected()
        if train:
            if key is None:
                raise ValueError("tom.apply samples masks in training and needs "
                                 "key=jax.random key, got None")
            chosen = [masks.bernoulli_mask(jax.random.fold_in(key, i), b, gradient="identity",
                                           bits=bits)
                      for i, (b, _) in enumerate(selected)]
        else:
            kept = jax.tree.leaves(final_masks([b for b, _ in selected], density, scope=scope,
                                               weights=[w for _, w in selected]))
            chosen = [m.astype(b.dtype) for m, (b, _) in zip(kept, selected)]
        return paired.rebuild([w * c.astype(w.dtype) for c, (_, w) in zip(chosen, selected)])

    return Reparam(init, apply)


class TomState(NamedTuple):
    """State of `tom_gradients`.

    Attributes:
        bound: the logits' bound; `project` (applied by
            `randjax.apply_updates` after every update) clips the logits
            to ``[-bound, bound]``.
    """

    bound: jax.Array

    def project(self, params: PyTree) -> PyTree:
        """The logits clipped to ``[-bound, bound]`` (``None`` leaves kept)."""
        return jax.tree.map(lambda b: None if b is None else jnp.clip(b, -self.bound, self.bound),
                            params, is_leaf=tree.is_none)


def tom_gradients(*, clip: float | None = 0.1, penalty: str = "l1",
                  penalty_scale: float = 1e-7, divide_by_weight: bool = False,
                  weights: PyTree = None, bound: float = 15.0
                  ) -> optax.GradientTransformation:
    """TOM's gradient of the logits: clipped, penalised, and the logits bounded.

    Put it first in the chain, before the optimizer of the logits (the
    code's: ``optax.sgd(10.0, momentum=0.9, nesterov=True)``), and update
    with `randjax.apply_updates` (as `randjax.fit` does) so the logits are
    clipped to ``[-bound, bound]`` after every update. The gradient of each
    logit becomes::

        clip(g / |w| if divide_by_weight else g, -clip, clip) + penalty'

    where ``g = dL/dc`` (`tom` passes it straight through) and the
    penalty's gradient is ``penalty_scale`` for ``"l1"`` (``scale * sum(c)``
    through the same straight-through estimator; Mikler's code's
    ``1e-7 * sum(b)`` has the same gradient), ``2 * penalty_scale *
    sigmoid(b)`` for ``"l2"`` (``scale * sum(c ** 2)``, whose straight-through
    gradient ``2 * scale * c`` is taken at its expectation, the sample being
    the model's) and 0 for ``"none"``. A weight that is exactly 0 gets
    gradient 0 with ``divide_by_weight`` (its mask changes nothing).

    Args:
        clip: the bound of the loss' gradient per logit (the thesis: 0.1;
            Mikler's code: ``0.1 / learning_rate``), or None for no clipping.
        penalty: ``"l1"``, ``"l2"`` or ``"none"``.
        penalty_scale: the penalty's coefficient, >= 0. The code's 1e-7
            (VGG-19, 8,000 steps) barely moves a small network's logits in a
            short run: choose it so that `expected_density` falls near the
            target density within the mask-training budget (LeNet on digits:
            1e-3 with the code's SGD at rate 10 for ~200 steps).
        divide_by_weight: divide the gradient by ``|w|`` (Mikler's code).
        weights: `tom`'s frozen tree (the weights), needed by
            ``divide_by_weight``.
        bound: the logits' bound, > 0 (15 in both thesis and code).

    Returns:
        An `optax.GradientTransformation` whose state is a `TomState`.

    Raises:
        ValueError: a non-positive ``clip`` or ``bound``, a negative
            ``penalty_scale``, an unknown ``penalty``, ``divide_by_weight``
            without ``weights``. From ``update``: gradients whose tree does
            not match ``weights``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from randjax.methods.tom import tom_gradients
        >>> tx = tom_gradients(clip=0.1, penalty="l1", penalty_scale=0.01)
        >>> logits = {"w": jnp.array([1.0, 2.0])}
        >>> updates, _ = tx.update({"w": jnp.array([5.0, -0.05])}, tx.init(logits), logits)
        >>> [round(float(u), 4) for u in updates["w"]]
        [0.11, -0.04]

    References:
        Mikler, "On Pruning Methods for Neural Networks", 2021, Sec. 3.3.1.
    """
    if clip is not None:
        clip = tree.check_real(clip, "clip", low=0.0)
        if clip <= 0:
            raise ValueError(f"clip must be positive (or None), got {clip}")
    tree.check_choice(penalty, PENALTIES, "penalty")
    penalty_scale = tree.check_real(penalty_scale, "penalty_scale", low=0.0)
    divide_by_weight = tree.check_bool(divide_by_weight, "divide_by_weight")
    bound = tree.check_real(bound, "bound", low=0.0)
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if divide_by_weight and weights is None:
        raise ValueError("divide_by_weight=True needs weights= (tom's frozen tree)")

    def one(g, b, w):
        if g is None:
            return None
        if divide_by_weight:
            magnitude = jnp.abs(w).astype(g.dtype)
            g = jnp.where(magnitude > 0, g / jnp.where(magnitude > 0, magnitude, 1), 0)
        if clip is not None:
            g = jnp.clip(g, -clip, clip)
        if penalty == "l1":
            g = g + penalty_scale
        elif penalty == "l2":
            g = g + 2 * penalty_scale * jax.nn.sigmoid(b).astype(g.dtype)
        return g

    def init_fn(params):
        del params
        return TomState(jnp.asarray(bound, jnp.float32))

    def update_fn(updates, state, params=None):
        if penalty == "l2" and params is None:
            raise ValueError("tom_gradients with penalty='l2' needs params (the logits)")
        logits = updates if params is None else params
        if divide_by_weight:
            try:
                out = jax.tree.map(one, updates, logits, weights, is_leaf=tree.is_none)
            except ValueError as error:
                raise ValueError("tom_gradients: the gradients' tree does not match "
                                 f"weights' (tom's frozen tree): {error}") from None
        else:
            out = jax.tree.map(lambda g, b: one(g, b, None), updates, logits,
                               is_leaf=tree.is_none)
        return out, state

    return optax.GradientTransformation(init_fn, update_fn)
