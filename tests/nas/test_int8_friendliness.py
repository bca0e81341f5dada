"""The int8-friendliness objective: lint penalties per block option, additive per architecture."""
import types

import jax
import jax.numpy as jnp
import numpy as np

from nas import int8_friendliness
from nas.search_space import BlockChoice


def _dense_block(activation):
    def fn(variables, x):
        return activation(x @ variables["w"] + variables["b"])
    return fn


def _library():
    rng = np.random.default_rng(0)
    params = lambda: {"w": jnp.asarray(rng.standard_normal((8, 8)) * 0.3, jnp.float32),  # noqa
                      "b": jnp.zeros((8,), jnp.float32)}
    stem = types.SimpleNamespace(fn=_dense_block(jax.nn.relu), variables=params())
    searched = types.SimpleNamespace(fn=_dense_block(jax.nn.relu), variables=params())
    options = [types.SimpleNamespace(fn=f, variables=params(), choice=BlockChoice(type=name))
               for name, f in (("teacher", _dense_block(jax.nn.relu)),
                               ("gelu", _dense_block(jax.nn.gelu)),
                               ("relu6", _dense_block(jax.nn.relu6)))]
    return types.SimpleNamespace(
        blocks=[stem, searched], options=[options],
        space=types.SimpleNamespace(positions=(1,)),
        _jitted_fixed=lambda i: [stem, searched][i].fn)


def test_gelu_option_is_penalized_and_architecture_penalty_adds_up():
    library = _library()
    x = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    dataset = types.SimpleNamespace(validation=(x, None), mean=0.0, std=1.0)
    (penalties,) = int8_friendliness.option_penalties(library, dataset, "npu_int8_per_tensor")
    teacher, gelu, relu6 = penalties
    assert gelu >= teacher + 10, penalties     # GELU is an error on the NPU profile
    assert relu6 <= teacher, penalties         # bounded activation: no extra findings
    total = int8_friendliness.architecture_penalty([penalties], [(0,), (1,), (2,)])
    np.testing.assert_array_equal(total, penalties)
    names = int8_friendliness.describe(library, [penalties])
    assert set(names) == {"0:" + o.choice.key for o in library.options[0]}
