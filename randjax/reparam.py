"""The method protocol: reparametrizations and post-update projections.

Every method in randjax is one of two things, or both:

* a **reparametrization**, `Reparam`: a pair of pure functions that split a
  model's parameters into the tree the optimizer updates (``trainable``) and
  the tree that stays fixed (``frozen``), and rebuild the effective
  parameters from them. Edge-popup scores, supermask logits, Slot Machine
  scores and masks under pruning are reparametrizations; `dense` is the
  identity (ordinary training). The model never knows: it only sees the
  parameters ``apply`` rebuilds.
* an **optimizer** (`optax.GradientTransformation`) whose state may carry a
  **projection**: a state that has a ``project(params) -> params`` method
  (`Projection`) is applied by `apply_updates` after the update. LaPerm
  snaps the synced weights onto an exact permutation of the initial ones
  this way; `apply_updates` is `optax.apply_updates` when no such state is
  present, so it is the one update rule of `randjax.fit` and of any
  hand-written loop.

A method's compact file format (a codec) is registered with
`randjax.export.register_codec` under the name its `Reparam.spec` carries.
`randjax.fit` and `randjax.export` know methods only through this protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import optax

PyTree = Any

__all__ = ["Projection", "Reparam", "apply_updates", "dense", "dense_from", "projections"]


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
            `randjax.export` needs to rebuild a network (it looks up the
            codec registered under ``spec["method"]``); None where a method
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


def dense_from(start: Callable[[jax.Array, PyTree], PyTree] | PyTree) -> Reparam:
    """Ordinary training that starts from other weights than the model's init.

    Args:
        start: ``start(key, params) -> params``, called by ``init`` with its
            key and the model's initial parameters (e.g. randomly pruned or
            single-valued initial weights), or a parameter pytree to start
            from as it is (e.g. trained weights to fine-tune). Either way the
            result must have the structure of the model's parameters.

    Returns:
        A `Reparam` like `dense` whose ``init`` returns ``(start, None)``.

    Raises:
        ValueError: from ``init``, when the start has another structure
            than the model's parameters, or a leaf of another shape.

    Example:
        >>> import jax, jax.numpy as jnp, randjax
        >>> halve = randjax.dense_from(lambda key, p: jax.tree.map(lambda w: w / 2, p))
        >>> trainable, _ = halve.init(jax.random.key(0), {"w": jnp.ones(2)})
        >>> trainable["w"].tolist()
        [0.5, 0.5]
    """
    transform = start if callable(start) else (lambda key, params: start)

    def init(key, params):
        begin = transform(key, params)
        if jax.tree.structure(begin) != jax.tree.structure(params):
            raise ValueError(
                "dense_from: the start must have the structure of the model's "
                f"parameters, got {jax.tree.structure(begin)} for "
                f"{jax.tree.structure(params)}")
        for (path, b), p in zip(jax.tree_util.tree_flatten_with_path(begin)[0],
                                jax.tree.leaves(params)):
            if jnp.shape(b) != jnp.shape(p):  # would broadcast in the model
                raise ValueError(
                    f"dense_from: the start's leaf {jax.tree_util.keystr(path)} has shape "
                    f"{jnp.shape(b)}, the model's parameter {jnp.shape(p)}")
        return begin, None

    return Reparam(init, dense().apply)


@runtime_checkable
class Projection(Protocol):
    """An optimizer state that projects the parameters after every update.

    A transformation whose state (anywhere in the optimizer state: chains and
    nested states included) defines ``project`` has it applied by
    `apply_updates` to the updated parameters. ``project`` must be pure and
    jittable, and return parameters of the same structure, shapes and dtypes
    (branch with `jnp.where` or `jax.lax.cond`, not Python ``if``).
    `randjax.LaPermState` is one: on sync steps it sets the synced leaves to
    the exact permutation its update computed.
    """

    def project(self, params: PyTree) -> PyTree:
        ...


def projections(opt_state: PyTree) -> list[Projection]:
    """Every `Projection` inside an optimizer state, in flattening order."""
    is_projection = lambda x: isinstance(x, Projection)
    return [s for s in jax.tree.leaves(opt_state, is_leaf=is_projection)
            if is_projection(s)]


def apply_updates(params: PyTree, updates: PyTree, opt_state: PyTree) -> PyTree:
    """`optax.apply_updates`, then every projection the optimizer state carries.

    Use it in place of `optax.apply_updates` wherever a randjax optimizer
    may be in the chain (`randjax.fit` does): with LaPerm the synced weights
    are then bitwise a per-vector permutation of the initial ones (with
    `optax.apply_updates`, only up to float rounding, as
    ``params + (target - params)`` need not equal ``target``). Without a
    `Projection` in ``opt_state`` this is `optax.apply_updates`.

    Args:
        params: the parameters the updates were computed for.
        updates: the updates returned by ``tx.update``.
        opt_state: the *new* optimizer state returned with ``updates``.

    Returns:
        The updated parameters.

    Example:
        >>> import jax.numpy as jnp, optax, randjax
        >>> tiny = 2.0 ** -30
        >>> params = {"kernel": jnp.array([[3.0], [tiny]])}
        >>> tx = randjax.laperm(optax.sgd(1.0), sync_period=1)
        >>> state = tx.init(params)
        >>> grads = {"kernel": jnp.array([[4.0], [0.0]])}  # swaps the ranks
        >>> updates, state = tx.update(grads, state, params)
        >>> optax.apply_updates(params, updates)["kernel"].ravel().tolist()  # 3 + (tiny - 3)
        [0.0, 3.0]
        >>> randjax.apply_updates(params, updates, state)["kernel"].ravel().tolist() == [tiny, 3.0]
        True
    """
    new = optax.apply_updates(params, updates)
    for state in projections(opt_state):
        new = state.project(new)
    return new
