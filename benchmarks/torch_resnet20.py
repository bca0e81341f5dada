"""A PyTorch twin of our Flax CIFAR-style ResNet (``models.resnet``), loaded with our weights.

Comparing pruning against Torch-Pruning is only fair when both start from the *same*
trained network, so this module rebuilds ``models.resnet.ResNet`` (basic blocks) layer for
layer in PyTorch and copies a Flax variables tree into it. Three details make the two
compute the same function:

- Flax's ``padding='SAME'`` pads a stride-2 3x3 conv on an even input by (0, 1), not (1, 1)
  as PyTorch's ``padding=1`` would: such convs get an explicit ``ZeroPad2d`` in front;
- BatchNorm: Flax ``momentum=0.9`` is PyTorch ``momentum=0.1``; both use epsilon 1e-5;
- layout: Flax is NHWC with HWIO kernels, PyTorch NCHW with OIHW kernels (the twin takes
  NCHW input; ``nchw`` converts a numpy batch from our pipeline).

Module names follow the Flax parameter names (``stem``, ``stage1_block0.conv1`` ...), so a
pruned PyTorch model still reads like the Flax one. Only basic blocks are mirrored.
"""
from typing import Sequence

import numpy as np
import torch
from torch import nn

from benchmarks.xla_same_padding import same_padding

FLAX_BN_EPSILON = 1e-5
FLAX_BN_MOMENTUM = 0.9


class SameConv(nn.Module):
    """A bias-free conv with Flax 'SAME' padding for a fixed input size: symmetric padding
    inside the conv, asymmetric padding as a ``ZeroPad2d`` before it."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int):
        super().__init__()
        low, high = same_padding(size, kernel, stride)
        self.pad = nn.Identity() if low == high else nn.ZeroPad2d((low, high, low, high))
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=low if low == high else 0,
                              bias=False)
        self.out_size = -(-size // stride)

    def forward(self, x):
        return self.conv(self.pad(x))


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=FLAX_BN_EPSILON, momentum=1.0 - FLAX_BN_MOMENTUM)


class TorchBasicBlock(nn.Module):
    def __init__(self, cin: int, features: int, stride: int, size: int):
        super().__init__()
        self.conv1 = SameConv(cin, features, 3, stride, size)
        self.bn1 = batch_norm(features)
        self.conv2 = SameConv(features, features, 3, 1, self.conv1.out_size)
        self.bn2 = batch_norm(features)
        self.relu = nn.ReLU()
        self.out_size = self.conv1.out_size
        if stride != 1 or cin != features:
            self.proj = SameConv(cin, features, 1, stride, size)
            self.proj_bn = batch_norm(features)
        else:
            self.proj = self.proj_bn = None

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.proj is not None:
            x = self.proj_bn(self.proj(x))
        return self.relu(x + y)


class TorchResNet(nn.Module):
    """``models.resnet.ResNet`` with basic blocks, in PyTorch (NCHW input)."""

    def __init__(self, num_classes: int = 10, blocks_per_stage: Sequence[int] = (3, 3, 3),
                 widths: Sequence[int] = (16, 32, 64), stem_width: int = 16,
                 in_channels: int = 1, input_size: int = 28):
        super().__init__()
        self.stem = SameConv(in_channels, stem_width, 3, 1, input_size)
        self.stem_bn = batch_norm(stem_width)
        self.relu = nn.ReLU()
        self.block_names = []
        cin, size = stem_width, input_size
        for stage, (n, width) in enumerate(zip(blocks_per_stage, widths)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                block = TorchBasicBlock(cin, width, stride, size)
                name = f"stage{stage}_block{i}"
                self.add_module(name, block)
                self.block_names.append(name)
                cin, size = width, block.out_size
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.stem_bn(self.stem(x)))
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.head(x.mean(dim=(2, 3)))


def twin_of(module, input_shape: Sequence[int]) -> TorchResNet:
    """An (uninitialized-weights) twin of a Flax ``ResNet`` for NHWC inputs of
    ``input_shape`` = (H, W, C) or (N, H, W, C)."""
    if module.block != "basic":
        raise NotImplementedError(f"only basic blocks are mirrored, got {module.block!r}")
    h, w, c = tuple(input_shape)[-3:]
    if h != w:
        raise NotImplementedError("square inputs only")
    return TorchResNet(module.num_classes, tuple(module.blocks_per_stage),
                       tuple(module.widths), module.stem_width, c, h)


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, np.float32, copy=True))


def _load_conv(conv: SameConv, kernel):
    conv.conv.weight.data.copy_(_tensor(np.transpose(np.asarray(kernel), (3, 2, 0, 1))))


def _load_bn(bn: nn.BatchNorm2d, params, stats):
    bn.weight.data.copy_(_tensor(params["scale"]))
    bn.bias.data.copy_(_tensor(params["bias"]))
    bn.running_mean.copy_(_tensor(stats["mean"]))
    bn.running_var.copy_(_tensor(stats["var"]))


def load_flax_variables(model: TorchResNet, variables) -> TorchResNet:
    """Copies a Flax ``{'params', 'batch_stats'}`` tree of ``models.resnet.ResNet`` into the
    twin (in place; returns it). Shapes must agree exactly."""
    params, stats = variables["params"], variables["batch_stats"]
    with torch.no_grad():
        _load_conv(model.stem, params["stem"]["kernel"])
        _load_bn(model.stem_bn, params["stem_bn"], stats["stem_bn"])
        for name in model.block_names:
            block, p, s = getattr(model, name), params[name], stats[name]
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("proj", "proj_bn")):
                if getattr(block, conv) is None:
                    continue
                _load_conv(getattr(block, conv), p[conv]["kernel"])
                _load_bn(getattr(block, bn), p[bn], s[bn])
        model.head.weight.copy_(_tensor(np.asarray(params["head"]["kernel"]).T))
        model.head.bias.copy_(_tensor(params["head"]["bias"]))
    return model


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32)


def _conv_kernel(conv: SameConv) -> np.ndarray:
    return np.transpose(_array(conv.conv.weight), (2, 3, 1, 0))


def _bn_variables(bn: nn.BatchNorm2d):
    return ({"scale": _array(bn.weight), "bias": _array(bn.bias)},
            {"mean": _array(bn.running_mean), "var": _array(bn.running_var)})


def to_flax_variables(model: TorchResNet) -> dict:
    """The inverse of ``load_flax_variables``: the twin's weights as a Flax
    ``{'params', 'batch_stats'}`` tree, at whatever widths the twin has now (a
    Torch-Pruning result reads back at its pruned widths)."""
    params, stats = {"stem": {"kernel": _conv_kernel(model.stem)}}, {}
    params["stem_bn"], stats["stem_bn"] = _bn_variables(model.stem_bn)
    for name in model.block_names:
        block, p, s = getattr(model, name), {}, {}
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("proj", "proj_bn")):
            if getattr(block, conv) is None:
                continue
            p[conv] = {"kernel": _conv_kernel(getattr(block, conv))}
            p[bn], s[bn] = _bn_variables(getattr(block, bn))
        params[name], stats[name] = p, s
    params["head"] = {"kernel": _array(model.head.weight).T, "bias": _array(model.head.bias)}
    return {"params": params, "batch_stats": stats}


def from_flax(module, variables, input_shape: Sequence[int]) -> TorchResNet:
    """The twin of ``module`` with ``variables`` loaded, in eval mode."""
    return load_flax_variables(twin_of(module, input_shape), variables).eval()


def nchw(images: np.ndarray) -> torch.Tensor:
    """A float NHWC numpy batch (our pipeline's) as an NCHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(images, np.float32),
                                                              (0, 3, 1, 2))))
