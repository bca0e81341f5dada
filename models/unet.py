"""U-Net (Ronneberger et al. 2015) with BatchNorm, for per-pixel classification.

Encoder: at each level two 3x3 conv-BN-ReLU, then 2x2 max pooling; the deepest level is the
bottleneck. Decoder: a 2x2 stride-2 transposed conv upsamples, the encoder's feature map of
the same level is CONCATENATED as a skip, and two conv-BN-ReLU follow. A 1x1 conv head gives
per-pixel logits of the same spatial size as the input. Encoder channels are read both by
the next level and by the decoder across the skip, which is what this family tests.

Default task on Fashion-MNIST: 11 classes per pixel (background, or the garment's class).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class DoubleConv(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in (1, 2):
            x = nn.Conv(self.features, (3, 3), use_bias=False, name=f"conv{i}")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     name=f"bn{i}")(x))
        return x


class UNet(nn.Module):
    """``features[i]`` is the width at level i; the last one is the bottleneck."""
    num_classes: int = 11
    features: Sequence[int] = (32, 64, 128)

    @nn.compact
    def __call__(self, x, train: bool = False):
        skips = []
        for level, width in enumerate(self.features[:-1]):
            x = DoubleConv(width, name=f"down{level}")(x, train)
            skips.append(x)
            x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
        x = DoubleConv(self.features[-1], name="bottleneck")(x, train)
        for level in reversed(range(len(self.features) - 1)):
            width = self.features[level]
            x = nn.ConvTranspose(width, (2, 2), (2, 2), name=f"upsample{level}")(x)
            x = jnp.concatenate([skips[level], x], axis=-1)
            x = DoubleConv(width, name=f"up{level}")(x, train)
        return nn.Conv(self.num_classes, (1, 1), name="head")(x)


def unet_fmnist(num_classes: int = 11) -> UNet:
    """Levels at 28x28 and 14x14, bottleneck at 7x7."""
    return UNet(num_classes)


def unet_tiny(num_classes: int = 3) -> UNet:
    """16x16 input: levels at 16 and 8, bottleneck at 4."""
    return UNet(num_classes, (4, 8, 8))
