"""Measurements of trained networks, as the papers make them.

Pure functions of parameters (and of their history), for plots and studies.
A layer's *units* are the slices of its kernel along ``axis`` (default the
last: a Dense kernel ``(in, out)`` has ``out`` units, a conv kernel
``(h, w, in, out)`` has ``out`` filters; Equinox and PyTorch layouts put
them first, ``axis=0``); each unit is the vector of its incoming weights.

* `frame_potential`, `leave_one_out_fp`: how correlated a layer's units are
  (Heitmann, Sec. 2), the criterion of `randjax.methods.structured`;
* `low_rank`, `project_update`, `spectrum`: subspaces and empirical spectral
  densities (Nagarajan & Kolter 2019; Martin & Mahoney 2018);
* `cluster_angles`: how tightly units cluster (Brutzkus & Globerson 2019);
* `weight_profile`, `distance_from_init`, `ranking_distance`, `cycles`:
  how training moves weights (Qiu & Suda 2020; Neyshabur et al. 2018);
* `dynamics_hook`: all of these per layer after every epoch of `randjax.fit`.

References:
    Heitmann, "Sources of Redundancy in Neural Networks", EPFL semester
    project (jheitmann/Neural-net-pruning).
    Nagarajan & Kolter, "Generalization in Deep Networks: The Role of
    Distance from Initialization", 2019. https://arxiv.org/abs/1901.01672
    Martin & Mahoney, "Implicit Self-Regularization in Deep Neural
    Networks", 2018. https://arxiv.org/abs/1810.01075
    Brutzkus & Globerson, "Why do Larger Models Generalize Better? A
    Theoretical Perspective via the XOR Problem", ICML 2019.
    Neyshabur et al., "Towards Understanding the Role of
    Over-Parametrization in Generalization", 2018.
    https://arxiv.org/abs/1805.12076
    Qiu & Suda, "Train by Reconnect: Decoupling Locations of Weights from
    their Values", NeurIPS 2020. https://arxiv.org/abs/2003.02570
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from randjax import masks, permute, tree
from randjax.pruning import path_name

__all__ = [
    "cluster_angles", "cycles", "distance_from_init", "dynamics_hook", "frame_potential",
    "gram", "leave_one_out_fp", "low_rank", "project_update", "ranking_distance",
    "spectrum", "unit_vectors", "weight_profile",
]

_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------- #
# Units and their correlation
# --------------------------------------------------------------------------- #

def unit_vectors(w: jax.typing.ArrayLike, *, axis: int = -1) -> jax.Array:
    """A kernel as the ``(N, D)`` matrix of its ``N`` units' incoming weights.

    Args:
        w: a kernel with ndim >= 2.
        axis: the units' (output) axis: -1 (default) for Flax's
            ``(..., in, out)``, 0 for Equinox's / PyTorch's ``(out, in, ...)``.

    Returns:
        ``moveaxis(w, axis, 0).reshape(N, -1)``: row ``i`` is unit ``i``'s
        weight vector (a conv filter flattened over ``(h, w, in)``).

    Raises:
        ValueError: ``w`` has fewer than 2 dimensions or ``axis`` is out of range.
    """
    w = jnp.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"a layer's units need a kernel with ndim >= 2, got shape {w.shape}")
    if not -w.ndim <= axis < w.ndim:
        raise ValueError(f"axis {axis} is out of range for a kernel of shape {w.shape}")
    w = jnp.moveaxis(w, axis, 0)
    return w.reshape(w.shape[0], -1)


def gram(w: jax.typing.ArrayLike, *, axis: int = -1, normalize: bool = True) -> jax.Array:
    """The ``N x N`` Gram matrix of the units, ``G = V V^T``.

    With ``normalize`` each unit's vector is first scaled to unit L2 norm
    (PyTorch's ``F.normalize``: a zero vector stays zero), so ``G`` holds the
    cosines between units.
    """
    v = unit_vectors(w, axis=axis)
    if normalize:
        norms = jnp.linalg.norm(v, axis=1, keepdims=True)
        v = v / jnp.maximum(norms, 1e-12)
    return jnp.matmul(v, v.T, precision=_HIGHEST)


def frame_potential(w: jax.typing.ArrayLike, *, axis: int = -1,
                    normalize: bool = True) -> jax.Array:
    """The frame potential of a layer: ``||G||_F^2 / N^2``.

    ``G`` is the units' Gram matrix (`gram`, diagonal included), ``N`` the
    number of units, pruned (zero) ones included: a zero unit adds nothing
    to ``||G||_F^2`` but still counts in ``N``, as in the reference. With
    unit-norm vectors the potential lies in ``[1/N, 1]``: ``1/N`` for
    orthogonal units, 1 when all are parallel.

    Args:
        w: a kernel with ndim >= 2.
        axis: the units' axis (default last: flax's ``(..., in, out)``; 0 for
            Equinox / PyTorch ``(out, in, ...)``).
        normalize: L2-normalise the units first (the reference's default;
            ``False`` is its ``fp_mod`` variant).

    Returns:
        A float32 scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.analysis import frame_potential
        >>> float(frame_potential(jnp.eye(4)))  # 4 orthogonal units
        0.25

    References:
        Heitmann, "Sources of Redundancy in Neural Networks", Sec. 2
        (``models.py::frame_potential``); Benedetto & Fickus, "Finite
        Normalized Tight Frames", 2003.
    """
    g = gram(w, axis=axis, normalize=normalize)
    return jnp.sum(g * g) / g.shape[0] ** 2


def leave_one_out_fp(w: jax.typing.ArrayLike, *, axis: int = -1,
                     normalize: bool = True) -> jax.Array:
    """The frame potential of the layer with each unit zeroed in turn.

    Entry ``i`` is ``frame_potential`` (same ``N``) of ``w`` with unit ``i``
    zeroed: the reference's "all but one", computed from one Gram matrix as
    ``(||G||_F^2 - 2 sum_j G_ij^2 + G_ii^2) / N^2`` in ``O(N^2)`` instead of
    ``N`` Gram matrices. A unit that is already zero leaves the potential
    unchanged.

    Args:
        w: a kernel with ndim >= 2.
        axis: the units' axis.
        normalize: as in `frame_potential`.

    Returns:
        A float32 vector of length ``N``.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.analysis import leave_one_out_fp
        >>> w = jnp.array([[1., 1., 0.], [0., 0., 1.]])  # units 0 and 1 parallel
        >>> [round(float(v), 4) for v in leave_one_out_fp(w)]
        [0.2222, 0.2222, 0.4444]

    References:
        Heitmann, "Sources of Redundancy in Neural Networks", Sec. 3
        (``models.py::selective_correlation``).
    """
    g2 = jnp.square(gram(w, axis=axis, normalize=normalize))
    total = jnp.sum(g2)
    return (total - 2 * jnp.sum(g2, axis=1) + jnp.diagonal(g2)) / g2.shape[0] ** 2


# --------------------------------------------------------------------------- #
# Subspaces and spectra
# --------------------------------------------------------------------------- #

def _from_units(v: jax.Array, like: jax.Array, axis: int) -> jax.Array:
    moved = jnp.moveaxis(like, axis, 0).shape
    return jnp.moveaxis(v.reshape(moved), 0, axis)


def _check_rank(k, v: jax.Array, name: str) -> int:
    k = tree.check_int(k, name, minimum=0)
    if k > min(v.shape):
        raise ValueError(f"{name}={k} exceeds the rank of a {v.shape[0]}x{v.shape[1]} "
                         f"unit matrix (at most {min(v.shape)})")
    return k


def low_rank(w: jax.typing.ArrayLike, k: int, *, axis: int = -1) -> jax.Array:
    """The best rank-``k`` approximation of a kernel (truncated SVD).

    The kernel is read as its ``(N, D)`` unit matrix (`unit_vectors`), its
    top ``k`` singular triplets are kept and the result is returned in the
    kernel's shape. ``||low_rank(w, k)||_F / ||w||_F`` is
    ``sqrt(sum(spectrum(w)[:k]) / sum(spectrum(w)))``.

    Args:
        w: a kernel with ndim >= 2.
        k: the rank kept, ``0 <= k <= min(N, D)``.
        axis: the units' axis.

    Raises:
        ValueError: ``k`` is negative or larger than the matrix's rank bound.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.analysis import low_rank
        >>> w = jnp.diag(jnp.array([3., 2., 1.]))
        >>> low_rank(w, 2).diagonal().round(4).tolist()
        [3.0, 2.0, 0.0]

    References:
        Heitmann, "Sources of Redundancy in Neural Networks", Sec. 4 (the
        rank-10 "projection" of fc1).
    """
    w = jnp.asarray(w)
    v = unit_vectors(w, axis=axis)
    k = _check_rank(k, v, "k")
    u, s, vt = jnp.linalg.svd(v, full_matrices=False)
    approx = jnp.matmul(u[:, :k] * s[:k], vt[:k], precision=_HIGHEST)
    return _from_units(approx, w, axis)


def project_update(w: jax.typing.ArrayLike, w0: jax.typing.ArrayLike, k: int, *,
                   axis: int = -1) -> jax.Array:
    """``w0`` plus the update ``w - w0`` projected onto its top-``k`` singular vectors.

    Nagarajan & Kolter observe that the update of a trained layer is close
    to low rank: keeping its top 16 of 1024 directions kept the accuracy.
    Projecting onto the top ``k`` left singular vectors of the update is its
    best rank-``k`` approximation, so this is ``w0 + low_rank(w - w0, k)``.

    Args:
        w: the trained kernel.
        w0: the same kernel at initialisation.
        k: directions of the update kept.
        axis: the units' axis.

    Raises:
        ValueError: the shapes differ, or ``k`` is out of range.

    References:
        Nagarajan & Kolter, "Generalization in Deep Networks: The Role of
        Distance from Initialization", 2019 (their released code does not
        hold this experiment: implemented from the description).
    """
    w, w0 = jnp.asarray(w), jnp.asarray(w0)
    if w.shape != w0.shape:
        raise ValueError(f"project_update: shapes differ, {w.shape} vs {w0.shape}")
    return w0 + low_rank(w - w0, k, axis=axis)


def spectrum(w: jax.typing.ArrayLike, *, axis: int = -1) -> jax.Array:
    """The eigenvalues of ``W W^T`` (``W`` the unit matrix), largest first.

    These are the squared singular values of ``W``, ``min(N, D)`` of them:
    the empirical spectral density of Martin & Mahoney is their histogram
    (Heitmann: 40 bins, unnormalised, no Marchenko-Pastur fit). Computed as
    ``eigvalsh`` of the smaller of ``W W^T`` and ``W^T W`` (float32 Gram
    matrices: the smallest eigenvalues are accurate to about ``1e-7`` of
    the largest), clipped at 0.

    Args:
        w: a kernel with ndim >= 2.
        axis: the units' axis.

    Returns:
        A float32 vector of length ``min(N, D)``, in decreasing order.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.analysis import spectrum
        >>> spectrum(jnp.diag(jnp.array([1., 3.]))).round(4).tolist()
        [9.0, 1.0]

    References:
        Martin & Mahoney, "Implicit Self-Regularization in Deep Neural
        Networks", 2018; Heitmann, "Sources of Redundancy in Neural
        Networks", Sec. 4.
    """
    v = unit_vectors(w, axis=axis)
    small = v if v.shape[0] <= v.shape[1] else v.T
    eigs = jnp.linalg.eigvalsh(jnp.matmul(small, small.T, precision=_HIGHEST))
    return jnp.maximum(eigs[::-1], 0.0)


# --------------------------------------------------------------------------- #
# Clustering and how training moves weights
# --------------------------------------------------------------------------- #

def cluster_angles(w: np.typing.ArrayLike, n_clusters: int, *, axis: int = -1,
                   seed: int = 0) -> np.ndarray:
    """Angles (degrees) between each unit and its nearest K-means centre.

    The units are L2-normalised and clustered by scikit-learn's ``KMeans``
    (``n_init=10``, on the host in float64). Brutzkus & Globerson observed
    that trained filters cluster (small angles to their centre) where the
    initial ones do not: compare the distributions of a trained and an
    initial kernel with the same ``n_clusters``.

    Args:
        w: a kernel with ndim >= 2.
        n_clusters: the number of centres, ``1 <= n_clusters <= N``.
        axis: the units' axis.
        seed: KMeans' ``random_state``.

    Returns:
        A float64 array of ``N`` angles in ``[0, 180]``.

    Raises:
        ValueError: ``n_clusters`` is out of range, or a unit is zero.

    References:
        Brutzkus & Globerson, "Why do Larger Models Generalize Better? A
        Theoretical Perspective via the XOR Problem", ICML 2019, Sec. 6.
    """
    from sklearn.cluster import KMeans  # only this function needs scikit-learn

    v = np.asarray(unit_vectors(w, axis=axis), np.float64)
    n_clusters = tree.check_int(n_clusters, "n_clusters", minimum=1)
    if n_clusters > len(v):
        raise ValueError(f"n_clusters={n_clusters} exceeds the layer's {len(v)} units")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if not norms.all():
        raise ValueError("cluster_angles: a unit's weight vector is zero (pruned?); "
                         "drop pruned units first")
    v = v / norms
    km = KMeans(n_clusters, n_init=10, random_state=seed).fit(v)
    centres = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    cosine = np.einsum("nd,nd->n", v, centres[km.labels_])
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def weight_profile(w: jax.typing.ArrayLike, points: int = 33) -> jax.Array:
    """A layer's sorted weights, sampled at ``points`` evenly spaced ranks.

    LaPerm's Fig. 1 and 10: the profile of sorted weights barely changes in
    training (its shape is set by the initialisation), which is why training
    by permutation works. Entry ``j`` is the ``j / (points - 1)`` quantile.

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 2, Fig. 1.
    """
    points = tree.check_int(points, "points", minimum=2)
    x = jnp.ravel(jnp.asarray(w, jnp.float32))
    if not x.size:
        raise ValueError("weight_profile needs a non-empty array")
    # jnp.quantile's linear interpolation between neighbouring order
    # statistics, from a sort of integer keys: far cheaper on CPU than a
    # float sort, which dominated the dynamics hook.
    keys = jnp.sort(masks.order_key(x))
    position = np.linspace(0.0, 1.0, points) * (x.size - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, x.size - 1)
    below, above = (masks.from_order_key(keys[i], x.dtype) for i in (low, high))
    return below + (above - below) * jnp.asarray(position - low, jnp.float32)


def distance_from_init(w: jax.typing.ArrayLike, w0: jax.typing.ArrayLike) -> jax.Array:
    """``||w - w0||_F``: the distance from initialisation of Neyshabur et al.

    References:
        Neyshabur et al., "Towards Understanding the Role of
        Over-Parametrization in Generalization", 2018, Sec. 3; Nagarajan &
        Kolter, 2019.
    """
    w, w0 = jnp.asarray(w), jnp.asarray(w0)
    if w.shape != w0.shape:
        raise ValueError(f"distance_from_init: shapes differ, {w.shape} vs {w0.shape}")
    return jnp.linalg.norm((w - w0).ravel())


def ranking_distance(w_prev: jax.typing.ArrayLike,
                     w_now: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Mean and standard deviation of how far the weights moved in rank.

    With ``R_t`` the rank of every weight within its weight vector, the
    ranking distance is ``|R_t - R_{t-1}|`` elementwise; its mean and std
    over the whole matrix measure how much training reorders the weights.

    Args:
        w_prev: a kernel (or one vector) at an earlier time.
        w_now: the same kernel later, of the same shape.

    Returns:
        ``(mean, std)`` of ``|ranks(w_now) - ranks(w_prev)|`` as float32
        scalars (ranks per weight vector, i.e. per column of
        ``reshape(-1, out)``).

    Raises:
        ValueError: the shapes differ or the arrays are empty.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.analysis import ranking_distance
        >>> mean, std = ranking_distance(jnp.array([1., 2., 3., 4.]),
        ...                              jnp.array([4., 2., 3., 1.]))
        >>> float(mean), float(std)
        (1.5, 1.5)

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 3 (Fig. 2).
    """
    w_prev, w_now = jnp.asarray(w_prev), jnp.asarray(w_now)
    if w_prev.shape != w_now.shape:
        raise ValueError(f"ranking_distance: shapes differ, {w_prev.shape} vs {w_now.shape}")
    if w_now.size == 0:
        raise ValueError(f"ranking_distance needs non-empty arrays, got shape {w_now.shape}")
    return _rank_moves(_column_ranks(w_prev), _column_ranks(w_now))


def _column_ranks(w: jax.Array) -> jax.Array:
    """Every weight's rank within its column of ``reshape(-1, out)``."""
    return permute.ranks(permute.columns(w), 0)


def _rank_moves(ranks_prev: jax.Array, ranks_now: jax.Array) -> tuple[jax.Array, jax.Array]:
    moved = jnp.abs(ranks_now - ranks_prev).astype(jnp.float32)
    return moved.mean(), moved.std()


def cycles(perm: np.typing.ArrayLike) -> list[tuple[int, ...]]:
    """Cycle decomposition of a permutation (host side, NumPy).

    ``perm`` maps ``i -> perm[i]``. Every cycle ``(i, perm[i], perm[perm[i]],
    ...)`` starts at its smallest element and the cycles are listed by their
    first element; fixed points are cycles of length 1. Runs on the host in
    O(n) Python steps: meant for analysing one weight vector, not for jit.

    Args:
        perm: a 1-D permutation of ``0 .. n-1`` (e.g. one column of
            `find_permutation`).

    Returns:
        The list of cycles, as tuples of Python ints.

    Raises:
        ValueError: ``perm`` is not a 1-D permutation of ``0 .. n-1``.

    Example:
        >>> from randjax.analysis import cycles
        >>> cycles([2, 0, 1, 3, 5, 4])
        [(0, 2, 1), (3,), (4, 5)]

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Appendix A.4.
    """
    perm = np.asarray(perm)
    if perm.ndim == 1 and perm.size == 0:
        return []
    if (perm.ndim != 1 or not np.issubdtype(perm.dtype, np.integer)
            or not np.array_equal(np.sort(perm), np.arange(perm.size))):
        raise ValueError(f"cycles needs a 1-D integer permutation of 0..n-1, got {perm!r}")
    perm = perm.tolist()
    seen = [False] * len(perm)
    result = []
    for start in range(len(perm)):
        if seen[start]:
            continue
        cycle, i = [], start
        while not seen[i]:
            seen[i] = True
            cycle.append(i)
            i = perm[i]
        result.append(tuple(cycle))
    return result


# --------------------------------------------------------------------------- #
# A recorder for `randjax.fit`
# --------------------------------------------------------------------------- #

def _layer_measures(w, w0, ranks_prev, *, axis, spectra, profile_points):
    """One layer's measures, and its ranks for the next epoch's ranking distance."""
    ranks_now = _column_ranks(jnp.moveaxis(w, axis, -1))
    out = {"frame_potential": frame_potential(w, axis=axis),
           "norm": jnp.linalg.norm(w.ravel()),
           "distance_from_init": distance_from_init(w, w0),
           "ranking_distance": jnp.stack(_rank_moves(ranks_prev, ranks_now)),
           "profile": weight_profile(w, profile_points)}
    if spectra:
        out["spectrum"] = spectrum(w, axis=axis)
    return out, ranks_now


def dynamics_hook(reparam, initial_params: Any, *, filter: tree.Filter = tree.is_kernel,
                  axis: int = -1, spectra: bool = False, profile_points: int = 33,
                  every: int = 1) -> Callable[[int, Any], dict]:
    """An ``epoch_hook`` for `randjax.fit` that records how each layer trains.

    After every ``every``-th epoch the effective weights
    ``reparam.apply(trainable, frozen, train=False)`` of every selected leaf
    are measured in one jitted program, and only the measurements reach the
    host (no whole matrices):

    * ``frame_potential`` (`frame_potential`), ``norm`` (Frobenius);
    * ``distance_from_init`` (`distance_from_init` from ``initial_params``);
    * ``ranking_distance``: ``[mean, std]`` of how far weights moved in rank
      within their units since the epoch ``ranking_since``
      (`ranking_distance`): the hook's previous measurement, or 0, i.e.
      ``initial_params``, for its first (also the first after a resume);
    * ``profile``: the sorted weight profile (`weight_profile`);
    * ``spectrum`` (with ``spectra=True``): the eigenvalues of ``W W^T``
      (`spectrum`), ``min(N, D)`` numbers per layer.

    The record gets one entry, ``"dynamics": {leaf name: {measure: value}}``
    (leaf names as `randjax.pruning.path_name`, e.g. ``"Dense_0/kernel"``);
    `experiments.plot` draws them.

    Args:
        reparam: the run's `randjax.Reparam` (``fit``'s ``reparam``).
        initial_params: the effective parameters at step 0 (for dense
            training, the model's initial ``params``).
        filter: which leaves to measure (default: every kernel).
        axis: the units' axis of every kernel.
        spectra: also record each layer's spectrum.
        profile_points: points of each weight profile.
        every: measure after the epochs that are multiples of ``every`` only
            (the others return no record), where the measures would cost a
            large share of a fast epoch (``python -m experiments.benchmark
            --analysis`` times them against one).

    Returns:
        ``hook(epoch, state) -> {"dynamics": ...}``.

    Example:
        >>> import jax, jax.numpy as jnp, randjax
        >>> params = {"Dense_0": {"kernel": jnp.eye(3), "bias": jnp.zeros(3)}}
        >>> rp = randjax.dense()
        >>> trainable, frozen = rp.init(jax.random.key(0), params)
        >>> hook = randjax.analysis.dynamics_hook(rp, params)
        >>> state = randjax.train.TrainState(0, trainable, frozen, {}, None)
        >>> record = hook(1, state)["dynamics"]["Dense_0/kernel"]
        >>> round(record["frame_potential"], 4), record["distance_from_init"]
        (0.3333, 0.0)

    References:
        Neyshabur et al. 2018 (distance from init); Qiu & Suda 2020, Sec. 3
        (ranking distance, weight profiles); Martin & Mahoney 2018 (spectra);
        Heitmann (frame potential).
    """
    filter = tree.check_filter(filter)
    spectra = tree.check_bool(spectra, "spectra")
    profile_points = tree.check_int(profile_points, "profile_points", minimum=2)
    every = tree.check_int(every, "every", minimum=1)

    def selected(params):
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        return {path_name(p): leaf for p, leaf in leaves if filter(p, leaf)}

    initial = {k: jnp.asarray(v) for k, v in selected(initial_params).items()}
    if not initial:
        raise ValueError("dynamics_hook: the filter selects no leaf of initial_params")

    @jax.jit
    def measure(trainable, frozen, previous_ranks):
        now = selected(reparam.apply(trainable, frozen, key=None, train=False))
        if now.keys() != initial.keys():
            raise ValueError(f"dynamics_hook: the run's leaves {sorted(now)} are not "
                             f"initial_params' {sorted(initial)}")
        both = {k: _layer_measures(now[k], initial[k], previous_ranks[k], axis=axis,
                                   spectra=spectra, profile_points=profile_points)
                for k in now}
        return {k: m for k, (m, _) in both.items()}, {k: r for k, (_, r) in both.items()}

    # The previous epoch is kept as its ranks (fresh arrays, so fit's donation
    # of the state cannot touch them), not as weights to rank again.
    previous_ranks = jax.jit(lambda ws: {k: _column_ranks(jnp.moveaxis(w, axis, -1))
                                         for k, w in ws.items()})(initial)

    since = 0

    def hook(epoch: int, state) -> dict:
        nonlocal previous_ranks, since
        if epoch % every:
            return {}
        out, previous_ranks = measure(state.trainable, state.frozen, previous_ranks)
        out = jax.tree.map(lambda a: np.asarray(a).tolist(), jax.device_get(out))
        for layer in out.values():
            layer["ranking_since"] = since
        since = epoch
        return {"dynamics": out}

    return hook
