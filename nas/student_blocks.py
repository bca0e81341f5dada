"""Student block builders: a registry from block type to a Flax module that maps a teacher
block's input shape to its output shape.

A student replaces one teacher block, so it must take the same input activation and give
the same output shape; the stride (spatial down-sampling) and the output width come from
the teacher block, while everything else (type, depth, kernel, expansion, activation,
squeeze-excite, inner width) comes from a ``BlockChoice``. The types cover the usual edge
building blocks (plain residual convs as in ResNet, MobileNet's inverted residual, the fused
inverted residual of EfficientNet-V2, depthwise-separable convs, an MLP-Mixer block) so the
search space is diverse by design. A new type is one ``register_block(name, builder)``.

``plain`` with depth 2, kernel 3, ReLU, width 1 is layer for layer a ResNet basic block with
the same parameter names (conv1, bn1, conv2, bn2, proj, proj_bn), so it can be initialized
from a teacher block (``nas.teacher_init``), also at a narrower ``width``.
"""
import dataclasses
from typing import Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: Dict[str, Callable] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "hardswish": jax.nn.hard_swish,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
}


@dataclasses.dataclass(frozen=True)
class BlockChoice:
    """One point of the search space for one block position (hashable, JSON-friendly)."""
    type: str
    depth: int = 1
    kernel: int = 3
    expansion: float = 1.0          # inner width / input width (IR, fused IR, mixer MLPs)
    width: float = 1.0              # inner width / output width (plain, dw-separable)
    activation: str = "relu"
    se: bool = False
    # '' : the block type's own ending; an activation name: end like a ResNet teacher block,
    # the (projected, where the shape changes) block input added and this activation applied.
    end: str = ""

    @property
    def key(self) -> str:
        return (f"{self.type}-d{self.depth}-k{self.kernel}-e{self.expansion:g}-w{self.width:g}"
                f"-{self.activation}{'-se' if self.se else ''}"
                f"{'-end' + self.end if self.end else ''}")

    def as_dict(self):
        return dataclasses.asdict(self)


def _channels(value: float, divisor: int = 4) -> int:
    return max(divisor, int(round(value / divisor)) * divisor)


def _norm(train: bool, name: str):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)


class SqueezeExcite(nn.Module):
    """Channel gate from global pooling (hard-sigmoid, as on mobile)."""
    reduction: int = 4

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = jax.nn.relu(nn.Conv(max(4, c // self.reduction), (1, 1), name="reduce")(s))
        return x * jax.nn.hard_sigmoid(nn.Conv(c, (1, 1), name="expand")(s))


class StudentBlock(nn.Module):
    """What every student block is given: its choice, and the teacher block's output width
    and stride."""
    choice: BlockChoice
    out_channels: int
    stride: int

    def _settings(self):
        """(choice, activation function, kernel size): what each block's layers read."""
        return self.choice, ACTIVATIONS[self.choice.activation], self.choice.kernel

    def _shortcut(self, x, train: bool):
        """The block input at the output's shape: a 1x1 conv + BN where the block changes
        the resolution or the width (the ResNet projection, same parameter names)."""
        if self.stride != 1 or x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), self.stride, use_bias=False, name="proj")(x)
            x = _norm(train, "proj_bn")(x)
        return x

    def _end(self, x, branch, train: bool):
        """``choice.end``'s activation of the (projected) input plus the branch."""
        return ACTIVATIONS[self.choice.end](self._shortcut(x, train) + branch)

    def _inner_width(self) -> int:
        """The width between layers of the blocks whose ``width`` is relative to the output."""
        return _channels(self.out_channels * self.choice.width)


class PlainConvBlock(StudentBlock):
    """``depth`` kxk conv-BN-act layers with a residual (ResNet basic block at depth 2)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        c, act, k = self._settings()
        inner = self._inner_width()
        y = x
        for i in range(c.depth):
            last = i == c.depth - 1
            y = nn.Conv(self.out_channels if last else inner, (k, k),
                        self.stride if i == 0 else 1, use_bias=False, name=f"conv{i + 1}")(y)
            y = _norm(train, f"bn{i + 1}")(y)
            if not last:
                y = act(y)
        if c.se:
            y = SqueezeExcite(name="se")(y)
        return ACTIVATIONS[c.end or c.activation](self._shortcut(x, train) + y)


class InvertedResidual(StudentBlock):
    """MobileNetV2 layers: 1x1 expand, kxk depthwise, [SE], 1x1 linear project."""
    fused: bool = False             # fused IR: the expand and depthwise become one kxk conv

    @nn.compact
    def __call__(self, x, train: bool = False):
        c, act, k = self._settings()
        block_input = x
        for i in range(c.depth):
            stride = self.stride if i == 0 else 1
            cin = x.shape[-1]
            hidden = _channels(cin * c.expansion)
            if self.fused:
                y = nn.Conv(hidden, (k, k), stride, use_bias=False, name=f"l{i}_fused")(x)
                y = act(_norm(train, f"l{i}_fused_bn")(y))
            else:
                y = x
                if hidden != cin:
                    y = nn.Conv(hidden, (1, 1), use_bias=False, name=f"l{i}_expand")(y)
                    y = act(_norm(train, f"l{i}_expand_bn")(y))
                y = nn.Conv(hidden, (k, k), stride, feature_group_count=hidden,
                            use_bias=False, name=f"l{i}_dw")(y)
                y = act(_norm(train, f"l{i}_dw_bn")(y))
            if c.se:
                y = SqueezeExcite(name=f"l{i}_se")(y)
            y = nn.Conv(self.out_channels, (1, 1), use_bias=False, name=f"l{i}_project")(y)
            y = _norm(train, f"l{i}_project_bn")(y)
            # With an end, the last layer's residual is the block's (see _end).
            skip = stride == 1 and cin == self.out_channels and not (c.end and i == c.depth - 1)
            x = x + y if skip else y
        return self._end(block_input, x, train) if c.end else x


class DepthwiseSeparable(StudentBlock):
    """``depth`` x (kxk depthwise-BN-act, 1x1 pointwise-BN-act), residual when shapes allow."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        c, act, k = self._settings()
        inner = self._inner_width()
        y = x
        for i in range(c.depth):
            cin = y.shape[-1]
            y = nn.Conv(cin, (k, k), self.stride if i == 0 else 1, feature_group_count=cin,
                        use_bias=False, name=f"l{i}_dw")(y)
            y = act(_norm(train, f"l{i}_dw_bn")(y))
            if c.se:
                y = SqueezeExcite(name=f"l{i}_se")(y)
            out = self.out_channels if i == c.depth - 1 else inner
            y = nn.Conv(out, (1, 1), use_bias=False, name=f"l{i}_pw")(y)
            y = _norm(train, f"l{i}_pw_bn")(y)
            if i < c.depth - 1:
                y = act(y)
        if c.end:
            return self._end(x, y, train)
        if self.stride == 1 and x.shape[-1] == self.out_channels:
            y = y + x
        return act(y)


class MixerBlock(StudentBlock):
    """MLP-Mixer layers on the feature map's positions (tokens) and channels; a strided
    patch-merging conv first when the block changes resolution or width."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        c, act, _ = self._settings()
        if self.stride != 1 or x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (self.stride, self.stride), self.stride,
                        name="patch_merge")(x)
        n, h, w, ch = x.shape
        tokens = x.reshape(n, h * w, ch)
        for i in range(c.depth):
            y = nn.LayerNorm(name=f"l{i}_token_norm")(tokens)
            y = jnp.swapaxes(y, 1, 2)
            y = nn.Dense(_channels(h * w * c.width), name=f"l{i}_token_fc1")(y)
            y = nn.Dense(h * w, name=f"l{i}_token_fc2")(act(y))
            tokens = tokens + jnp.swapaxes(y, 1, 2)
            y = nn.LayerNorm(name=f"l{i}_channel_norm")(tokens)
            y = nn.Dense(_channels(ch * c.expansion), name=f"l{i}_channel_fc1")(y)
            tokens = tokens + nn.Dense(ch, name=f"l{i}_channel_fc2")(act(y))
        out = tokens.reshape(n, h, w, ch)
        # The patch-merged input already runs through the token residuals: only the
        # activation of an end applies.
        return ACTIVATIONS[c.end](out) if c.end else out


Builder = Callable[[BlockChoice, Tuple[int, ...], Tuple[int, ...]], nn.Module]
BLOCK_BUILDERS: Dict[str, Builder] = {}


def register_block(name: str, builder: Builder) -> None:
    """``builder(choice, in_shape, out_shape) -> flax module`` with ``module(x, train)``."""
    BLOCK_BUILDERS[name] = builder


def stride_between(in_shape, out_shape) -> int:
    if len(in_shape) != 4 or len(out_shape) != 4:
        raise ValueError(f"student blocks map NHWC feature maps; got {in_shape}->{out_shape}")
    if in_shape[1] % out_shape[1] or in_shape[1] // out_shape[1] != in_shape[2] // out_shape[2]:
        raise ValueError(f"no integer stride takes {in_shape} to {out_shape}")
    return in_shape[1] // out_shape[1]


def _conv_builder(cls, **extra):
    def build(choice, in_shape, out_shape):
        return cls(choice, out_shape[-1], stride_between(in_shape, out_shape), **extra)
    return build


register_block("plain", _conv_builder(PlainConvBlock))
register_block("inverted_residual", _conv_builder(InvertedResidual))
register_block("fused_ir", _conv_builder(InvertedResidual, fused=True))
register_block("dw_separable", _conv_builder(DepthwiseSeparable))
register_block("mixer", _conv_builder(MixerBlock))


def build_student(choice: BlockChoice, in_shape, out_shape) -> nn.Module:
    if choice.type not in BLOCK_BUILDERS:
        raise KeyError(f"unknown block type {choice.type!r}; registered: {sorted(BLOCK_BUILDERS)}")
    for activation in (choice.activation, choice.end or choice.activation):
        if activation not in ACTIVATIONS:
            raise KeyError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    return BLOCK_BUILDERS[choice.type](choice, tuple(in_shape), tuple(out_shape))


def init_student(module: nn.Module, in_shape, seed: int = 0):
    x = jnp.zeros((1,) + tuple(in_shape[1:]), jnp.float32)
    return module.init(jax.random.key(seed), x)


__all__ = ["BlockChoice", "ACTIVATIONS", "BLOCK_BUILDERS", "register_block", "build_student",
           "init_student", "stride_between", "PlainConvBlock",
           "InvertedResidual", "DepthwiseSeparable", "MixerBlock", "SqueezeExcite", "StudentBlock"]
