"""The shared rewrite loop: identity without a hook, hooks see nested equations, and a
hook that changes an equation changes the function (and stays jittable/differentiable)."""
import jax
import jax.numpy as jnp
import numpy as np

from core import rewrite, trace
from models import zoo


def test_identity_on_zoo_models_with_nested_calls():
    for name in ("resnet20", "mobilenetv2"):
        fn, variables, x = zoo.instantiate(name)
        traced = trace.trace(fn, variables, x)
        seen = []
        g = rewrite.as_function(traced, lambda eqn, invals, path: seen.append(path) or None)
        np.testing.assert_array_equal(jax.jit(g)(variables, x), fn(variables, x))
        # Every equation, nested ones (relu inside custom_jvp_call/jit) included, is seen
        # exactly once, with the same paths as trace.iter_eqns.
        expected = [p for p, e in trace.iter_eqns(traced.jaxpr)]
        assert sorted(set(seen)) == sorted(set(seen) & set(expected))
        assert len(seen) == len(set(seen))
        assert any(len(p) > 1 for p in seen)


def test_hook_replaces_an_equation_and_result_differentiates():
    def f(params, x):
        return jnp.tanh(x @ params["w"]) * 2.0

    params = {"w": jnp.ones((3, 4))}
    x = jnp.arange(6.0).reshape(2, 3) / 10
    traced = trace.trace(f, params, x)

    def double_matmul(eqn, invals, path):
        if eqn.primitive.name == "dot_general":
            return [2.0 * v for v in rewrite.bind_equation(eqn, invals)]
        return None
    g = rewrite.as_function(traced, double_matmul)
    np.testing.assert_allclose(g(params, x), jnp.tanh(2 * (x @ params["w"])) * 2.0, rtol=1e-6)
    grad = jax.grad(lambda p: g(p, x).sum())(params)["w"]
    expected = jax.grad(lambda p: (jnp.tanh(2 * (x @ p["w"])) * 2.0).sum())(params)["w"]
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


def test_cond_branches_are_rewritten():
    def f(params, x):
        return jax.lax.cond(x.sum() > 0, lambda v: v * params["a"], lambda v: v - 1.0, x)

    params = {"a": jnp.float32(3.0)}
    x = jnp.ones(2)
    traced = trace.trace(f, params, x)

    def negate_mul(eqn, invals, path):
        if eqn.primitive.name == "mul":
            return [-rewrite.bind_equation(eqn, invals)[0]]
        return None
    g = rewrite.as_function(traced, negate_mul)
    np.testing.assert_allclose(g(params, x), -3.0 * np.ones(2))
    np.testing.assert_allclose(g(params, -x), -x - 1.0)
