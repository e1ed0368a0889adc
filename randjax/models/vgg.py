"""VGG-19 for CIFAR-10, as in open_lth."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from randjax.models.common import Initializer, Model, global_avg_pool, max_pool


class VGG(Model):
    """CIFAR VGG (Simonyan & Zisserman, 2015) as in the Lottery Ticket papers
    (facebookresearch/open_lth ``models/cifar_vgg.py``): per entry of ``plan``
    a 3x3 conv (padding 1) -> BatchNorm -> ReLU, ``"M"`` a 2x2 max-pool; then
    global average pooling and one linear classifier.

    Defaults follow open_lth: biases on (PyTorch ``Conv2d``/``Linear``
    defaults; initialised to ``bias_init``, zeros, rather than PyTorch's
    uniform), BatchNorm with scale ~ U(0, 1) and offset 0 (open_lth's
    ``batchnorm_init='uniform'``), Kaiming-normal kernels, no dropout.  With
    ``dropout > 0`` dropout is applied to the pooled features before the
    classifier.  open_lth average-pools the final 2x2 map of a 32x32 input;
    here the pool is global, which is the same there and fits any input size.
    """

    use_bias: bool = True
    batch_norm: bool = True
    bn_scale_init: Initializer = jax.nn.initializers.uniform(1.0)

    plan: ClassVar[tuple[int | str, ...]] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for spec in self.plan:
            if spec == "M":
                x = max_pool(x)
            else:
                x = nn.relu(self.norm(self.conv(self.ch(spec), 3)(x), train))
        x = self.drop(global_avg_pool(x), train)
        return self.dense(self.num_classes)(x)


class VGG19(VGG):
    """VGG-19 (open_lth ``cifar_vgg_19``): 64,64,M,128,128,M,256x4,M,512x4,M,512x4.

    20,024,000 kernel weights (20,018,880 conv + 5,120 classifier).
    """

    plan = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
            512, 512, 512, 512, "M", 512, 512, 512, 512)
