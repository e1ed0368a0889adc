"""Unstructured pruning of parameter pytrees: targets, scores, masks and densities.

Pure functions, for one-shot and iterative pruning (`randjax.methods.masked`
trains under the masks; ``experiments/prune.py`` runs the rounds):

* `select` picks the **targets**: the parameters with ``None`` at every leaf
  that is not pruned (default: every kernel, biases and BatchNorm never),
  minus name-based exclusions (open_lth leaves LeNet's output layer alone);
* scores of the targets: `magnitude` ``|w|``, `snip` ``|w * g|`` (Lee et al.
  2019) and `random`;
* masks: boolean arrays at the targets, ``None`` elsewhere. `prune_remaining`
  removes a fraction of the weights a mask still keeps, `masks_at_density`
  prunes once to a density, either with one **global** threshold over all
  targets or per layer;
* `apply_masks` zeroes the pruned weights; `report` gives the densities per
  layer, of the targets and of all parameters.

Three rules decide how many weights survive (``count``):

* ``"exact"`` (default): keep ``round((1 - fraction) * remaining)`` (at least
  one), the largest scores, ties broken by flattening order
  (`randjax.masks.keep_largest`): the same count on every run and backend;
* ``"mikler"``: sjmikler/on-pruning-methods-for-neural-networks: keep
  ``score >= np.percentile(scores, 100 * sparsity)`` over all targets (the
  pruned ones scoring 0), interpolated, ties kept;
* ``"open_lth"``: facebookresearch/open_lth ``sparse_global``: prune
  ``ceil(fraction * remaining)`` where ``remaining`` also counts the weights of
  ignored layers (``ignored``), keeping scores strictly above the
  ``n_prune``-th smallest remaining one.

References:
    Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse,
    Trainable Neural Networks", ICLR 2019. https://arxiv.org/abs/1803.03635
    Lee et al., "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", ICLR 2019. https://arxiv.org/abs/1810.02340
    Mikler, "On Pruning Methods for Neural Networks", 2021 (global magnitude
    pruning, GIMP).
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from randjax import masks as masks_lib
from randjax import tree

PyTree = Any

__all__ = ["COUNTS", "MODIFICATIONS", "SCOPES", "Density", "apply_masks", "check_masks",
           "magnitude", "masks_at_density", "modify_masks", "ones", "path_name",
           "prune_remaining", "random", "report", "select", "snip"]

#: Where one threshold applies: over every target, or within each leaf.
SCOPES = ("global", "layer")
#: The kept-count rules of `prune_remaining` (see the module docstring).
COUNTS = ("exact", "mikler", "open_lth")
#: The sparse-mask modifications of `modify_masks`.
MODIFICATIONS = ("shuffle_weights", "reinit", "shuffle_layer", "shuffle_masks_reinit")


def path_name(path) -> str:
    """A key path as ``"Dense_2/kernel"``: the name exclusions are matched against."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _excluded(name: str, pattern: str) -> bool:
    return pattern in name.split("/") or fnmatch.fnmatchcase(name, pattern)


def _check_exclude(exclude) -> tuple[str, ...]:
    """``exclude`` as a tuple of names; ValueError unless a name or names."""
    if isinstance(exclude, str):
        return (exclude,)
    names = tuple(exclude) if isinstance(exclude, Iterable) else None
    if names is None or not all(isinstance(p, str) for p in names):
        raise ValueError(f"exclude must be a leaf name or a sequence of names, got {exclude!r}")
    return names


def select(params: PyTree, *, filter: tree.Filter = tree.is_kernel,
           exclude: Iterable[str] = ()) -> PyTree:
    """The targets of pruning: ``params`` with ``None`` at every other leaf.

    Args:
        params: the model's parameters.
        filter: ``filter(path, leaf) -> bool`` picks the prunable leaves
            (default `randjax.tree.is_kernel`: dense and conv kernels; biases
            and BatchNorm scales are never pruned, as in every reference).
        exclude: names of leaves to leave unpruned: a pattern excludes a leaf
            when it is one of the components of its `path_name` (``"Dense_2"``)
            or matches the whole name (`fnmatch`, ``"Dense_2/k*"``).

    Returns:
        A tree of ``params``' structure: the selected leaves, ``None`` elsewhere.

    Raises:
        ValueError: ``filter`` not callable; ``exclude`` not names; nothing
            is selected; an ``exclude`` pattern matches no selected leaf (a
            typo would silently prune the layer).

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax import pruning
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
        ...           "Dense_1": {"kernel": jnp.ones((2, 1)), "bias": jnp.ones(1)}}
        >>> targets = pruning.select(params, exclude=["Dense_1"])
        >>> targets["Dense_0"]["bias"] is None, targets["Dense_1"]["kernel"] is None
        (True, True)
    """
    filter = tree.check_filter(filter)
    exclude = _check_exclude(exclude)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen = [filter(path, leaf) for path, leaf in leaves]
    names = [path_name(path) for path, _ in leaves]
    for pattern in exclude:
        if not any(c and _excluded(n, pattern) for c, n in zip(chosen, names)):
            raise ValueError(f"exclude pattern {pattern!r} matches no prunable leaf; "
                             f"prunable: {[n for c, n in zip(chosen, names) if c]}")
    keep = [c and not any(_excluded(n, p) for p in exclude) for c, n in zip(chosen, names)]
    if not any(keep):
        raise ValueError("pruning.select: the filter (minus exclude) selects no leaf of "
                         f"params; leaves: {names}")
    return treedef.unflatten([leaf if k else None for (_, leaf), k in zip(leaves, keep)])


def _map(fn, *trees):
    """``fn`` over the leaves present in the first tree (``None`` kept)."""
    return jax.tree.map(lambda x, *rest: None if x is None else fn(x, *rest), *trees,
                        is_leaf=tree.is_none)


def magnitude(targets: PyTree) -> PyTree:
    """``|w|`` of every target: global magnitude pruning's scores."""
    return _map(jnp.abs, targets)


def snip(targets: PyTree, grads: PyTree) -> PyTree:
    """SNIP's connection sensitivity ``|w * g|`` of every target.

    Args:
        targets: the weights at initialisation (`select`).
        grads: the gradient of the unregularised loss w.r.t. the parameters,
            summed over a few batches (BatchNorm in inference mode), as
            Mikler's ``snip_saliences`` computes it; a tree of ``params``'
            structure (entries outside the targets are ignored).

    References:
        Lee et al., "SNIP: Single-shot Network Pruning based on Connection
        Sensitivity", ICLR 2019.
    """
    return _map(lambda w, g: jnp.abs(w * g), targets, grads)


def random(key: jax.Array, targets: PyTree) -> PyTree:
    """Uniform scores in [0, 1): random pruning, the baseline of every study.

    The ``i``-th target (flattening order) draws from ``fold_in(key, i)``.
    """
    leaves, treedef = jax.tree.flatten(targets, is_leaf=tree.is_none)
    out, i = [], 0
    for leaf in leaves:
        if leaf is None:
            out.append(None)
            continue
        out.append(jax.random.uniform(jax.random.fold_in(key, i), leaf.shape, jnp.float32))
        i += 1
    return treedef.unflatten(out)


def ones(targets: PyTree) -> PyTree:
    """Masks keeping every target (the dense network)."""
    return _map(lambda w: jnp.ones(w.shape, bool), targets)


def check_masks(masks: PyTree, params: PyTree, what: str = "masks") -> None:
    """ValueError unless ``masks`` has ``params``' structure and each mask its leaf's shape.

    ``masks`` may hold ``None`` where ``params`` has a leaf (not pruned).
    """
    m_leaves, m_def = jax.tree.flatten(masks, is_leaf=tree.is_none)
    p_leaves, p_def = jax.tree.flatten(params, is_leaf=tree.is_none)
    if m_def != p_def:
        raise ValueError(f"{what} must have the tree structure of the parameters "
                         f"(None where a leaf is not pruned), got {m_def} for {p_def}")
    paths = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        params, is_leaf=tree.is_none)[0]]
    if all(m is None for m in m_leaves):
        raise ValueError(f"{what} hold no mask (every leaf is None)")
    for m, p, name in zip(m_leaves, p_leaves, paths):
        if m is not None and (p is None or np.shape(m) != np.shape(p)):
            raise ValueError(f"{what}: the mask of {name} has shape {np.shape(m)}, "
                             f"the leaf {None if p is None else np.shape(p)}")


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """``params`` with the pruned weights set to exact zeros (``jnp.where``).

    Leaves without a mask (``None``) are returned as they are.
    """
    check_masks(masks, params)
    return jax.tree.map(
        lambda w, m: w if m is None else jnp.where(m, w, jnp.zeros((), w.dtype)),
        params, masks, is_leaf=tree.is_none)


# ---------------------------------------------------------------------------
# Pruning.


def _pairs(scores, masks):
    check_masks(masks, scores, "masks")
    s_leaves, treedef = jax.tree.flatten(scores, is_leaf=tree.is_none)
    m_leaves = jax.tree.leaves(masks, is_leaf=tree.is_none)
    return treedef, s_leaves, m_leaves


def _prune_flat(scores, kept_mask, fraction, count, ignored):
    """The new flat mask of one group (all targets, or one leaf)."""
    remaining = int(jnp.sum(kept_mask))
    if count == "exact":
        kept = max(1, round((1 - fraction) * remaining)) if remaining else 0
        return masks_lib.keep_largest(jnp.where(kept_mask, scores, -jnp.inf), kept)
    if count == "mikler":
        density = (1 - fraction) * remaining / scores.size
        threshold = jnp.percentile(jnp.where(kept_mask, scores, 0), 100 * (1 - density))
        return kept_mask & (scores >= threshold)
    n_prune = math.ceil(fraction * (remaining + ignored))
    if n_prune >= remaining:
        raise ValueError(f"open_lth count: pruning {n_prune} of the {remaining} remaining "
                         "weights leaves none")
    # The (n_prune + 1)-th smallest remaining score is the smallest of the
    # remaining - n_prune largest (a count that compiles once, unlike kth_largest's).
    top = masks_lib.keep_largest(jnp.where(kept_mask, scores, -jnp.inf), remaining - n_prune)
    threshold = jnp.min(jnp.where(top, scores, jnp.inf))
    return kept_mask & (scores > threshold)


def prune_remaining(scores: PyTree, masks: PyTree, fraction: float, *,
                    scope: str = "global", count: str = "exact",
                    ignored: int = 0) -> PyTree:
    """Removes ``fraction`` of the weights ``masks`` keep, the lowest-scoring first.

    One round of iterative pruning: Frankle & Carbin and open_lth remove 20%
    of the remaining weights per round, Mikler 30%. Pruned weights stay
    pruned.

    Args:
        scores: scores of the targets (`magnitude`, `snip`, `random`), ``None``
            at leaves that are not pruned.
        masks: the current masks, of the scores' structure (`ones` at first).
        fraction: Python real in [0, 1): the share of the remaining weights
            to remove.
        scope: ``"global"``: one threshold over every target (Mikler,
            open_lth); ``"layer"``: the same fraction of each leaf.
        count: ``"exact"``, ``"mikler"`` or ``"open_lth"`` (module docstring).
        ignored: weights outside the targets that open_lth's count treats
            as remaining (its ignored output layer); ``count="open_lth"`` only.

    Returns:
        Boolean masks of the scores' structure.

    Raises:
        ValueError: ``fraction`` outside [0, 1); unknown ``scope`` or ``count``;
            masks that do not match the scores; ``ignored`` without open_lth;
            an open_lth round that would prune everything.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax import pruning
        >>> scores = {"a": jnp.array([4.0, 1.0, 3.0]), "b": jnp.array([2.0]), "c": None}
        >>> m = pruning.prune_remaining(scores, pruning.ones(scores), 0.5)
        >>> m["a"].tolist(), m["b"].tolist()
        ([True, False, True], [False])
    """
    fraction = tree.check_real(fraction, "fraction", low=0.0, high=1.0)
    if fraction >= 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    tree.check_choice(scope, SCOPES, "scope")
    tree.check_choice(count, COUNTS, "count")
    ignored = tree.check_int(ignored, "ignored", minimum=0)
    if ignored and count != "open_lth":
        raise ValueError(f"ignored counts weights only for count='open_lth', got count={count!r}")
    treedef, s_leaves, m_leaves = _pairs(scores, masks)
    present = [i for i, s in enumerate(s_leaves) if s is not None]
    groups = [present] if scope == "global" else [[i] for i in present]
    out = list(m_leaves)
    for group in groups:
        dtype = jnp.result_type(*[s_leaves[i].dtype for i in group])
        flat_s = jnp.concatenate([jnp.ravel(s_leaves[i]).astype(dtype) for i in group])
        flat_m = jnp.concatenate([jnp.ravel(m_leaves[i]).astype(bool) for i in group])
        flat = _prune_flat(flat_s, flat_m, fraction, count,
                           ignored if scope == "global" else 0)
        start = 0
        for i in group:
            size = s_leaves[i].size
            out[i] = flat[start:start + size].reshape(s_leaves[i].shape)
            start += size
    return treedef.unflatten(out)


def masks_at_density(scores: PyTree, density: float, *, scope: str = "global",
                     count: str = "exact", ignored: int = 0) -> PyTree:
    """One-shot masks keeping ``density`` of the targets, the highest-scoring.

    ``prune_remaining(scores, ones(scores), 1 - density, ...)``: one-shot
    magnitude pruning after training, SNIP or random pruning at init.

    Raises:
        ValueError: ``density`` outside (0, 1]; as `prune_remaining`.
    """
    density = tree.check_density(density)
    tree.check_choice(scope, SCOPES, "scope")  # before `ones` computes anything
    tree.check_choice(count, COUNTS, "count")
    tree.check_int(ignored, "ignored", minimum=0)
    return prune_remaining(scores, ones(scores), 1.0 - density, scope=scope, count=count,
                           ignored=ignored)


class Density(NamedTuple):
    """How much of a network a set of masks keeps.

    Attributes:
        layers: ``{path_name: kept fraction}`` per masked leaf.
        kept: weights the masks keep.
        prunable: weights under a mask.
        density: ``kept / prunable``.
        density_all: ``(kept + unmasked parameters) / all parameters`` when
            `report` was given the parameters, else None.
    """

    layers: dict
    kept: int
    prunable: int
    density: float
    density_all: float | None


def report(masks: PyTree, params: PyTree | None = None) -> Density:
    """Per-layer, prunable and overall density of ``masks`` (see `Density`).

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax import pruning
        >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(4)}
        >>> d = pruning.report({"w": jnp.array([[True, False], [False, False]]), "b": None},
        ...                    params)
        >>> d.density, d.density_all
        (0.25, 0.625)
    """
    if params is not None:
        check_masks(masks, params)
    leaves = jax.tree_util.tree_flatten_with_path(masks, is_leaf=tree.is_none)[0]
    layers, kept, prunable = {}, 0, 0
    for path, m in leaves:
        if m is None:
            continue
        k = int(np.count_nonzero(np.asarray(m)))
        layers[path_name(path)] = k / m.size
        kept, prunable = kept + k, prunable + m.size
    density_all = None
    if params is not None:
        total = sum(int(np.size(p)) for p in jax.tree.leaves(params))
        density_all = (kept + total - prunable) / total
    return Density(layers, kept, prunable, kept / prunable, density_all)


# ---------------------------------------------------------------------------
# Sparse-mask modifications.


@functools.partial(jax.jit, static_argnums=0)
def _modify_leaf(how: str, key, w, m, fresh):
    """One leaf of `modify_masks`: ``(weights, mask)``, pruned weights zeroed."""
    flat_w, flat_m = w.ravel(), m.ravel()
    if how == "shuffle_weights":
        # The survivors' indices first, in a uniformly random order and in
        # index order: the scatter gives the surviving positions the
        # survivors' values, permuted (what lands on pruned ones is zeroed).
        alive_first = lambda order, alive: order[jnp.argsort(jnp.where(alive, jnp.arange(
            order.size), order.size), stable=True)]
        perm = jax.random.permutation(key, flat_w.size)
        shuffled = alive_first(perm, flat_m[perm])
        in_order = alive_first(jnp.arange(flat_w.size), flat_m)
        flat_w = flat_w.at[in_order].set(flat_w[shuffled])
    elif how == "shuffle_layer":
        perm = jax.random.permutation(key, flat_w.size)
        flat_w, flat_m = flat_w[perm], flat_m[perm]
    elif how == "shuffle_masks_reinit":
        flat_w, flat_m = fresh.ravel(), flat_m[jax.random.permutation(key, flat_m.size)]
    else:  # reinit
        flat_w = fresh.ravel()
    return (jnp.where(flat_m, flat_w, jnp.zeros((), flat_w.dtype)).reshape(w.shape),
            flat_m.reshape(m.shape))


def modify_masks(key: jax.Array, params: PyTree, masks: PyTree, how: str,
                 init_params: PyTree | None = None) -> tuple[PyTree, PyTree]:
    """A pruned network changed so that only its per-layer densities surely survive.

    Mikler's sparse-mask modifications (Sec. 3.3.2, Table 3.1) ask what a
    pruned network's accuracy owes to its surviving values, their places
    and its mask: each is applied per masked leaf, so every layer keeps its
    number of surviving weights, and the result is retrained.

    * ``"shuffle_weights"``: the surviving values are permuted among the
      surviving positions (the mask stays);
    * ``"reinit"``: every parameter is taken from ``init_params`` (a fresh
      initialisation, biases and BatchNorm included), under the same masks;
    * ``"shuffle_layer"``: one permutation of each layer moves masks and
      values together (the surviving values move with their mask bits);
    * ``"shuffle_masks_reinit"``: each layer's mask is permuted and every
      parameter comes from ``init_params``.

    Leaves without a mask (biases, BatchNorm) are kept, or taken from
    ``init_params`` by the two re-initialising modifications. Pruned weights
    are exact zeros in the result. Leaf ``i`` (in flattening order) draws its
    permutation from ``fold_in(key, i)``; each leaf's change is one jitted
    program.

    Args:
        key: a `jax.random` key.
        params: the pruned network's parameters.
        masks: its masks (booleans at the pruned leaves, ``None`` elsewhere).
        how: one of `MODIFICATIONS`.
        init_params: freshly initialised parameters of the same structure,
            for ``"reinit"`` and ``"shuffle_masks_reinit"`` only.

    Returns:
        ``(params, masks)``: train them with ``randjax.masked(masks)``.

    Raises:
        ValueError: an unknown ``how``; masks that do not match ``params``;
            ``init_params`` missing for a re-initialising modification,
            given to a shuffling one, or of another structure or shapes.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from randjax import pruning
        >>> params = {"w": jnp.array([1.0, 2.0, 3.0, 4.0]), "b": jnp.ones(1)}
        >>> masks = {"w": jnp.array([True, False, True, True]), "b": None}
        >>> new, same = pruning.modify_masks(jax.random.key(0), params, masks,
        ...                                  "shuffle_weights")
        >>> sorted(new["w"][same["w"]].tolist()), same["w"].tolist()
        ([1.0, 3.0, 4.0], [True, False, True, True])

    References:
        Mikler, "On Pruning Methods for Neural Networks", 2021, Sec. 3.3.2
        (``modules/pruning/pruning_utils.py``: ``shuffle_weights``,
        ``shuffle_layers``, ``shuffle_masks``).
    """
    tree.check_choice(how, MODIFICATIONS, "how")
    check_masks(masks, params)
    reinit = how in ("reinit", "shuffle_masks_reinit")
    if reinit and init_params is None:
        raise ValueError(f"modify_masks: how={how!r} needs init_params (a fresh initialisation)")
    if not reinit and init_params is not None:
        raise ValueError(f"modify_masks: how={how!r} keeps the trained values; "
                         "init_params would be ignored")
    p_leaves, treedef = jax.tree.flatten(params)
    m_leaves = jax.tree.leaves(masks, is_leaf=tree.is_none)
    if reinit:
        f_leaves, f_def = jax.tree.flatten(init_params)
        if f_def != treedef or any(np.shape(f) != np.shape(p)
                                   for f, p in zip(f_leaves, p_leaves)):
            raise ValueError("modify_masks: init_params must have the parameters' structure "
                             f"and shapes, got {f_def} for {treedef}")
    else:
        f_leaves = p_leaves
    new_p, new_m, index = [], [], 0
    for p, m, f in zip(p_leaves, m_leaves, f_leaves):
        if m is None:
            new_p.append(jnp.asarray(f))
            new_m.append(None)
            continue
        w, mask = _modify_leaf(how, jax.random.fold_in(key, index), jnp.asarray(p),
                               jnp.asarray(m, bool), jnp.asarray(f, jnp.asarray(p).dtype))
        index += 1
        new_p.append(w)
        new_m.append(mask)
    return treedef.unflatten(new_p), treedef.unflatten(new_m)
