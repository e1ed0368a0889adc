"""CIFAR ResNets (He et al., 2016) and Wide ResNets (Zagoruyko & Komodakis, 2016)."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from randjax import tree
from randjax.models.common import Initializer, Model, global_avg_pool

_SHORTCUTS = ("projection", "padding")


def _pad_shortcut(x: jax.Array, features: int, strides: int) -> jax.Array:
    """He et al.'s option-A shortcut: subsample by ``strides`` and zero-pad the
    new channels, half on each side; no parameters."""
    x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def _check_block(block) -> None:
    tree.check_int(block.features, "features", minimum=1)
    tree.check_int(block.strides, "strides", minimum=1)


class _ResNetBase(Model):
    """Shared options of the residual nets.

    ``use_bias=None`` (the default) is the references' choice: bias-free convs
    and a biased classifier; ``True``/``False`` put biases on every layer / on
    none.
    """

    use_bias: bool | None = None
    batch_norm: bool = True
    shortcut: str = "projection"
    bias_may_be_none: ClassVar[bool] = True

    def __post_init__(self):
        tree.check_choice(self.shortcut, _SHORTCUTS, "shortcut")
        super().__post_init__()

    def block_options(self) -> dict:
        return {**self.common(), "use_bias": bool(self.use_bias), "shortcut": self.shortcut}

    def classifier(self, x: jax.Array, train: bool) -> jax.Array:
        x = global_avg_pool(x)
        return self.dense(self.num_classes, use_bias=self.use_bias is not False)(x)


class BasicBlock(_ResNetBase):
    """Post-activation basic block (He et al., 2016a): conv3x3 -> BN -> ReLU ->
    [dropout] -> conv3x3 -> BN, plus the shortcut, then ReLU.  A shortcut
    changes shape iff ``strides > 1`` or the channel count changes."""

    features: int = 16
    strides: int = 1

    def __post_init__(self):
        _check_block(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = nn.relu(self.norm(self.conv(self.features, 3, self.strides, 1)(x), train))
        y = self.drop(y, train)
        y = self.norm(self.conv(self.features, 3, 1, 1)(y), train)
        if self.strides > 1 or x.shape[-1] != self.features:
            if self.shortcut == "projection":
                x = self.norm(self.conv(self.features, 1, self.strides, "VALID")(x), train)
            else:
                x = _pad_shortcut(x, self.features, self.strides)
        return nn.relu(y + x)


class ResNet(_ResNetBase):
    """CIFAR ResNet-(6n+2) (He et al., 2016a, Sec. 4.2) as in open_lth
    ``models/cifar_resnet.py``: conv3x3(16) -> BN -> ReLU, three stages of
    ``n`` `BasicBlock`\\ s with 16, 32, 64 channels (stride 2 at the first
    block of stages 2 and 3), global average pool, linear classifier.

    Defaults follow open_lth: projection shortcuts (1x1 conv stride 2 + BN;
    ``shortcut="padding"`` gives He et al.'s parameter-free option A),
    bias-free convs and a biased classifier, Kaiming-normal kernels,
    BatchNorm scale ~ U(0, 1) (``batchnorm_init='uniform'``), no dropout.
    With ``dropout > 0`` dropout sits between the two convs of each block (as
    in Wide ResNets).  Convs use PyTorch's symmetric
    padding 1.
    """

    bn_scale_init: Initializer = jax.nn.initializers.uniform(1.0)

    depth: ClassVar[int] = 20
    widths: ClassVar[tuple[int, ...]] = (16, 32, 64)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
        n = (self.depth - 2) // 6
        x = self.conv(self.ch(self.widths[0]), 3, 1, 1, use_bias=bool(self.use_bias))(x)
        x = nn.relu(self.norm(x, train))
        for stage, w in enumerate(self.widths):
            for i in range(n):
                strides = 2 if stage > 0 and i == 0 else 1
                x = BasicBlock(features=self.ch(w), strides=strides,
                               name=f"stage{stage + 1}_block{i}", **self.block_options())(x, train)
        return self.classifier(x, train)


class ResNet20(ResNet):
    """ResNet-20 (open_lth ``cifar_resnet_20``): 270,896 kernel weights
    (432 stem + 13,824 + 51,200 + 204,800 in the stages, of which 2,560 in the
    two projection shortcuts, + 640 classifier)."""

    depth = 20


class ResNet56(ResNet):
    """ResNet-56 (open_lth ``cifar_resnet_56``): 851,504 kernel weights
    (432 stem + 41,472 + 161,792 + 647,168 in the stages + 640 classifier)."""

    depth = 56


class WideBlock(_ResNetBase):
    """Pre-activation block of Wide ResNets: BN -> ReLU -> conv3x3 -> BN ->
    ReLU -> dropout -> conv3x3, plus the shortcut.  A shape-changing shortcut
    is a 1x1 conv applied to the pre-activated input (as in
    szagoruyko/wide-residual-networks); ``shortcut="padding"`` subsamples and
    zero-pads the raw input instead."""

    features: int = 16
    strides: int = 1

    def __post_init__(self):
        _check_block(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        o = nn.relu(self.norm(x, train))
        y = self.conv(self.features, 3, self.strides, 1)(o)
        y = self.drop(nn.relu(self.norm(y, train)), train)
        y = self.conv(self.features, 3, 1, 1)(y)
        if self.strides > 1 or x.shape[-1] != self.features:
            if self.shortcut == "projection":
                x = self.conv(self.features, 1, self.strides, "VALID")(o)
            else:
                x = _pad_shortcut(x, self.features, self.strides)
        return y + x


class WideResNet(_ResNetBase):
    """Wide ResNet WRN-d-k (Zagoruyko & Komodakis, 2016): conv3x3(16), three
    stages of ``(d-4)/6`` pre-activation `WideBlock`\\ s with 16k, 32k, 64k
    channels (strides 1, 2, 2), BN -> ReLU, global average pool, linear
    classifier.

    Defaults follow the paper: bias-free convs, biased classifier,
    Kaiming-normal kernels, BatchNorm (scale 1), 1x1-conv shortcuts where the
    shape changes, dropout 0 (the paper's dropout variant uses 0.3 between
    the two convs of each block, which is where ``dropout`` applies).
    """

    depth: ClassVar[int] = 16
    widen: ClassVar[int] = 8

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4, got {self.depth}")
        n = (self.depth - 4) // 6
        x = self.conv(self.ch(16), 3, 1, 1, use_bias=bool(self.use_bias))(x)
        for stage, w in enumerate((16, 32, 64)):
            for i in range(n):
                strides = 2 if stage > 0 and i == 0 else 1
                x = WideBlock(features=self.ch(w * self.widen), strides=strides,
                              name=f"stage{stage + 1}_block{i}", **self.block_options())(x, train)
        x = nn.relu(self.norm(x, train))
        return self.classifier(x, train)


class WRN16_8(WideResNet):
    """WRN-16-8 (widths 16, 128, 256, 512; 2 blocks per stage): 10,954,160
    kernel weights (432 stem + 462,848 + 2,097,152 + 8,388,608 in the stages,
    of which 165,888 in the three 1x1 shortcuts, + 5,120 classifier)."""

    depth = 16
    widen = 8
