"""Depthwise convolutions as shifted multiply-adds compute the same function and gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from core import fast_depthwise
from models import zoo

CASES = [  # (input shape, dimension numbers, kernel, strides, padding, rhs dilation, multiplier)
    ((2, 9, 9, 6), ("NHWC", "HWIO", "NHWC"), (3, 3), (1, 1), "SAME", (1, 1), 1),
    ((2, 9, 8, 6), ("NHWC", "HWIO", "NHWC"), (3, 3), (2, 2), "SAME", (1, 1), 1),
    ((2, 6, 10, 7), ("NCHW", "OIHW", "NCHW"), (5, 3), (1, 2), "VALID", (1, 1), 1),
    ((2, 11, 11, 4), ("NHWC", "HWIO", "NHWC"), (3, 3), (1, 1), ((2, 1), (0, 3)), (2, 2), 2),
    ((3, 12, 5), ("NWC", "WIO", "NWC"), (4,), (3,), "SAME", (1,), 1),
]


def _conv(x, w, dn, strides, padding, dilation):
    channels = x.shape[dn[0].index("C")]
    return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=dn, feature_group_count=channels)


@pytest.mark.parametrize("shape,dn,kernel,strides,padding,dilation,multiplier", CASES)
def test_rewritten_convolution_matches_lax(shape, dn, kernel, strides, padding, dilation,
                                           multiplier):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape)
    channels = shape[dn[0].index("C")]
    sizes = dict(zip("HW" if len(kernel) == 2 else "W", kernel), I=1, O=channels * multiplier)
    w = jax.random.normal(kw, tuple(sizes[c] for c in dn[1]))
    f = lambda x, w: _conv(x, w, dn, strides, padding, dilation)       # noqa: E731
    fast = fast_depthwise.depthwise_as_shifts(f)
    assert any(e.primitive.name == "conv_general_dilated"
               for e in jax.make_jaxpr(f)(x, w).jaxpr.eqns)
    assert not any(e.primitive.name == "conv_general_dilated"
                   for e in jax.make_jaxpr(fast)(x, w).jaxpr.eqns)
    np.testing.assert_allclose(jax.jit(fast)(x, w), f(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda g: lambda x, w: jnp.sum(jnp.sin(g(x, w)))            # noqa: E731
    for got, want in zip(jax.grad(loss(fast), (0, 1))(x, w), jax.grad(loss(f), (0, 1))(x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_mobilenetv2_training_step_is_unchanged():
    """A whole model with BatchNorm updates: same logits, same updated statistics, same
    gradient, and no depthwise convolution left in the computation."""
    from core import train as train_lib
    module = zoo.ZOO["mobilenetv2"].build_tiny()
    x = jax.random.normal(jax.random.key(1), (4, 12, 12, 1))
    variables = module.init(jax.random.key(2), x)
    model = train_lib.linen_model(module, variables)
    fast = fast_depthwise.depthwise_as_shifts(model.apply_train)
    rng = jax.random.key(3)

    def loss(apply):
        def f(params):
            logits, updates = apply({**variables, "params": params}, x, rng)
            return jnp.sum(logits ** 2), (logits, updates)
        return jax.value_and_grad(f, has_aux=True)(variables["params"])
    (l0, (logits0, up0)), g0 = loss(model.apply_train)
    (l1, (logits1, up1)), g1 = jax.jit(lambda: loss(fast))()
    np.testing.assert_allclose(logits1, logits0, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves((up1, g1)), jax.tree.leaves((up0, g0))):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
    eqns = jax.make_jaxpr(fast)(variables, x, rng).jaxpr.eqns
    assert not any(fast_depthwise.is_depthwise(e) for e in eqns)


def test_models_without_depthwise_convolutions_are_left_as_they_are():
    fn, variables, x = zoo.instantiate("resnet20")
    fast = fast_depthwise.depthwise_as_shifts(fn)
    np.testing.assert_array_equal(fast(variables, x), fn(variables, x))
