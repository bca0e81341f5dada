"""CIFAR-style ResNets (He et al. 2016) adapted to small inputs such as 28x28 Fashion-MNIST.

Plain Flax linen with no compression hooks: the compression tools must find the channel
structure of this code from its jaxpr alone. Depth 6n+2 uses basic blocks (ResNet-20/32/56);
``block="bottleneck"`` uses 1x1-3x3-1x1 bottlenecks with expansion 4 (depth 9n+2).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        y = nn.Conv(self.features, (3, 3), self.stride, use_bias=False, name="conv1")(x)
        y = nn.relu(norm("bn1")(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False, name="conv2")(y)
        y = norm("bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), self.stride, use_bias=False, name="proj")(x)
            x = norm("proj_bn")(x)
        return nn.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual."""
    features: int
    stride: int = 1
    expansion: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        out = self.features * self.expansion
        y = nn.relu(norm("bn1")(nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x)))
        y = nn.relu(norm("bn2")(nn.Conv(self.features, (3, 3), self.stride, use_bias=False,
                                        name="conv2")(y)))
        y = norm("bn3")(nn.Conv(out, (1, 1), use_bias=False, name="conv3")(y))
        if self.stride != 1 or x.shape[-1] != out:
            x = norm("proj_bn")(nn.Conv(out, (1, 1), self.stride, use_bias=False, name="proj")(x))
        return nn.relu(x + y)


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nn.Module):
    """A stem conv, then stages of residual blocks (stride 2 between stages), mean pool, dense."""
    num_classes: int = 10
    blocks_per_stage: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)
    block: str = "basic"
    stem_width: int = 16

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.stem_width, (3, 3), use_bias=False, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x))
        block_cls = BLOCKS[self.block]
        for stage, (n, width) in enumerate(zip(self.blocks_per_stage, self.widths)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                x = block_cls(width, stride, name=f"stage{stage}_block{i}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def resnet_cifar(depth: int = 20, num_classes: int = 10, width: int = 16,
                 block: str = "basic") -> ResNet:
    """ResNet-(6n+2) with basic blocks or ResNet-(9n+2) with bottlenecks, CIFAR-style."""
    per_block = 2 if block == "basic" else 3
    if (depth - 2) % (3 * per_block):
        raise ValueError(f"depth {depth} is not {3 * per_block}n+2 for {block} blocks")
    n = (depth - 2) // (3 * per_block)
    return ResNet(num_classes, (n, n, n), (width, 2 * width, 4 * width), block, width)
