"""XLA's ``padding='SAME'`` as explicit (low, high) pads, without importing PyTorch.

The PyTorch twin (``benchmarks.torch_resnet20``) needs it to reproduce Flax's asymmetric
padding of stride-2 convs; it lives here so that its test runs where torch is absent.
"""
from typing import Tuple


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """(low, high) padding of XLA's 'SAME' for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
