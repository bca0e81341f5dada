"""Teacher blocks: cut points of the jaxpr, module-path blocks, exact reassembly."""
import jax
import numpy as np
import pytest

from models import zoo
from nas import teacher_blocks
from tests.nas.helpers import tiny_teacher


def test_automatic_blocks_of_a_resnet_are_stem_residual_blocks_and_head():
    fn, variables, x = tiny_teacher()
    blocks = teacher_blocks.split_at_cut_points(fn, variables, x)
    assert [b.modules for b in blocks] == [("stem", "stem_bn"), ("stage0_block0",),
                                           ("stage1_block0",), ("stage2_block0",), ("head",)]
    assert [b.out_shape for b in blocks] == [(4, 12, 12, 4), (4, 12, 12, 4), (4, 6, 6, 8),
                                             (4, 3, 3, 8), (4, 10)]
    # Consecutive blocks connect, and every residual block keeps both of its branches.
    for a, b in zip(blocks, blocks[1:]):
        assert a.out_shape == b.in_shape
    assert [b.num_matmuls for b in blocks] == [1, 2, 3, 3, 1]


@pytest.mark.parametrize("split", ["auto", "modules"])
def test_assembling_all_teacher_blocks_reproduces_the_teacher(split):
    fn, variables, x = tiny_teacher()
    if split == "auto":
        blocks = teacher_blocks.split_at_cut_points(fn, variables, x)
    else:
        blocks = teacher_blocks.split_by_modules(fn, variables, x, ["stage1_block0", "head"])
        assert len(blocks) == 3 and blocks[1].out_shape == (4, 8)  # the mean pool ends it
    assembled, block_vars = teacher_blocks.assemble_teacher(blocks)
    other = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    for inp in (x, other):
        np.testing.assert_array_equal(np.asarray(assembled(block_vars, inp)),
                                      np.asarray(fn(variables, inp)))
        jitted = jax.jit(assembled)(block_vars, inp)
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(fn(variables, inp)),
                                   rtol=1e-5, atol=1e-5)


def test_blocks_of_a_mobilenet_reassemble_exactly():
    fn, variables, x = zoo.instantiate("mobilenetv2", tiny=True, batch=2)
    blocks = teacher_blocks.split_at_cut_points(fn, variables, x)
    assert len(blocks) >= 3
    assembled, block_vars = teacher_blocks.assemble_teacher(blocks)
    np.testing.assert_allclose(np.asarray(assembled(block_vars, x)), np.asarray(fn(variables, x)),
                               rtol=1e-6, atol=1e-6)


def test_unknown_module_is_reported():
    fn, variables, x = tiny_teacher()
    with pytest.raises(KeyError, match="no parameters of module"):
        teacher_blocks.split_by_modules(fn, variables, x, ["stage9_block0"])
