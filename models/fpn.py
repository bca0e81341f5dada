"""A small dense detector: conv backbone, FPN/PAN neck with upsample + concat, per-level heads.

Backbone: a stem and three stride-2 stages giving C3, C4, C5 (14x14, 7x7, 4x4 for 28x28).
Neck, in the YOLOv5 / PANet style: top-down, each coarser map is reduced by a 1x1 conv,
upsampled to the finer map's size with ``jax.image.resize`` (nearest; 4x4 -> 7x7 is not an
integer factor) and CONCATENATED with the backbone map, then fused by a 3x3 conv; bottom-up,
a stride-2 conv goes back down and is concatenated with the top-down map of that level.
Heads: a 1x1 conv per level predicting, per location and anchor, 4 box offsets, an
objectness logit and class logits. All levels' predictions are flattened and concatenated
into one (batch, locations * anchors, 5 + classes) array.

What this family tests: channels that cross scales (resize is a gather on spatial axes
only) and that feed both a concatenation and a head.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvBN(nn.Module):
    features: int
    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (self.kernel, self.kernel), self.stride, use_bias=False,
                    name="conv")(x)
        return nn.silu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))


def upsample_to(x, like):
    """Nearest-neighbour resize of x's spatial axes to those of ``like``."""
    return jax.image.resize(x, x.shape[:1] + like.shape[1:3] + x.shape[3:], "nearest")


class FPNDetector(nn.Module):
    num_classes: int = 10
    num_anchors: int = 1
    backbone_widths: Sequence[int] = (32, 64, 128)
    stem_width: int = 16
    neck_width: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBN(self.stem_width, name="stem")(x, train)
        features = []
        for i, width in enumerate(self.backbone_widths):
            x = ConvBN(width, stride=2, name=f"stage{i + 3}")(x, train)
            x = ConvBN(width, name=f"stage{i + 3}_conv")(x, train)
            features.append(x)
        c3, c4, c5 = features
        n = self.neck_width
        # Top-down: reduce, upsample, concatenate with the finer backbone map, fuse.
        p5 = ConvBN(n, 1, name="lateral5")(c5, train)
        p4 = ConvBN(n, name="top_down4")(jnp.concatenate([upsample_to(p5, c4), c4], -1), train)
        p4_reduced = ConvBN(n, 1, name="lateral4")(p4, train)
        p3 = ConvBN(n, name="top_down3")(
            jnp.concatenate([upsample_to(p4_reduced, c3), c3], -1), train)
        # Bottom-up: stride-2 conv, concatenate with the top-down map of that level, fuse.
        d3 = ConvBN(n, stride=2, name="down3")(p3, train)
        n4 = ConvBN(n, name="bottom_up4")(jnp.concatenate([d3, p4_reduced], -1), train)
        d4 = ConvBN(n, stride=2, name="down4")(n4, train)
        n5 = ConvBN(n, name="bottom_up5")(jnp.concatenate([d4, p5], -1), train)
        outputs = []
        per_anchor = 5 + self.num_classes
        for level, y in zip((3, 4, 5), (p3, n4, n5)):
            y = nn.Conv(self.num_anchors * per_anchor, (1, 1), name=f"head{level}")(y)
            outputs.append(y.reshape(y.shape[0], -1, per_anchor))
        return jnp.concatenate(outputs, axis=1)


def fpn_fmnist(num_classes: int = 10) -> FPNDetector:
    """28x28 input: levels at 14x14, 7x7 and 4x4, 261 predictions per image."""
    return FPNDetector(num_classes)


def fpn_tiny(num_classes: int = 3) -> FPNDetector:
    """16x16 input: levels at 8x8, 4x4 and 2x2, 84 predictions per image."""
    return FPNDetector(num_classes, 1, (4, 8, 8), 4, 8)
