"""Measurements of trained networks, as the papers make them.

Pure functions of parameters (and of their history), for plots and studies:

* `ranking_distance`: how far weights move in rank within their vectors
  between two times (LaPerm, Qiu & Suda 2020, Sec. 3);
* `cycles`: the cycle decomposition of a weight vector's permutation
  (Qiu & Suda 2020, Appendix A.4).

References:
    Qiu & Suda, "Train by Reconnect: Decoupling Locations of Weights from
    their Values", NeurIPS 2020. https://arxiv.org/abs/2003.02570
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from randjax import permute

__all__ = ["cycles", "ranking_distance"]


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
    moved = jnp.abs(permute.ranks(permute.columns(w_now), 0)
                    - permute.ranks(permute.columns(w_prev), 0))
    moved = moved.astype(jnp.float32)
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
