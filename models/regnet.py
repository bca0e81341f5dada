"""RegNet-style network (Radosavovic et al. 2020) adapted to 28x28 inputs.

X blocks: 1x1 conv, 3x3 GROUPED conv (fixed group width, so ``feature_group_count`` is
between 1 and the channel count: neither dense nor depthwise), 1x1 conv, residual with a
strided 1x1 projection when the shape changes. ``se_ratio > 0`` adds RegNetY's
squeeze-and-excitation. A grouped conv only lets whole groups of channels, or the same
channels in every group, be removed together; this family exists to test that rule.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class XBlock(nn.Module):
    features: int
    stride: int = 1
    group_width: int = 8
    bottleneck_ratio: float = 1.0
    se_ratio: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        hidden = int(round(self.features * self.bottleneck_ratio))
        groups = hidden // self.group_width
        if groups * self.group_width != hidden:
            raise ValueError(f"width {hidden} is not a multiple of group width {self.group_width}")
        y = nn.relu(norm("bn1")(nn.Conv(hidden, (1, 1), use_bias=False, name="conv1")(x)))
        y = nn.Conv(hidden, (3, 3), self.stride, feature_group_count=groups, use_bias=False,
                    name="conv2")(y)
        y = nn.relu(norm("bn2")(y))
        if self.se_ratio:
            s = jnp.mean(y, axis=(1, 2), keepdims=True)
            s = nn.relu(nn.Conv(max(1, int(x.shape[-1] * self.se_ratio)), (1, 1),
                                name="se_reduce")(s))
            y = y * nn.sigmoid(nn.Conv(hidden, (1, 1), name="se_expand")(s))
        y = norm("bn3")(nn.Conv(self.features, (1, 1), use_bias=False, name="conv3")(y))
        if self.stride != 1 or x.shape[-1] != self.features:
            x = norm("proj_bn")(nn.Conv(self.features, (1, 1), self.stride, use_bias=False,
                                        name="proj")(x))
        return nn.relu(x + y)


class RegNet(nn.Module):
    num_classes: int = 10
    depths: Sequence[int] = (1, 1, 4, 7)
    widths: Sequence[int] = (24, 56, 152, 368)
    strides: Sequence[int] = (1, 2, 2, 2)
    group_width: int = 8
    stem_width: int = 32
    se_ratio: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.stem_width, (3, 3), use_bias=False, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x))
        for stage, (depth, width, stride) in enumerate(zip(self.depths, self.widths,
                                                           self.strides)):
            for i in range(depth):
                x = XBlock(width, stride if i == 0 else 1, self.group_width,
                           se_ratio=self.se_ratio, name=f"stage{stage}_block{i}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def regnetx_200mf(num_classes: int = 10) -> RegNet:
    """RegNetX-200MF's widths, depths and group width 8; stride-1 stem for 28x28."""
    return RegNet(num_classes)


def regnet_tiny(num_classes: int = 10) -> RegNet:
    """Two stages, group width 4 (2 and 4 groups), with SE so the gate meets groups too."""
    return RegNet(num_classes, (1, 1), (8, 16), (1, 2), 4, 8, 0.5)
