"""Any JAX model as the two pure functions `randjax.fit` trains.

`fit` sees a model only as a `ModelFunctions`:

* ``init(key, x) -> (params, model_state)``: the parameters (what a method
  reparametrizes and the optimizer trains) and everything else the forward
  pass carries (BatchNorm statistics, ...; any pytree, ``{}`` if none);
* ``apply(params, model_state, x, *, train, key) -> (logits, model_state)``:
  the forward pass on a batch; ``key`` feeds dropout and other randomness.

One adapter per model API builds it: `from_linen` (a Flax Linen module, with
or without a ``train`` or ``deterministic`` argument), `from_nnx` (a Flax NNX
module) and `from_functions` (hand-written functions, or an Equinox model
split with ``eqx.partition``); `as_model` picks the adapter for a model.

    >>> import jax, jax.numpy as jnp
    >>> from flax import linen as nn
    >>> model = as_model(nn.Dense(3))           # a Linen module without `train`
    >>> params, model_state = model.init(jax.random.key(0), jnp.ones((2, 4)))
    >>> logits, _ = model.apply(params, model_state, jnp.ones((2, 4)), train=True,
    ...                         key=jax.random.key(1))
    >>> logits.shape, model_state
    ((2, 3), {})
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ModelFunctions:
    """A model as pure ``init`` and ``apply`` functions (see the module docstring).

    Attributes:
        init: ``init(key, x) -> (params, model_state)`` for an example batch ``x``.
        apply: ``apply(params, model_state, x, *, train, key) -> (logits, model_state)``.
        name: a description that is the same in every process running the same
            model (`fit` stores it in a run's fingerprint).
        split_variables: ``split(variables) -> (params, model_state)`` for
            `fit`'s ``variables`` argument; by default ``variables`` is
            ``{"params": ..., "model_state": ...}`` (Linen models take their
            own ``{"params": ..., "batch_stats": ...}``).
        jit_init: whether `randjax.train.init_state` may trace ``init``
            inside its one jitted program (Linen: a pure function of the key
            that draws its arrays). False for an ``init`` that returns arrays
            it holds (NNX modules, most hand-written models): traced, they
            would be baked into the program as constants; it then runs
            eagerly and only the method's and optimizer's state are jitted.
    """

    init: Callable[[jax.Array, jax.Array], tuple[PyTree, PyTree]]
    apply: Callable[..., tuple[jax.Array, PyTree]]
    name: str
    split_variables: Callable[[Mapping], tuple[PyTree, PyTree]] = (
        lambda variables: _params_and_state(variables))
    jit_init: bool = False


def _params_and_state(variables: Mapping) -> tuple[PyTree, PyTree]:
    unknown = set(variables) - {"params", "model_state"}
    if "params" not in variables or unknown:
        raise ValueError("variables must be {'params': ..., 'model_state': ...} for this "
                         f"model; got the keys {sorted(variables)}")
    return variables["params"], variables.get("model_state", {})


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe(obj) -> str:
    """``repr(obj)`` without memory addresses, which differ between processes."""
    return _ADDRESS.sub("", repr(obj))


def as_model(model) -> ModelFunctions:
    """The `ModelFunctions` of a Linen module, an NNX module or a `ModelFunctions`.

    Raises:
        TypeError: any other object, naming the adapters to use.
    """
    if isinstance(model, ModelFunctions):
        return model
    if isinstance(model, nn.Module):
        return from_linen(model)
    if isinstance(model, nnx.Module):
        return from_nnx(model)
    raise TypeError(
        f"fit trains a Flax Linen module, a Flax NNX module or "
        f"randjax.models.from_functions(init, apply); got {type(model).__qualname__}. "
        "Wrap other models (Equinox, hand-written) with from_functions.")


# --------------------------------------------------------------------------- #
# Flax Linen
# --------------------------------------------------------------------------- #

def from_linen(module: nn.Module) -> ModelFunctions:
    """A Linen module, called as ``module.apply(variables, x, **mode)``.

    ``mode`` is ``train=train`` when ``__call__`` takes ``train`` (the zoo),
    ``deterministic=not train`` when it takes ``deterministic`` (flax's
    dropout convention), else nothing (e.g. flax's ``examples/mnist`` CNN).
    Parameters are the ``params`` collection; the other collections (e.g.
    ``batch_stats``) are the model state, updated in training. Dropout draws
    from the ``dropout`` stream.
    """
    call = inspect.signature(type(module).__call__).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in call.values())
    if "train" in call or takes_kwargs:
        mode = lambda train: {"train": train}
    elif "deterministic" in call:
        mode = lambda train: {"deterministic": not train}
    else:
        mode = lambda train: {}

    def init(key, x):
        variables = dict(module.init(key, x, **mode(False)))
        params = variables.pop("params", None)
        if params is None:
            raise ValueError(f"the Linen module {type(module).__qualname__} has no "
                             "parameters ('params' collection): nothing to train")
        return params, variables

    def apply(params, model_state, x, *, train, key):
        variables = {"params": params, **model_state}
        rngs = {"dropout": key}
        if train and model_state:
            logits, new_state = module.apply(variables, x, **mode(True), rngs=rngs,
                                             mutable=list(model_state))
            return logits, dict(new_state)
        return module.apply(variables, x, **mode(train), rngs=rngs), model_state

    def split_variables(variables):
        if "params" not in variables:
            raise ValueError("variables of a Linen model must hold a 'params' collection; "
                             f"got {sorted(variables)}")
        rest = dict(variables)
        return rest.pop("params"), rest

    return ModelFunctions(init, apply, describe(module), split_variables, jit_init=True)


# --------------------------------------------------------------------------- #
# Flax NNX
# --------------------------------------------------------------------------- #

def from_nnx(module: nnx.Module) -> ModelFunctions:
    """An NNX module, split with ``nnx.split`` and merged back in every step.

    The parameters are its ``nnx.Param`` variables and the model state every
    other variable (e.g. ``nnx.BatchStat``), each as a plain nested dict
    (``nnx.to_pure_dict``). The initial parameters are the module's own (NNX
    modules are built initialised, from their ``nnx.Rngs``): ``init``
    ignores its key. In ``apply`` the module is put in ``train()`` or
    ``eval()`` mode and its RNG streams are reseeded from ``key``, so dropout
    is a function of `fit`'s seed and step, as for every other model.
    Values sown with ``self.sow(nnx.Intermediate, ...)`` are outputs of a
    call, not model state: they are dropped.

    Raises:
        ValueError: a module without ``nnx.Param`` variables.
    """
    graphdef, params, rngs, sown, rest = nnx.split(module, nnx.Param, nnx.RngState,
                                                   nnx.Intermediate, ...)
    if not jax.tree.leaves(params):
        raise ValueError(f"the NNX module {type(module).__qualname__} has no nnx.Param "
                         "variables: nothing to train")
    streams = sorted({v.tag for v in jax.tree.leaves(
        rngs, is_leaf=lambda v: isinstance(v, nnx.Variable)) if isinstance(v, nnx.RngKey)})
    initial = (nnx.to_pure_dict(params), nnx.to_pure_dict(rest))

    def fill(template, pure):
        state = jax.tree.map(lambda leaf: leaf, template)   # a fresh State to fill
        nnx.replace_by_pure_dict(state, pure)
        return state

    def init(key, x):
        del key, x
        return jax.tree.map(jnp.copy, initial)   # copies: fit donates its state

    def apply(params_dict, model_state, x, *, train, key):
        fresh_rngs, fresh_sown = jax.tree.map(lambda leaf: leaf, (rngs, sown))  # this trace's
        net = nnx.merge(graphdef, fill(params, params_dict), fresh_rngs, fresh_sown,
                        fill(rest, model_state))
        if train:
            net.train()
        else:
            net.eval()
        if streams:
            keys = jax.random.split(key, len(streams))
            nnx.reseed(net, **dict(zip(streams, keys)))
        logits = net(x)
        return logits, nnx.to_pure_dict(
            nnx.split(net, nnx.Param, nnx.RngState, nnx.Intermediate, ...)[4])

    return ModelFunctions(init, apply, f"nnx {type(module).__module__}."
                                       f"{type(module).__qualname__}")


# --------------------------------------------------------------------------- #
# Plain functions (Equinox, hand-written models)
# --------------------------------------------------------------------------- #

def from_functions(init: Callable, apply: Callable, *, name: str | None = None,
                   jit_init: bool = False) -> ModelFunctions:
    """A model given as ``init(key, x) -> (params, model_state)`` and
    ``apply(params, model_state, x, *, train, key) -> (logits, model_state)``.

    ``name`` describes the model in a run's fingerprint (default: the two
    functions' qualified names); give one that changes when the
    architecture does. ``init`` may return arrays the caller keeps: `fit`
    trains copies. Pass ``jit_init=True`` when ``init`` draws its arrays from
    ``key`` (and holds none): `fit` then traces it into its one jitted
    initialisation program instead of running it op by op. An Equinox model
    plugs in as::

        params, static = eqx.partition(net, eqx.is_inexact_array)
        init = lambda key, x: (params, {})
        apply = lambda p, s, x, *, train, key: (
            jax.vmap(eqx.combine(p, static))(x), s)
        model = randjax.models.from_functions(init, apply, name="my eqx CNN")

    Example:
        >>> import jax, jax.numpy as jnp
        >>> init = lambda key, x: ({"w": jax.random.normal(key, (x.shape[-1], 2))}, {})
        >>> apply = lambda p, s, x, *, train, key: (x @ p["w"], s)
        >>> model = from_functions(init, apply, name="linear")
        >>> params, state = model.init(jax.random.key(0), jnp.ones((1, 3)))
        >>> model.apply(params, state, jnp.ones((4, 3)), train=False, key=None)[0].shape
        (4, 2)
    """
    if not (callable(init) and callable(apply)):
        raise TypeError("from_functions takes two functions, init and apply; got "
                        f"{type(init).__qualname__} and {type(apply).__qualname__}")
    if name is None:
        name = "functions " + ", ".join(f"{getattr(f, '__module__', '?')}."
                                        f"{getattr(f, '__qualname__', type(f).__qualname__)}"
                                        for f in (init, apply))

    def fresh_init(key, x):   # copies: fit donates its state, the caller may keep these
        return jax.tree.map(jnp.copy, init(key, x))

    if not isinstance(jit_init, bool):
        raise TypeError(f"from_functions: jit_init must be a bool, got {jit_init!r}")
    return ModelFunctions(fresh_init, apply, name, jit_init=jit_init)
