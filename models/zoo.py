"""The model zoo as data: every family with a full and a tiny configuration.

Compression tools see a model only as ``fn(variables, *inputs)``; ``instantiate`` gives that
function (inference mode), its variables and an example input, so tests and benchmarks can
loop over every model without knowing its family. Register a model by adding a ZooEntry.
"""
import dataclasses
import functools
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp

from models import (convnext, densenet, efficientnet, fpn, inception, mixer, mobilenetv2,
                    mobilenetv3, nnx_cnn, regnet, resnet, transformer_lm, unet, vit)
from models.run_once import run_once


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[[], Any]          # full-size module (Fashion-MNIST experiments)
    build_tiny: Callable[[], Any]     # a few channels, for fast tests
    input_shape: Tuple[int, ...]      # one example, no batch axis
    tiny_input_shape: Tuple[int, ...] = None
    input_dtype: Any = jnp.float32
    # For integer inputs (token ids): the exclusive upper bound of example values.
    input_vocab: int = 0


def _linen_function(module):
    """Inference-mode ``fn(variables, x)`` of a linen module."""
    def fn(variables, x):
        return module.apply(variables, x, train=False)
    return fn


ZOO: Dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    ZOO[entry.name] = entry
    return entry


def _image_model(name, description, build, build_tiny, tiny_side: int = 12) -> ZooEntry:
    """A family on 28x28 one-channel images (Fashion-MNIST); the tiny model sees a
    ``tiny_side`` square."""
    return ZooEntry(name, description, build, build_tiny, (28, 28, 1), (tiny_side, tiny_side, 1))


# In this order: tests and benchmarks list the zoo as registered.
for _entry in (
        _image_model("resnet20", "CIFAR-style ResNet-20, basic blocks, widths 16/32/64",
                     lambda: resnet.resnet_cifar(20),
                     lambda: resnet.ResNet(10, (1, 1, 1), (4, 8, 8), "basic", 4)),
        _image_model("resnet_bottleneck", "CIFAR-style ResNet-29 with bottleneck blocks",
                     lambda: resnet.resnet_cifar(29, block="bottleneck"),
                     lambda: resnet.ResNet(10, (1, 1), (4, 8), "bottleneck", 8)),
        _image_model("mobilenetv2", "MobileNetV2 (width 1.0) adapted to 28x28",
                     lambda: mobilenetv2.MobileNetV2(),
                     lambda: mobilenetv2.MobileNetV2(10, 1.0, mobilenetv2.TINY_SETTING, 8, 32)),
        _image_model("mobilenetv3",
                     "MobileNetV3-Small: SE inverted residuals, hard-swish, 28x28",
                     mobilenetv3.mobilenetv3_small, mobilenetv3.mobilenetv3_tiny),
        _image_model("efficientnet",
                     "EfficientNet-B0 style: MBConv with SE on the input width, swish",
                     efficientnet.efficientnet_b0, efficientnet.efficientnet_tiny),
        _image_model("convnext",
                     "ConvNeXt: 7x7 depthwise, LayerNorm, GELU MLP, layer scale; 3 stages",
                     convnext.convnext_fmnist, convnext.convnext_tiny_test),
        _image_model("regnet",
                     "RegNetX-200MF style: grouped 3x3 convs (group width 8); tiny adds SE",
                     regnet.regnetx_200mf, regnet.regnet_tiny),
        _image_model("densenet", "DenseNet-BC-40, growth 12: dense blocks of concatenations",
                     densenet.densenet_bc40, densenet.densenet_tiny),
        _image_model("inception",
                     "Inception style: four parallel branches concatenated, BatchNorm",
                     inception.inception_fmnist, inception.inception_tiny),
        _image_model("unet", "U-Net: encoder-decoder, transposed-conv upsampling, skip "
                     "concatenations, per-pixel logits", unet.unet_fmnist, unet.unet_tiny, 16),
        _image_model("vit", "ViT: class token, learned position embedding, linen "
                     "MultiHeadDotProductAttention", vit.vit_fmnist, vit.vit_tiny),
        _image_model("vit_fused",
                     "ViT with hand-written attention: one fused qkv Dense, reshape into heads",
                     lambda: vit.vit_fmnist(attention="fused"),
                     lambda: vit.vit_tiny(attention="fused")),
        _image_model("mixer", "MLP-Mixer: token-mixing and channel-mixing MLPs",
                     mixer.mixer_fmnist, mixer.mixer_tiny),
        ZooEntry("transformer_lm", "Decoder-only LM: tied embedding, RMSNorm, SwiGLU, rotary, "
                 "grouped-query causal attention",
                 transformer_lm.transformer_lm_small, transformer_lm.transformer_lm_tiny,
                 (128,), (8,), input_dtype=jnp.int32, input_vocab=256),
        _image_model("fpn",
                     "Detector with FPN/PAN neck: nearest upsample + concat, per-level dense "
                     "heads", fpn.fpn_fmnist, fpn.fpn_tiny, 16),
        _image_model("nnx_cnn", "Flax NNX CNN with BatchNorm, exposed through nnx.split/merge",
                     nnx_cnn.nnx_cnn_fmnist, nnx_cnn.nnx_cnn_tiny)):
    register(_entry)


def instantiate(name: str, tiny: bool = True, batch: int = 2, seed: int = 0):
    """Returns ``(fn, variables, example_input)`` for a zoo model in inference mode."""
    entry = ZOO[name]
    module = entry.build_tiny() if tiny else entry.build()
    shape = (batch,) + ((entry.tiny_input_shape or entry.input_shape) if tiny
                        else entry.input_shape)
    key_init, key_x = jax.random.split(jax.random.key(seed))
    if entry.input_vocab:
        x = jax.random.randint(key_x, shape, 0, entry.input_vocab, dtype=entry.input_dtype)
    else:
        x = jax.random.normal(key_x, shape, entry.input_dtype)
    randomize = functools.partial(_randomize_batch_stats, seed=seed)
    if hasattr(module, "init"):
        init = lambda key, x: randomize(module.init(key, x))
        return _linen_function(module), run_once(init, key_init, x), x
    # Non-linen models (e.g. Flax NNX) provide their own (fn, variables) constructor.
    fn, variables = module(key_init)
    return fn, run_once(randomize, variables), x


def _randomize_batch_stats(variables, seed):
    """Freshly initialised BatchNorm is the identity; random statistics make tests honest."""
    if "batch_stats" not in variables:
        return variables
    leaves, treedef = jax.tree_util.tree_flatten(variables["batch_stats"])
    # Two draws for all leaves (not one per leaf): each draw costs a compilation.
    total = sum(l.size for l in leaves)
    key_var, key_mean = jax.random.split(jax.random.key(seed + 1))
    variances = jax.random.uniform(key_var, (total,), jnp.float32, 0.5, 1.5)
    means = 0.1 * jax.random.normal(key_mean, (total,), jnp.float32)
    new, offset = [], 0
    for i, l in enumerate(leaves):
        # Flax orders BatchNorm stats as (mean, var): odd leaves are variances, kept positive.
        source = variances if l.ndim and i % 2 else means
        new.append(source[offset:offset + l.size].reshape(l.shape).astype(l.dtype))
        offset += l.size
    return {**variables, "batch_stats": jax.tree_util.tree_unflatten(treedef, new)}
