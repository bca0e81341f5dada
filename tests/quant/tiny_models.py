"""Small plain-JAX models for the quantization tests (fast to trace, no Flax).

``cnn`` writes its BatchNorm by hand (``(y - mean) * rsqrt(var + eps) * gamma + beta``), so
folding must find it in the jaxpr rather than rely on a Flax module.
"""
import jax
import jax.numpy as jnp
import numpy as np


def conv(x, kernel, stride=1):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def batchnorm(y, p):
    return (y - p["mean"]) * jax.lax.rsqrt(p["var"] + 1e-5) * p["scale"] + p["bias"]


def cnn(v, x):
    """conv-BN-ReLU, conv-BN-ReLU, conv-BN + residual, ReLU, mean pool, dense."""
    y = jax.nn.relu(batchnorm(conv(x, v["c1"]["kernel"]), v["bn1"]))
    z = jax.nn.relu(batchnorm(conv(y, v["c2"]["kernel"]), v["bn2"]))
    z = batchnorm(conv(z, v["c3"]["kernel"]), v["bn3"])
    y = jax.nn.relu(y + z)
    return jnp.mean(y, axis=(1, 2)) @ v["head"]["kernel"] + v["head"]["bias"]


def cnn_variables(seed=0, width=8, spread=None):
    """Random weights and BatchNorm statistics; ``spread`` multiplies the weights of one
    output channel of the second conv (a model with mismatched channel ranges)."""
    rng = np.random.default_rng(seed)

    def kernel(cin, cout):
        return (rng.standard_normal((3, 3, cin, cout)) * np.sqrt(2 / (9 * cin))).astype(
            np.float32)

    def bn(c):
        return {"mean": (0.1 * rng.standard_normal(c)).astype(np.float32),
                "var": rng.uniform(0.5, 1.5, c).astype(np.float32),
                "scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
                "bias": (0.1 * rng.standard_normal(c)).astype(np.float32)}
    v = {"c1": {"kernel": kernel(1, width)}, "bn1": bn(width),
         "c2": {"kernel": kernel(width, width)}, "bn2": bn(width),
         "c3": {"kernel": kernel(width, width)}, "bn3": bn(width),
         "head": {"kernel": (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(
             np.float32), "bias": np.zeros(10, np.float32)}}
    if spread:
        v["c2"]["kernel"][..., 0] *= spread
    return jax.tree.map(jnp.asarray, v)


def images(n=16, size=10, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, size, size, 1))
