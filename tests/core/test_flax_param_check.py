"""The memoized Flax parameter check: same jaxpr as Flax's own path, same error, no leftovers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import errors
from flax.core import scope as flax_scope

from core import flax_param_check
from core.trace import trace
from models import zoo


def _resnet20_tiny():
    module = zoo.ZOO["resnet20"].build_tiny()
    x = jnp.ones((2, 12, 12, 1))
    variables = module.init(jax.random.key(0), x, train=False)
    return (lambda v, inp: module.apply(v, inp, train=False)), variables, x


def test_trace_is_equation_for_equation_flax_own():
    fn, variables, x = _resnet20_tiny()
    ours = trace(fn, variables, x)
    own = jax.make_jaxpr(fn)(variables, x)          # Flax's own Scope.param, unpatched
    assert str(ours.jaxpr) == str(own.jaxpr)
    assert flax_scope.Scope.param is not None
    assert not hasattr(flax_scope.Scope.param, "__wrapped__")   # patch removed after the trace


def test_wrong_parameter_shape_still_raises_flax_error():
    fn, variables, x = _resnet20_tiny()
    trace(fn, variables, x)                          # the initializer shapes are now memoized
    params = jax.tree_util.tree_map(lambda a: a, variables)
    kernel = params["params"]["stem"]["kernel"]
    params["params"]["stem"]["kernel"] = jnp.zeros(kernel.shape[:-1] + (kernel.shape[-1] + 1,))
    with pytest.raises(errors.ScopeParamShapeError, match="stem"):
        trace(fn, params, x)


def test_unhashable_initializer_arguments_take_flax_path_and_nesting_restores():
    class WithArrayArgument(nn.Module):
        @nn.compact
        def __call__(self, x):
            table = self.param("table", lambda key, init: init * 1.0, jnp.arange(3.0))
            return x * table

    module = WithArrayArgument()
    x = jnp.ones((3,))
    variables = module.init(jax.random.key(0), x)
    original = flax_scope.Scope.param
    with flax_param_check.memoized_param_check():
        with flax_param_check.memoized_param_check():
            out = module.apply(variables, x)
        assert hasattr(flax_scope.Scope.param, "__wrapped__")
    assert flax_scope.Scope.param is original
    assert jnp.allclose(out, jnp.arange(3.0))
