"""The torch-free half of the PyTorch twin: its 'SAME' padding equals XLA's.

``benchmarks.torch_resnet20`` pads stride-2 convs asymmetrically to compute what Flax's
``padding='SAME'`` computes; the pads come from ``benchmarks.xla_same_padding``, checked
here against XLA itself (its pad table and a convolution) so this runs without torch.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.xla_same_padding import same_padding


def test_same_padding_on_the_resnet20_shapes():
    assert same_padding(28, 3, 1) == (1, 1)
    assert same_padding(28, 3, 2) == (0, 1)
    assert same_padding(14, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(28, 1, 2) == (0, 0)


def test_same_padding_matches_xla_pad_table():
    for size, kernel, stride in itertools.product(range(1, 30), (1, 2, 3, 4, 5, 7), (1, 2, 3, 4)):
        want = jax.lax.padtype_to_pads((size,), (kernel,), (stride,), "SAME")[0]
        assert same_padding(size, kernel, stride) == tuple(want), (size, kernel, stride)


def test_explicit_pads_give_the_same_convolution_as_same():
    rng = np.random.default_rng(0)
    for size, kernel, stride in [(28, 3, 2), (14, 3, 2), (7, 3, 2), (12, 5, 3), (9, 4, 2)]:
        x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)), jnp.float32)
        conv = lambda padding: jax.lax.conv_general_dilated(
            x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        pads = [same_padding(size, kernel, stride)] * 2
        np.testing.assert_allclose(conv(pads), conv("SAME"), rtol=1e-6, atol=1e-6)
