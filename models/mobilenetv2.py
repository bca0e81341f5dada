"""MobileNetV2 (Sandler et al. 2018) adapted to 28x28 inputs.

Inverted residuals (1x1 expand, 3x3 depthwise, 1x1 linear project), ReLU6, residual adds
where the shape allows. For 28x28 the stem keeps stride 1 and only two stages downsample,
so the last feature map is 7x7. ``width`` scales every channel count (rounded to 8).
"""
from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2,
# with the strides adapted to 28x28 inputs.
FULL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1))
TINY_SETTING = ((1, 8, 1, 1), (2, 8, 1, 2), (2, 16, 2, 2))


def round_channels(c: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * c else rounded


class InvertedResidual(nn.Module):
    features: int
    stride: int
    expansion: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        hidden = x.shape[-1] * self.expansion
        y = x
        if self.expansion != 1:
            y = nn.relu6(norm("expand_bn")(nn.Conv(hidden, (1, 1), use_bias=False,
                                                   name="expand")(y)))
        y = nn.Conv(hidden, (3, 3), self.stride, feature_group_count=hidden, use_bias=False,
                    name="depthwise")(y)
        y = nn.relu6(norm("depthwise_bn")(y))
        y = norm("project_bn")(nn.Conv(self.features, (1, 1), use_bias=False, name="project")(y))
        if self.stride == 1 and x.shape[-1] == self.features:
            y = x + y
        return y


class MobileNetV2(nn.Module):
    """Stem, stages of inverted residuals, 1x1 conv, global pool, dropout, classifier.

    EfficientNet shares this skeleton and overrides the three hooks: ``_activation``,
    ``_block`` (the block of one setting row) and ``_last_width``."""
    num_classes: int = 10
    width: float = 1.0
    setting: Tuple[Tuple[int, int, int, int], ...] = FULL_SETTING
    stem_channels: int = 32
    last_channels: int = 1280
    dropout: float = 0.0

    def _activation(self, x):
        return nn.relu6(x)

    def _block(self, row, first: bool, name: str) -> nn.Module:
        """The block of setting row ``row`` (t, c, n, s); ``first`` of its stage."""
        t, c, _, s = row
        return InvertedResidual(round_channels(c * self.width), s if first else 1, t, name=name)

    def _last_width(self) -> int:
        return round_channels(self.last_channels * max(1.0, self.width))

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        x = nn.Conv(round_channels(self.stem_channels * self.width), (3, 3), use_bias=False,
                    name="stem")(x)
        x = self._activation(norm("stem_bn")(x))
        index = 0
        for row in self.setting:
            for i in range(row[2]):  # the row's repeats
                x = self._block(row, i == 0, f"block{index}")(x, train)
                index += 1
        x = nn.Conv(self._last_width(), (1, 1), use_bias=False, name="last")(x)
        x = self._activation(norm("last_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="head")(x)
