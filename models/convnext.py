"""ConvNeXt (Liu et al. 2022) adapted to 28x28 inputs.

Blocks: 7x7 depthwise conv, LayerNorm over channels, 1x1 expansion (as a Dense on the
channel axis), GELU, 1x1 projection, a learned per-channel layer scale, residual. Stages
are joined by LayerNorm + 2x2 stride-2 convs. The stem patchifies 2x2 (not 4x4) so a 28x28
input gives 14x14, 7x7 and 4x4 stages.

The paper initialises the layer scale at 1e-6, which makes every block nearly the identity
at initialisation; ``layer_scale_init`` is a field so tests can use a value that lets the
blocks actually change the output.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class ConvNeXtBlock(nn.Module):
    mlp_ratio: int = 4
    layer_scale_init: float = 1e-6

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        y = nn.Conv(dim, (7, 7), feature_group_count=dim, name="depthwise")(x)
        y = nn.LayerNorm(epsilon=1e-6, name="norm")(y)
        y = nn.gelu(nn.Dense(self.mlp_ratio * dim, name="pointwise1")(y))
        y = nn.Dense(dim, name="pointwise2")(y)
        gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale_init),
                           (dim,))
        return x + gamma * y


class ConvNeXt(nn.Module):
    num_classes: int = 10
    depths: Sequence[int] = (2, 2, 6)
    dims: Sequence[int] = (64, 128, 256)
    stem_patch: int = 2
    layer_scale_init: float = 1e-6

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no batch statistics or dropout; kept for the zoo's common signature
        p = self.stem_patch
        x = nn.Conv(self.dims[0], (p, p), p, padding="VALID", name="stem")(x)
        x = nn.LayerNorm(epsilon=1e-6, name="stem_norm")(x)
        for stage, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            if stage > 0:
                x = nn.LayerNorm(epsilon=1e-6, name=f"down{stage}_norm")(x)
                x = nn.Conv(dim, (2, 2), 2, padding="SAME", name=f"down{stage}")(x)
            for i in range(depth):
                x = ConvNeXtBlock(layer_scale_init=self.layer_scale_init,
                                  name=f"stage{stage}_block{i}")(x)
        x = nn.LayerNorm(epsilon=1e-6, name="final_norm")(jnp.mean(x, axis=(1, 2)))
        return nn.Dense(self.num_classes, name="head")(x)


def convnext_fmnist(num_classes: int = 10) -> ConvNeXt:
    return ConvNeXt(num_classes)


def convnext_tiny_test(num_classes: int = 10) -> ConvNeXt:
    """Two stages of one block; a layer scale of 0.5 so the blocks matter in tests."""
    return ConvNeXt(num_classes, (1, 1), (8, 16), 2, 0.5)
