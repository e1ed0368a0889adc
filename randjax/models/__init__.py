"""Flax Linen model zoo of the papers randjax reproduces.

Build a model by name::

    >>> import jax, jax.numpy as jnp
    >>> from randjax import models
    >>> model = models.get("conv4", width=0.25)
    >>> x = jnp.zeros((2, 32, 32, 3))
    >>> variables = model.init(jax.random.key(0), x)
    >>> model.apply(variables, x).shape
    (2, 10)

Every model accepts the common options of `Model` (``num_classes``,
``width``, ``use_bias``, ``batch_norm``, ``bn_affine``, ``bn_momentum``,
``bn_epsilon``, ``bn_scale_init``, ``dropout``, ``kernel_init``,
``bias_init``, ``dtype``, ``fast_conv_grad``), with defaults that follow each
model's reference (see the class docstrings); the residual nets also take ``shortcut``.
Call as ``model.apply(variables, x, train=...)``; in training pass
``rngs={"dropout": key}`` when ``dropout > 0`` and ``mutable=["batch_stats"]``
when ``batch_norm``.

`fit` trains other model APIs too: `adapters` turns a Linen module, an NNX
module or plain functions (`from_functions`, e.g. an Equinox model) into the
``init`` / ``apply`` pair it trains.
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
from flax import linen as nn

from randjax import init as init_lib
from randjax.init import he_uniform, kaiming_normal
from randjax.models.adapters import (
    ModelFunctions,
    as_model,
    from_functions,
    from_linen,
    from_nnx,
)
from randjax.models.common import COMMON_OPTIONS, Model, global_avg_pool, max_pool, option_names
from randjax.models.conv import Conv2, Conv4, Conv6, Conv7, Conv8, Conv13, ConvNet
from randjax.models.mlp import F1, F2, MLP, LeNet300100, MLP400x3
from randjax.models.resnet import (
    WRN16_8,
    BasicBlock,
    ResNet,
    ResNet20,
    ResNet56,
    WideBlock,
    WideResNet,
)
from randjax.models.vgg import VGG, VGG19

REGISTRY: dict[str, type[Model]] = {
    "lenet300_100": LeNet300100,
    "mlp400x3": MLP400x3,
    "f1": F1,
    "f2": F2,
    "conv2": Conv2,
    "conv4": Conv4,
    "conv6": Conv6,
    "conv8": Conv8,
    "conv7": Conv7,
    "conv13": Conv13,
    "vgg19": VGG19,
    "resnet20": ResNet20,
    "resnet56": ResNet56,
    "wrn16_8": WRN16_8,
}


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(REGISTRY)


def get(name: str, **options) -> nn.Module:
    """Builds the model registered as ``name`` with the given options.

    Args:
        name: one of `names()`.
        **options: constructor options of that model (the common options and,
            for residual nets, ``shortcut``); unspecified ones keep the model's
            reference defaults.

    Returns:
        An unbound ``flax.linen.Module``; ``__call__(x, train=False)`` maps an
        NHWC batch to ``(batch, num_classes)`` logits.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names) or an
            invalid option value (the message names the option; see
            `randjax.models.common.check_options`).
        TypeError: an option the model does not accept (the message names it).
    """
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    cls = REGISTRY[name]
    valid = option_names(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid)}"
        )
    return cls(**options)


def spec(model: nn.Module) -> dict:
    """A JSON-able description of a zoo model: its name and non-default options.

    Initializers are stored by their registered name (`randjax.init.name_of`)
    and dtypes by name, so `from_spec` rebuilds an equal model.

    Raises:
        ValueError: ``model`` is not a zoo model, or an option is an
            initializer that is not registered, or cannot be held by JSON.

    Example:
        >>> from randjax import models
        >>> s = models.spec(models.get("conv4", width=0.5))
        >>> s, models.from_spec(s) == models.get("conv4", width=0.5)
        ({'model': 'conv4', 'options': {'width': 0.5}}, True)
    """
    names = {cls: name for name, cls in REGISTRY.items()}
    if type(model) not in names:
        raise ValueError(f"{type(model).__name__} is not a randjax.models zoo model "
                         f"(registered: {', '.join(names.values())})")
    defaults = {f.name: f.default for f in dataclasses.fields(type(model))}
    options = {}
    for name in option_names(type(model)):
        value = getattr(model, name)
        if value is defaults[name]:
            continue
        if callable(value) and not isinstance(value, type):
            registered = init_lib.name_of(value)
            if registered is None:
                raise ValueError(f"the model's {name} is not a registered initializer "
                                 f"(randjax.init.names()): {value!r}")
            options[name] = {"initializer": registered}
        elif name == "dtype":
            options[name] = {"dtype": jnp.dtype(value).name}
        elif value != defaults[name]:
            options[name] = list(value) if isinstance(value, tuple) else value
    try:
        json.dumps(options)
    except TypeError as error:
        raise ValueError(f"the model's options cannot be stored as JSON: {error}") from None
    return {"model": names[type(model)], "options": options}


def from_spec(description: dict) -> nn.Module:
    """The zoo model that `spec` described."""
    options = {}
    for name, value in description["options"].items():
        if isinstance(value, dict) and "initializer" in value:
            value = init_lib.get(value["initializer"])
        elif isinstance(value, dict) and "dtype" in value:
            value = jnp.dtype(value["dtype"])
        elif isinstance(value, list):
            value = tuple(value)
        options[name] = value
    return get(description["model"], **options)


__all__ = [
    "BasicBlock", "COMMON_OPTIONS", "Conv13", "Conv2", "Conv4", "Conv6", "Conv7", "Conv8",
    "ConvNet", "F1", "F2", "LeNet300100", "MLP", "MLP400x3", "Model", "ModelFunctions",
    "REGISTRY", "ResNet", "ResNet20", "ResNet56", "VGG", "VGG19", "WRN16_8", "WideBlock",
    "WideResNet", "as_model", "from_functions", "from_linen", "from_nnx", "from_spec", "get",
    "global_avg_pool", "he_uniform", "kaiming_normal", "max_pool", "names", "option_names",
    "spec",
]
