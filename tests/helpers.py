"""Helpers shared by several test modules."""

import jax


def trained_scores(trainable, seed=7):
    # Scores moved away from their init, as after training.
    leaves, treedef = jax.tree.flatten(trainable)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([s + jax.random.normal(k, s.shape, s.dtype)
                              for s, k in zip(leaves, keys)])
