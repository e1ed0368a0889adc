"""Weight initializers by name, with the conventions of the reference code.

The papers are implemented in PyTorch, whose initializers differ from Flax's
defaults: ``kaiming_normal`` here is PyTorch's ``kaiming_normal_`` (fan-in,
gain sqrt(2), *untruncated* normal), not Flax's truncated ``he_normal``;
``pytorch_default`` is what ``nn.Linear`` / ``nn.Conv2d`` use when nothing is
said (``kaiming_uniform_(a=sqrt(5))``, i.e. U(+-1/sqrt(fan_in))). Fans follow
JAX's convention for kernels: dense ``(in, out)``, conv ``(h, w, in, out)``
with the receptive field counted into both fans.

References:
    He et al., "Delving Deep into Rectifiers", ICCV 2015.
    Glorot & Bengio, "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS 2010.
"""

from __future__ import annotations

from jax.nn import initializers

Initializer = initializers.Initializer

_INITIALIZERS: dict[str, Initializer] = {
    "kaiming_normal": initializers.variance_scaling(2.0, "fan_in", "normal"),
    "kaiming_uniform": initializers.variance_scaling(2.0, "fan_in", "uniform"),
    "xavier_normal": initializers.variance_scaling(1.0, "fan_avg", "normal"),
    "xavier_uniform": initializers.variance_scaling(1.0, "fan_avg", "uniform"),
    "lecun_normal": initializers.lecun_normal(),
    "pytorch_default": initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
}


def names() -> list[str]:
    """The registered initializer names."""
    return sorted(_INITIALIZERS)


def get(name: str) -> Initializer:
    """The initializer called ``name`` (see `names`).

    Raises:
        ValueError: ``name`` is not registered; the message lists the names.
    """
    try:
        return _INITIALIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown initializer {name!r}; choose one of {names()}") from None
