"""EfficientNet-B0 style network (Tan & Le 2019) adapted to 28x28 inputs.

MBConv blocks: 1x1 expand, kxk depthwise, squeeze-and-excitation (reduced to a quarter of
the block's INPUT channels, swish, sigmoid gate), 1x1 linear projection, residual when the
shape allows; swish (SiLU) everywhere. Unlike MobileNetV3 the SE width follows the block
input, not the expanded width, so the SE hidden layer is its own prunable group. Two of
B0's five downsamplings are kept so a 28x28 input ends at 7x7.
"""
from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from models.mobilenetv2 import MobileNetV2, round_channels

# (expansion, output channels, repeats, first stride, kernel): B0's stages, strides for 28x28.
B0_SETTING = ((1, 16, 1, 1, 3), (6, 24, 2, 1, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
              (6, 112, 3, 1, 5), (6, 192, 4, 1, 5), (6, 320, 1, 1, 3))
TINY_SETTING = ((1, 8, 1, 1, 3), (4, 8, 1, 2, 3), (4, 16, 1, 2, 5))


class MBConv(nn.Module):
    features: int
    stride: int
    expansion: int
    kernel: int
    se_ratio: float = 0.25

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        in_channels = x.shape[-1]
        hidden = in_channels * self.expansion
        y = x
        if self.expansion != 1:
            y = nn.swish(norm("expand_bn")(nn.Conv(hidden, (1, 1), use_bias=False,
                                                   name="expand")(y)))
        y = nn.Conv(hidden, (self.kernel, self.kernel), self.stride, feature_group_count=hidden,
                    use_bias=False, name="depthwise")(y)
        y = nn.swish(norm("depthwise_bn")(y))
        squeezed = max(1, int(in_channels * self.se_ratio))
        s = jnp.mean(y, axis=(1, 2), keepdims=True)
        s = nn.swish(nn.Conv(squeezed, (1, 1), name="se_reduce")(s))
        y = y * nn.sigmoid(nn.Conv(hidden, (1, 1), name="se_expand")(s))
        y = norm("project_bn")(nn.Conv(self.features, (1, 1), use_bias=False, name="project")(y))
        if self.stride == 1 and in_channels == self.features:
            y = x + y
        return y


class EfficientNet(MobileNetV2):
    """MobileNetV2's skeleton (stem, stages, 1x1 conv, pool, dropout, classifier) with MBConv
    blocks, swish, and the last width scaled like every other."""
    setting: Tuple[Tuple[int, int, int, int, int], ...] = B0_SETTING

    def _activation(self, x):
        return nn.swish(x)

    def _block(self, row, first: bool, name: str) -> nn.Module:
        """The block of setting row ``row`` (expansion, out, repeats, stride, kernel)."""
        expansion, out, _, stride, kernel = row
        return MBConv(round_channels(out * self.width), stride if first else 1, expansion,
                      kernel, name=name)

    def _last_width(self) -> int:
        return round_channels(self.last_channels * self.width)


def efficientnet_b0(num_classes: int = 10) -> EfficientNet:
    return EfficientNet(num_classes)


def efficientnet_tiny(num_classes: int = 10) -> EfficientNet:
    return EfficientNet(num_classes, 1.0, TINY_SETTING, 8, 32)
