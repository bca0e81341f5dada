"""DenseNet-BC (Huang et al. 2017) for small inputs such as 28x28 Fashion-MNIST.

Each dense layer (BN, ReLU, 1x1 conv to 4k, BN, ReLU, 3x3 conv to k) CONCATENATES its k new
channels to everything before it; transitions (BN, ReLU, 1x1 conv halving the channels,
2x2 average pool) join the dense blocks. A channel produced early is read by every later
layer of its block, so pruning it must slice the input axis of many kernels at a different
offset each: the concatenation rule is what this family tests.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class DenseLayer(nn.Module):
    growth: int
    bottleneck: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        y = nn.Conv(self.bottleneck * self.growth, (1, 1), use_bias=False,
                    name="conv1")(nn.relu(norm("bn1")(x)))
        y = nn.Conv(self.growth, (3, 3), use_bias=False, name="conv2")(nn.relu(norm("bn2")(y)))
        return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))
        x = nn.Conv(self.features, (1, 1), use_bias=False, name="conv")(x)
        return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class DenseNet(nn.Module):
    num_classes: int = 10
    growth: int = 12
    layers_per_block: Sequence[int] = (6, 6, 6)
    compression: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(2 * self.growth, (3, 3), use_bias=False, name="stem")(x)
        for b, n in enumerate(self.layers_per_block):
            if b > 0:
                x = Transition(int(x.shape[-1] * self.compression), name=f"transition{b}")(
                    x, train)
            for i in range(n):
                x = DenseLayer(self.growth, name=f"block{b}_layer{i}")(x, train)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                 name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def densenet_bc40(num_classes: int = 10) -> DenseNet:
    """DenseNet-BC with 3 blocks of 6 layers (depth 40 counting both convs), growth 12."""
    return DenseNet(num_classes)


def densenet_tiny(num_classes: int = 10) -> DenseNet:
    return DenseNet(num_classes, 4, (2, 1))
