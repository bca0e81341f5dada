"""Inception-style network (Szegedy et al. 2015, with BatchNorm) for 28x28 inputs.

Each Inception module runs four parallel branches on the same input (1x1; 1x1 then 3x3;
1x1 then two 3x3, standing in for 5x5; 3x3 max pool then 1x1) and concatenates them on the
channel axis. Every branch can be narrowed on its own, and an entire branch can be removed:
the branch structure is what this family tests. Modules are grouped into stages joined by
stride-2 max pooling.
"""
from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

# Per module: (1x1, 3x3 reduce, 3x3, double-3x3 reduce, double-3x3, pool projection).
ModuleWidths = Tuple[int, int, int, int, int, int]

FULL_STAGES = (
    ((32, 48, 64, 8, 16, 16), (64, 64, 96, 16, 32, 32)),
    ((96, 64, 128, 16, 32, 64), (96, 96, 128, 24, 48, 64)),
    ((128, 96, 160, 32, 64, 64),),
)
TINY_STAGES = (((4, 4, 8, 2, 4, 4),), ((8, 4, 8, 4, 4, 4),))


class ConvBN(nn.Module):
    features: int
    kernel: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (self.kernel, self.kernel), use_bias=False, name="conv")(x)
        return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))


class InceptionModule(nn.Module):
    widths: ModuleWidths

    @nn.compact
    def __call__(self, x, train: bool = False):
        w1, w3r, w3, wd_r, wd, wpool = self.widths
        b1 = ConvBN(w1, name="branch1x1")(x, train)
        b3 = ConvBN(w3r, name="branch3x3_reduce")(x, train)
        b3 = ConvBN(w3, 3, name="branch3x3")(b3, train)
        bd = ConvBN(wd_r, name="branch_double_reduce")(x, train)
        bd = ConvBN(wd, 3, name="branch_double_a")(bd, train)
        bd = ConvBN(wd, 3, name="branch_double_b")(bd, train)
        bp = nn.max_pool(x, window_shape=(3, 3), strides=(1, 1), padding="SAME")
        bp = ConvBN(wpool, name="branch_pool")(bp, train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Inception(nn.Module):
    num_classes: int = 10
    stages: Sequence[Sequence[ModuleWidths]] = FULL_STAGES
    stem_width: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBN(self.stem_width, 3, name="stem")(x, train)
        for s, modules in enumerate(self.stages):
            if s > 0:
                x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
            for m, widths in enumerate(modules):
                x = InceptionModule(tuple(widths), name=f"stage{s}_module{m}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def inception_fmnist(num_classes: int = 10) -> Inception:
    return Inception(num_classes)


def inception_tiny(num_classes: int = 10) -> Inception:
    return Inception(num_classes, TINY_STAGES, 8)
