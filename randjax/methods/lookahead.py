"""Lookahead (Zhang et al., 2019) in randjax's protocol: fast and slow weights.

`optax.lookahead` keeps two copies of the parameters, `optax.LookaheadParams`
(``fast`` and ``slow``): the inner optimizer steps the fast weights, and every
``sync_period`` steps the slow weights move ``step_size`` of the way to them
and the fast weights restart there. In randjax the two copies are the
trainable tree of `lookahead_reparam` (the model trains with the fast
weights and is evaluated with the slow ones, as the paper evaluates), and
`lookahead` is `optax.lookahead` fed the fast part of the gradients taken
with respect to that tree. LaPerm's paper compares against it (Qiu & Suda,
2020, Sec. 5.1).

References:
    Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back",
    NeurIPS 2019. https://arxiv.org/abs/1907.08610
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from randjax import tree
from randjax.reparam import Reparam

__all__ = ["lookahead", "lookahead_reparam"]


def lookahead_reparam() -> Reparam:
    """Parameters as `optax.LookaheadParams`: train with the fast, evaluate the slow.

    ``init`` starts both copies at the model's parameters (two buffers, so
    `randjax.fit` can donate the state); ``apply`` returns the fast
    parameters when training (so gradients reach the fast copy only) and the
    slow ones at evaluation. Pair it with `lookahead`.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.methods.lookahead import lookahead_reparam
        >>> rp = lookahead_reparam()
        >>> trainable, frozen = rp.init(None, {"w": jnp.ones(2)})
        >>> type(trainable).__name__, frozen
        ('LookaheadParams', None)

    References:
        Zhang et al., "Lookahead Optimizer", NeurIPS 2019.
    """

    def init(key, params):
        del key
        return optax.LookaheadParams(params, jax.tree.map(jnp.copy, params)), None

    def apply(trainable, frozen, *, key=None, train=True):
        del frozen, key
        return trainable.fast if train else trainable.slow

    return Reparam(init, apply)


def lookahead(fast: optax.GradientTransformation, sync_period: int = 6,
              step_size: float = 0.5) -> optax.GradientTransformation:
    """`optax.lookahead` around ``fast``, updating `lookahead_reparam`'s trainable tree.

    The gradients are taken with respect to `optax.LookaheadParams` (the
    trainable tree of `lookahead_reparam`); their ``fast`` part, the only
    one the training loss depends on, is what `optax.lookahead` steps.

    Args:
        fast: the inner (fast) optimizer.
        sync_period: ``k``, fast steps between slow updates (Python int >= 1).
        step_size: ``alpha``, how far the slow weights move toward the fast
            ones at each sync (Python real in [0, 1]).

    Returns:
        An `optax.GradientTransformation` over `optax.LookaheadParams`.

    Raises:
        ValueError: ``fast`` is not a gradient transformation;
            ``sync_period`` or ``step_size`` out of range.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from randjax.methods.lookahead import lookahead, lookahead_reparam
        >>> params, _ = lookahead_reparam().init(None, {"w": jnp.zeros(1)})
        >>> tx = lookahead(optax.sgd(1.0), sync_period=2, step_size=0.5)
        >>> state = tx.init(params)
        >>> grads = jax.tree.map(jnp.ones_like, params)
        >>> for _ in range(2):
        ...     updates, state = tx.update(grads, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> params.fast["w"].tolist(), params.slow["w"].tolist()
        ([-1.0], [-1.0])

    References:
        Zhang et al., "Lookahead Optimizer", NeurIPS 2019.
    """
    if not (hasattr(fast, "init") and hasattr(fast, "update")):
        raise ValueError(f"lookahead: fast must be an optax GradientTransformation, got {fast!r}")
    sync_period = tree.check_int(sync_period, "sync_period", minimum=1)
    step_size = tree.check_real(step_size, "step_size", low=0.0, high=1.0)
    tx = optax.lookahead(fast, sync_period, step_size)

    def update(grads, state, params=None):
        fast_grads = grads.fast if isinstance(grads, optax.LookaheadParams) else grads
        return tx.update(fast_grads, state, params)

    return optax.GradientTransformation(tx.init, update)
