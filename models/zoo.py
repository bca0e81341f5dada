"""The model zoo as data: every family with a full and a tiny configuration.

Compression tools see a model only as ``fn(variables, *inputs)``; ``instantiate`` gives that
function (inference mode), its variables and an example input, so tests and benchmarks can
loop over every model without knowing its family. Register a model by adding a ZooEntry.
"""
import dataclasses
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp

from models import mobilenetv2, resnet


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


register(ZooEntry(
    "resnet20", "CIFAR-style ResNet-20, basic blocks, widths 16/32/64",
    lambda: resnet.resnet_cifar(20), lambda: resnet.ResNet(10, (1, 1, 1), (4, 8, 8), "basic", 4),
    (28, 28, 1), (12, 12, 1)))
register(ZooEntry(
    "resnet_bottleneck", "CIFAR-style ResNet-29 with bottleneck blocks",
    lambda: resnet.resnet_cifar(29, block="bottleneck"),
    lambda: resnet.ResNet(10, (1, 1), (4, 8), "bottleneck", 8),
    (28, 28, 1), (12, 12, 1)))
register(ZooEntry(
    "mobilenetv2", "MobileNetV2 (width 1.0) adapted to 28x28",
    lambda: mobilenetv2.MobileNetV2(), 
    lambda: mobilenetv2.MobileNetV2(10, 1.0, mobilenetv2.TINY_SETTING, 8, 32),
    (28, 28, 1), (12, 12, 1)))


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
    if hasattr(module, "init"):
        variables = module.init(key_init, x)
        return _linen_function(module), _randomize_batch_stats(variables, seed), x
    # Non-linen models (e.g. Flax NNX) provide their own (fn, variables) constructor.
    fn, variables = module(key_init)
    return fn, variables, x


def _randomize_batch_stats(variables, seed):
    """Freshly initialised BatchNorm is the identity; random statistics make tests honest."""
    if "batch_stats" not in variables:
        return variables
    leaves, treedef = jax.tree_util.tree_flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    new = [jax.random.uniform(k, l.shape, l.dtype, 0.5, 1.5) if l.ndim and i % 2 else
           0.1 * jax.random.normal(k, l.shape, l.dtype)
           for i, (k, l) in enumerate(zip(keys, leaves))]
    # Flax orders BatchNorm stats as (mean, var): odd leaves are variances, kept positive.
    return {**variables, "batch_stats": jax.tree_util.tree_unflatten(treedef, new)}
