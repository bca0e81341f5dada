"""A small CNN written in Flax NNX, exposed to the tools as a pure ``fn(variables, x)``.

NNX modules are stateful Python objects; compression tools need a pure function of a
pytree of arrays. ``make_nnx_function`` splits the module once into a graph definition and
its parameters and batch statistics as plain nested dicts (the same
``{"params": ..., "batch_stats": ...}`` layout as linen), and ``fn`` rebuilds the module
from them with ``nnx.merge`` on every call. ``fn`` copies the (abstract) template state before
filling it, because merging the original state inside ``jax.grad`` under ``jax.jit`` can
raise TraceContextError on BatchStat.

The network: stride-1 and stride-2 conv-BatchNorm-ReLU blocks, global mean pool, linear.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models.run_once import run_once


class ConvBlock(nnx.Module):
    def __init__(self, in_features: int, out_features: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(in_features, out_features, (3, 3), stride, use_bias=False,
                             rngs=rngs)
        self.bn = nnx.BatchNorm(out_features, momentum=0.9, rngs=rngs)

    def __call__(self, x, train: bool = False):
        return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))


class NnxCNN(nnx.Module):
    """Per stage: a stride-2 block (except the first stage) and a stride-1 block."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128), num_classes: int = 10,
                 in_features: int = 1, *, rngs: nnx.Rngs):
        self.stages = len(widths)
        previous = in_features
        for s, width in enumerate(widths):
            setattr(self, f"stage{s}_down", ConvBlock(previous, width, 1 if s == 0 else 2,
                                                      rngs=rngs))
            setattr(self, f"stage{s}_conv", ConvBlock(width, width, 1, rngs=rngs))
            previous = width
        self.head = nnx.Linear(previous, num_classes, rngs=rngs)

    def __call__(self, x, train: bool = False):
        for s in range(self.stages):
            x = getattr(self, f"stage{s}_down")(x, train)
            x = getattr(self, f"stage{s}_conv")(x, train)
        return self.head(jnp.mean(x, axis=(1, 2)))


def make_nnx_function(module_factory):
    """``make(key) -> (fn, variables)`` for an NNX module built by ``module_factory(rngs)``."""
    def split(module):
        return nnx.split(module, nnx.Param, nnx.BatchStat)

    def init(key):
        _, params, stats = split(module_factory(nnx.Rngs(key)))
        return {"params": params.to_pure_dict(), "batch_stats": stats.to_pure_dict()}

    def make(key):
        # The structure comes from an abstract module; the values from one jitted init
        # (building an NNX module eagerly compiles every initialiser op on its own).
        graphdef, params, stats = split(nnx.eval_shape(lambda: module_factory(nnx.Rngs(0))))

        def fn(variables, x):
            params_state = jax.tree.map(lambda a: a, params)
            stats_state = jax.tree.map(lambda a: a, stats)
            nnx.replace_by_pure_dict(params_state, variables["params"])
            nnx.replace_by_pure_dict(stats_state, variables["batch_stats"])
            return nnx.merge(graphdef, params_state, stats_state)(x, train=False)
        return fn, run_once(init, key)
    return make


def nnx_cnn_fmnist(num_classes: int = 10):
    return make_nnx_function(lambda rngs: NnxCNN((32, 64, 128), num_classes, rngs=rngs))


def nnx_cnn_tiny(num_classes: int = 10):
    return make_nnx_function(lambda rngs: NnxCNN((4, 8), num_classes, rngs=rngs))
