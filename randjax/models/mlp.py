"""Fully connected networks: LeNet-300-100, the 3x400 MLP and LaPerm's F1/F2."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from randjax.models.common import Model, flatten


class MLP(Model):
    """Flatten, then ``Dense -> [BatchNorm] -> ReLU -> [Dropout]`` per hidden
    width in ``hidden``, then a ``Dense`` classifier.

    Dropout (rate ``dropout``, default 0) follows each hidden activation, i.e.
    it is applied to the input of every FC layer except the first (no input
    dropout).  BatchNorm (``batch_norm=True``) sits between each hidden Dense
    and its ReLU.
    """

    hidden: ClassVar[tuple[int, ...]] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = flatten(x)
        for n in self.hidden:
            x = self.dense(self.ch(n))(x)
            x = nn.relu(self.norm(x, train))
            x = self.drop(x, train)
        return self.dense(self.num_classes)(x)


class LeNet300100(MLP):
    """LeNet-300-100: ``784-300-100-10`` ReLU MLP (LeCun et al., 1998).

    As in the Lottery Ticket Hypothesis (Frankle & Carbin, 2019) and open_lth
    ``models/mnist_lenet.py`` (``mnist_lenet_300_100``): biases on, no
    BatchNorm, no dropout, Kaiming-normal kernels.  266,200 kernel weights on
    28x28 inputs.
    """

    hidden = (300, 100)
    use_bias: bool = True


class MLP400x3(MLP):
    """``784-400-400-400-10`` ReLU MLP with biases: the MNIST baseline of
    Mikler's *On pruning methods for neural networks*
    (sjmikler/on-pruning-methods-for-neural-networks,
    ``modules/tf_helper/models.py::LeNet`` with ``layer_sizes=(400, 400, 400)``).

    The reference uses Keras' ``glorot_uniform``; pass
    ``kernel_init=jax.nn.initializers.glorot_uniform()`` to match it.
    637,600 kernel weights on 28x28 inputs.
    """

    hidden = (400, 400, 400)
    use_bias: bool = True


class F1(MLP):
    """LaPerm's weight-agnostic F1: one bias-free ``Dense`` from the flattened
    input to the classes (Qiu & Suda, 2020, Sec. 5.5;
    ihsuy/Train-by-Reconnect ``notebooks/F1_and_F2.ipynb``).

    The notebook makes it weight-agnostic afterwards (one shared value, then
    pruning); that belongs to ``randjax.init``, not to the architecture.
    """

    hidden = ()


class F2(MLP):
    """LaPerm's weight-agnostic F2: bias-free ``Dense`` 128-ReLU, 64-ReLU, 10
    (Qiu & Suda, 2020, Sec. 5.5; ihsuy/Train-by-Reconnect
    ``notebooks/F1_and_F2.ipynb``, ``activation='relu'``, ``use_bias=False``).
    """

    hidden = (128, 64)
