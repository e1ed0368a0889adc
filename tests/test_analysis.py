"""Analysis: ranking distance and permutation cycles."""

import jax.numpy as jnp
import numpy as np
import pytest

from randjax.analysis import cycles, ranking_distance


def test_ranking_distance_by_hand():
    prev = jnp.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    now = jnp.array([[3.0, 10.0], [2.0, 20.0], [1.0, 30.0]])
    # Column 0 reverses (|d| = 2, 0, 2), column 1 keeps its order (0, 0, 0).
    mean, std = ranking_distance(prev, now)
    np.testing.assert_allclose([mean, std], [4 / 6, np.std([2, 0, 2, 0, 0, 0])], rtol=1e-6)
    # Conv layout: vectors are the (h, w, in) entries of each output filter.
    conv_prev, conv_now = prev.reshape(1, 3, 1, 2), now.reshape(1, 3, 1, 2)
    np.testing.assert_allclose(ranking_distance(conv_prev, conv_now), (mean, std))
    # A 1-D array is one vector: a cyclic shift by one of 4 moves ranks 1, 1, 1, 3.
    mean, std = ranking_distance(jnp.arange(4.0), jnp.array([3.0, 0.0, 1.0, 2.0]))
    np.testing.assert_allclose([mean, std], [1.5, np.std([3, 1, 1, 1])], rtol=1e-6)
    assert float(ranking_distance(prev, prev)[0]) == 0.0


def test_ranking_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        ranking_distance(jnp.ones((2, 3)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="non-empty"):
        ranking_distance(jnp.ones((0, 3)), jnp.ones((0, 3)))


def test_cycles_by_hand():
    assert cycles([0, 1, 2]) == [(0,), (1,), (2,)]
    assert cycles([1, 2, 0]) == [(0, 1, 2)]
    assert cycles(np.array([1, 0, 3, 2])) == [(0, 1), (2, 3)]
    assert cycles([4, 3, 0, 1, 2]) == [(0, 4, 2), (1, 3)]
    assert cycles([]) == []
    for bad in ([0, 0], [[0, 1]], [0.0, 1.0], [1, 2]):
        with pytest.raises(ValueError, match="permutation"):
            cycles(bad)
