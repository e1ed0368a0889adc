"""Small convolutional nets: hidden-networks' Conv-2/4/6/8, LaPerm's Conv7 and Conv13."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax

from randjax.init import he_uniform
from randjax.models.common import Initializer, Model, flatten, max_pool, valid_or_same


class ConvNet(Model):
    """Conv-k of Frankle & Carbin (2019) as used by edge-popup (Ramanujan et
    al., 2020; allenai/hidden-networks ``models/frankle.py``) and Slot Machines.

    ``stages`` pairs of 3x3 convs (padding 1) with 64, 128, 256, 512 channels,
    each pair followed by a 2x2 max-pool, then FC 256-256-``num_classes``;
    ReLU everywhere, no bias, no BatchNorm by default.  With
    ``batch_norm=True`` each conv / hidden FC is followed by BatchNorm before
    its ReLU.  Dropout (default 0) is applied to the input of each hidden FC
    layer (before fc1 and fc2), as in Slot Machines'
    ``shallow_conv_models.py``.
    """

    stages: ClassVar[int] = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for stage in range(self.stages):
            for _ in range(2):
                x = self.conv(self.ch(64 * 2**stage), 3)(x)
                x = nn.relu(self.norm(x, train))
            x = max_pool(x)
        x = flatten(x)
        for _ in range(2):
            x = self.drop(x, train)
            x = self.dense(self.ch(256))(x)
            x = nn.relu(self.norm(x, train))
        return self.dense(self.num_classes)(x)


class Conv2(ConvNet):
    """Conv-2: 64,64,M | FC 256,256 (4,300,992 kernel weights on 32x32x3)."""

    stages = 1


class Conv4(ConvNet):
    """Conv-4: 64,64,M,128,128,M | FC 256,256 (2,425,024 kernel weights on 32x32x3)."""

    stages = 2


class Conv6(ConvNet):
    """Conv-6: 64,64,M,128,128,M,256,256,M | FC 256,256 (2,261,184 on 32x32x3)."""

    stages = 3


class Conv8(ConvNet):
    """Conv-8: ...,512,512,M | FC 256,256 (5,275,840 on 32x32x3).  On 8x8 inputs
    the last pool sees a 1x1 map and is skipped (see `max_pool`)."""

    stages = 4


class Conv7(Model):
    """LaPerm's MNIST Conv7 (Qiu & Suda, 2020; ihsuy/Train-by-Reconnect
    ``notebooks/Conv7.ipynb``)::

        conv 32 3x3 valid, conv 32 3x3 valid, conv 32 5x5 stride 2 same, dropout
        conv 64 3x3 valid, conv 64 3x3 valid, conv 64 5x5 stride 2 same, dropout
        conv 128 4x4 valid, flatten, dropout, dense 10

    ReLU after every conv; biases on and both kernels and biases ``he_uniform``
    as in the notebook; dropout 0.4 at the three marked places; no BatchNorm
    (``batch_norm=True`` puts it between each conv and its ReLU).  On 28x28
    the spatial sizes are 26, 24, 12, 10, 8, 4, 1.  A ``valid`` conv whose
    input is smaller than its kernel (8x8 inputs) uses ``same`` padding instead.
    """

    use_bias: bool = True
    dropout: float = 0.4
    kernel_init: Initializer = he_uniform
    bias_init: Initializer = he_uniform

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv(x, n, k, strides=1):
            pad = "SAME" if strides > 1 else valid_or_same(x, k)
            return nn.relu(self.norm(self.conv(self.ch(n), k, strides, pad)(x), train))

        for n in (32, 64):
            x = conv(x, n, 3)
            x = conv(x, n, 3)
            x = conv(x, n, 5, strides=2)
            x = self.drop(x, train)
        x = flatten(conv(x, 128, 4))
        x = self.drop(x, train)
        return self.dense(self.num_classes)(x)


class Conv13(Model):
    """LaPerm's CIFAR-10 Conv13, a VGG-16-style net with BatchNorm and heavy
    dropout (Qiu & Suda, 2020; ihsuy/Train-by-Reconnect
    ``notebooks/.ipynb_checkpoints/Conv13-checkpoint.ipynb``)::

        64,D.3,64,M | 128,D,128,M | 256,D,256,D,256,M | 512,D,512,D,512,M |
        512,D,512,D,512,M | D.5, flatten, dense 512, ReLU, BN, D.5, dense 10

    Each conv is 3x3 ``same`` followed by ReLU *then* BatchNorm, as in the
    notebook; ``D`` is dropout with rate 0.4 (0.3 after the first conv).  Biases
    on; kernels and biases ``he_uniform``; BatchNorm momentum 0.99 and epsilon
    1e-3 (Keras defaults, as in the notebook).

    ``dropout`` is a ``(first conv, other convs, classifier)`` triple, default
    ``(0.3, 0.4, 0.5)``, or one rate used at every dropout site.
    """

    use_bias: bool = True
    batch_norm: bool = True
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    dropout: Any = (0.3, 0.4, 0.5)
    kernel_init: Initializer = he_uniform
    bias_init: Initializer = he_uniform

    plan: ClassVar[tuple[tuple[int, int], ...]] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
    dropout_sites: ClassVar[int] = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        rates = self.dropout if isinstance(self.dropout, tuple) else (self.dropout,) * 3
        first = True
        for n, repeats in self.plan:
            for i in range(repeats):
                x = self.norm(nn.relu(self.conv(self.ch(n), 3)(x)), train)
                if i < repeats - 1:
                    x = self.drop(x, train, rates[0] if first else rates[1])
                first = False
            x = max_pool(x)
        x = self.drop(flatten(x), train, rates[2])
        x = self.norm(nn.relu(self.dense(self.ch(512))(x)), train)
        x = self.drop(x, train, rates[2])
        return self.dense(self.num_classes)(x)
