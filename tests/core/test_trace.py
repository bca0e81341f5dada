"""Tracing: invars line up with parameter paths; sub-jaxprs and source lines are found."""
import jax
import jax.numpy as jnp

from core.trace import call_jaxpr, iter_eqns, source_line, trace
from models import zoo


def test_invars_carry_parameter_paths_and_inputs():
    module = zoo.ZOO["resnet20"].build_tiny()
    x = jnp.ones((2, 12, 12, 1))
    variables = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                       jax.eval_shape(module.init, jax.random.key(0), x))
    fn = lambda v, inp: module.apply(v, inp, train=False)
    traced = trace(fn, variables, x)
    leaves = jax.tree_util.tree_leaves(variables)
    assert traced.num_params == len(leaves)
    assert len(traced.in_paths) == len(traced.jaxpr.invars) == len(leaves) + 1
    assert "params/stem/kernel" in traced.in_paths
    assert traced.input_invars()[0][0] == "input0"
    for path, var in traced.param_invars():
        if path == "params/stem/kernel":
            assert var.aval.shape == variables["params"]["stem"]["kernel"].shape
    assert traced.out_shapes.shape == (2, 10)


def test_nested_jaxprs_are_walked_and_have_source_lines():
    def fn(params, x):
        h = jax.nn.relu(x @ params["w"])
        return jax.checkpoint(jnp.sin)(h)

    traced = trace(fn, {"w": jnp.ones((3, 4))}, jnp.ones((2, 3)))
    names = [eqn.primitive.name for _, eqn in iter_eqns(traced.jaxpr)]
    assert {"custom_jvp_call", "jit", "max", "remat2", "sin"} <= set(names)
    relu = next(e for e in traced.jaxpr.eqns if e.primitive.name == "custom_jvp_call")
    assert call_jaxpr(relu) is not None
    dot = next(e for e in traced.jaxpr.eqns if e.primitive.name == "dot_general")
    assert source_line(dot).startswith("tests/core/test_trace.py:")
