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
"""

from __future__ import annotations

from flax import linen as nn

from randjax.models.common import (
    COMMON_OPTIONS, Model, global_avg_pool, he_uniform, kaiming_normal, max_pool, option_names,
)
from randjax.models.conv import Conv2, Conv4, Conv6, Conv7, Conv8, Conv13, ConvNet
from randjax.models.mlp import F1, F2, MLP, MLP400x3, LeNet300100
from randjax.models.resnet import (
    BasicBlock, ResNet, ResNet20, ResNet56, WideBlock, WideResNet, WRN16_8,
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
        invalid option value.
      TypeError: an option the model does not accept (the message names it).
    """
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}") from None
    valid = option_names(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid)}"
        )
    return cls(**options)


__all__ = [
    "COMMON_OPTIONS", "REGISTRY", "BasicBlock", "Conv2", "Conv4", "Conv6", "Conv7", "Conv8",
    "Conv13", "ConvNet", "F1", "F2", "LeNet300100", "MLP", "MLP400x3", "Model", "ResNet",
    "ResNet20", "ResNet56", "VGG", "VGG19", "WRN16_8", "WideBlock", "WideResNet",
    "get", "global_avg_pool", "he_uniform", "kaiming_normal", "max_pool", "names",
    "option_names",
]
