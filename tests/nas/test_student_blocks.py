"""Student blocks: shapes, and the ``end`` option that makes any block end like a ResNet
teacher block (the projected input added, then the teacher's activation)."""
import jax
import numpy as np
import pytest

from nas.student_blocks import BLOCK_BUILDERS, BlockChoice, build_student, init_student

IN_SHAPE = (2, 8, 8, 8)
RNG = np.random.default_rng(0)
X = RNG.normal(size=IN_SHAPE).astype(np.float32)


@pytest.mark.parametrize("block_type", sorted(BLOCK_BUILDERS))
@pytest.mark.parametrize("out_shape", [(2, 8, 8, 8), (2, 4, 4, 16)])
def test_every_block_ends_with_the_chosen_activation_at_the_teachers_shape(block_type,
                                                                          out_shape):
    choice = BlockChoice(block_type, depth=1, kernel=3, expansion=2.0, width=0.5,
                         activation="hardswish", end="relu")
    module = build_student(choice, IN_SHAPE, out_shape)
    variables = init_student(module, IN_SHAPE, seed=1)
    y = np.asarray(module.apply(variables, X, train=False))
    assert y.shape == out_shape and y.min() >= 0.0 and (y > 0).mean() > 0.2
    changes_shape = out_shape != IN_SHAPE
    if block_type != "mixer":    # the mixer's patch merge is its own projection
        assert ("proj" in variables["params"]) == changes_shape, sorted(variables["params"])


@pytest.mark.parametrize("block_type,activation", [
    ("inverted_residual", "relu6"), ("fused_ir", "relu6"),
    ("dw_separable", "relu")])          # dw-separable already ends in its activation
def test_an_end_at_the_same_shape_is_the_activation_of_the_residual_block(block_type,
                                                                          activation):
    own, ended = (BlockChoice(block_type, depth=1, kernel=3, expansion=2.0,
                              activation=activation, end=end) for end in ("", "relu"))
    a, b = build_student(own, IN_SHAPE, IN_SHAPE), build_student(ended, IN_SHAPE, IN_SHAPE)
    variables = init_student(a, IN_SHAPE, seed=2)
    assert jax.tree.structure(variables) == jax.tree.structure(init_student(b, IN_SHAPE))
    residual = np.asarray(a.apply(variables, X, train=False))
    assert residual.min() < 0 or block_type == "dw_separable"
    np.testing.assert_allclose(np.asarray(b.apply(variables, X, train=False)),
                               np.maximum(residual, 0.0), rtol=1e-5, atol=1e-6)


def test_the_end_is_part_of_the_key_and_unknown_activations_are_refused():
    assert BlockChoice("plain").key != BlockChoice("plain", end="relu").key
    assert BlockChoice("plain").key == "plain-d1-k3-e1-w1-relu"     # old keys unchanged
    with pytest.raises(KeyError, match="unknown activation 'tanh'"):
        build_student(BlockChoice("plain", end="tanh"), IN_SHAPE, IN_SHAPE)
