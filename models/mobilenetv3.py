"""MobileNetV3 (Howard et al. 2019) adapted to 28x28 inputs.

Inverted residuals whose expanded channels pass a squeeze-and-excitation gate (global mean,
1x1 reduce, ReLU, 1x1 expand, hard-sigmoid, multiply), with hard-swish or ReLU per block.
The SE gate multiplies the depthwise output channel by channel, so it ties the expand,
depthwise, SE-reduce input and SE-expand output channels into one group: the pattern the
compression tools must recover from the jaxpr alone. The stem keeps stride 1 so the last
feature map of a 28x28 input is 7x7.
"""
from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from models.mobilenetv2 import round_channels

ACTIVATIONS = {"relu": nn.relu, "hswish": nn.hard_swish}

# (kernel, expanded channels, output channels, squeeze-excite, activation, stride):
# MobileNetV3-Small's Table 2, with the strides adapted to 28x28 (two downsamplings).
SMALL_SETTING = (
    (3, 16, 16, True, "relu", 1),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1),
    (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
)
TINY_SETTING = (
    (3, 8, 8, True, "relu", 1),
    (3, 16, 8, False, "hswish", 2),
    (3, 24, 16, True, "hswish", 2),
)


class SqueezeExcite(nn.Module):
    """Channel attention: a gate in [0, 1] per channel computed from the global mean."""
    reduce_ratio: float = 0.25

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        squeezed = round_channels(channels * self.reduce_ratio)
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(nn.Conv(squeezed, (1, 1), name="reduce")(s))
        s = nn.hard_sigmoid(nn.Conv(channels, (1, 1), name="expand")(s))
        return x * s


class InvertedResidualSE(nn.Module):
    kernel: int
    hidden: int
    features: int
    use_se: bool
    activation: str
    stride: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        act = ACTIVATIONS[self.activation]
        y = x
        if self.hidden != x.shape[-1]:
            y = act(norm("expand_bn")(nn.Conv(self.hidden, (1, 1), use_bias=False,
                                              name="expand")(y)))
        y = nn.Conv(self.hidden, (self.kernel, self.kernel), self.stride,
                    feature_group_count=self.hidden, use_bias=False, name="depthwise")(y)
        y = act(norm("depthwise_bn")(y))
        if self.use_se:
            y = SqueezeExcite(name="se")(y)
        y = norm("project_bn")(nn.Conv(self.features, (1, 1), use_bias=False, name="project")(y))
        if self.stride == 1 and x.shape[-1] == self.features:
            y = x + y
        return y


class MobileNetV3(nn.Module):
    """Stem, SE inverted residuals, 1x1 conv, global pool, a hidden dense layer, classifier."""
    num_classes: int = 10
    width: float = 1.0
    setting: Tuple[Tuple[int, int, int, bool, str, int], ...] = SMALL_SETTING
    stem_channels: int = 16
    last_channels: int = 576
    head_channels: int = 1024

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        scale = lambda c: round_channels(c * self.width)
        x = nn.Conv(scale(self.stem_channels), (3, 3), use_bias=False, name="stem")(x)
        x = nn.hard_swish(norm("stem_bn")(x))
        for index, (k, hidden, out, se, act, stride) in enumerate(self.setting):
            x = InvertedResidualSE(k, scale(hidden), scale(out), se, act, stride,
                                   name=f"block{index}")(x, train)
        x = nn.Conv(scale(self.last_channels), (1, 1), use_bias=False, name="last")(x)
        x = nn.hard_swish(norm("last_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.hard_swish(nn.Dense(self.head_channels, name="pre_head")(x))
        return nn.Dense(self.num_classes, name="head")(x)


def mobilenetv3_small(num_classes: int = 10, width: float = 1.0) -> MobileNetV3:
    return MobileNetV3(num_classes, width)


def mobilenetv3_tiny(num_classes: int = 10) -> MobileNetV3:
    return MobileNetV3(num_classes, 1.0, TINY_SETTING, 8, 32, 32)
