"""Einsums with a constant of rank > 2 (Flax DenseGeneral) become Reshape -> MatMul ->
Reshape: the same numbers as numpy's einsum, on hand-built graphs (no JAX, no jax2onnx)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import graph_passes
from export.parity import session

RNG = np.random.default_rng(0)


def _einsum_model(equation, kernel, x_shape, y_shape):
    graph = helper.make_graph(
        [helper.make_node("Einsum", ["x", "w"], ["y"], equation=equation)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(kernel, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("equation,kernel_shape,x_shape,y_shape", [
    ("abc,cde->abde", (12, 3, 4), ["b", 5, 12], ["b", 5, 3, 4]),    # query/key/value
    ("abcd,cde->abe", (3, 4, 12), ["b", 5, 3, 4], ["b", 5, 12]),    # output projection
    ("abcd,dce->abe", (4, 3, 12), ["b", 5, 3, 4], ["b", 5, 12]),    # kernel axes swapped
    ("abc,ced->abde", (12, 4, 3), ["b", 5, 12], ["b", 5, 3, 4]),    # free axes swapped
])
def test_dense_einsum_is_a_matmul_with_the_same_numbers(equation, kernel_shape, x_shape,
                                                        y_shape):
    kernel = RNG.normal(size=kernel_shape).astype(np.float32)
    model = graph_passes.optimize(_einsum_model(equation, kernel, x_shape, y_shape))
    ops = [n.op_type for n in model.graph.node]
    assert "Einsum" not in ops and ops.count("MatMul") == 1, ops
    for batch in (1, 3):
        x = RNG.normal(size=[batch] + x_shape[1:]).astype(np.float32)
        got = session(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, np.einsum(equation, x, kernel), rtol=1e-5, atol=1e-5)


def test_einsums_of_two_activations_or_other_layouts_stay():
    """Only a constant contracting the trailing axes is rewritten: attention's activation x
    activation Einsum and a contraction over a leading axis keep their Einsum."""
    kernel = RNG.normal(size=(5, 3, 4)).astype(np.float32)
    leading = graph_passes.optimize(_einsum_model("abc,bde->acde", kernel, [2, 5, 7],
                                                  [2, 7, 3, 4]))
    assert [n.op_type for n in leading.graph.node] == ["Einsum"]
    graph = helper.make_graph(
        [helper.make_node("Einsum", ["x", "x"], ["y"], equation="abc,adc->abd")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 5])])
    pair = graph_passes.optimize(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in pair.graph.node] == ["Einsum"]
