"""Einsums of an activation with a constant tensor of rank > 2 become Reshape -> MatMul ->
Reshape, so that onnxruntime runs them with its MatMul kernels (float and integer).

Why: Flax's ``DenseGeneral`` (the query/key/value and output projections of linen's
``MultiHeadDotProductAttention``) contracts with a 3-D kernel, ``(features, heads,
head_dim)`` or ``(heads, head_dim, features)``; jax2onnx writes that as an Einsum, which
onnxruntime has no integer kernel for. In the int8 ViT the 24 projections of its 6 layers
stayed float Einsums between QuantizeLinear/DequantizeLinear pairs, and int8 ran slower
than float (benchmarks/results/quant.md). The same contraction is one MatMul with the
kernel reshaped to a matrix: the data's summed axes are its trailing axes (merged by a
Reshape into one), the kernel's free axes come out as trailing axes (split by a Reshape).

Only the case ``data[keep..., summed...] x W[summed..., free...] -> out[keep..., free...]``
(up to a transpose of the constant) is rewritten; ``graph_passes.einsums_to_matmul`` keeps
the constant-matrix case.
"""
from typing import Optional

import numpy as np
from onnx import helper

from export.onnx_graph import Graph
from export.transpose_sinking import einsum_terms


def einsum_with_constant(graph: Graph, node) -> Optional[tuple]:
    """(input letters, output letters, data input index, constant input index) of an
    explicit two-input Einsum of which exactly one input is a constant; else None."""
    terms = einsum_terms(node)
    if terms is None or len(node.input) != 2:
        return None
    is_const = [name in graph.consts for name in node.input]
    if is_const.count(True) != 1:
        return None
    w = is_const.index(True)
    return terms[0], terms[1], 1 - w, w


def _dense_contraction(graph: Graph, node) -> Optional[tuple]:
    """(data input, constant input, kept letters, summed letters, free letters) of an
    Einsum that maps the trailing axes of a tensor through a constant of rank > 2, keeping
    its leading axes in order; else None."""
    found = einsum_with_constant(graph, node)
    if found is None:
        return None
    inputs, output, d, w = found
    kernel, data = inputs[w], inputs[d]
    if len(kernel) <= 2 or len(set(kernel)) != len(kernel) or len(set(data)) != len(data):
        return None
    summed = "".join(c for c in data if c in kernel)
    kept = "".join(c for c in data if c not in kernel)
    free = "".join(c for c in output if c in kernel and c not in data)
    if not summed or any(c in output for c in summed) or data != kept + summed or \
            output != kept + free or sorted(summed + free) != sorted(kernel):
        return None
    return d, w, kept, summed, free


def _reshape(graph: Graph, source: str, shape, stem: str) -> str:
    out = graph.fresh(stem)
    shape_name = graph.add_const(stem + "_shape", np.asarray(shape, np.int64))
    graph.nodes.append(helper.make_node("Reshape", [source, shape_name], [out]))
    return out


def dense_einsums_to_matmul(graph: Graph) -> bool:
    """Rewrite every Einsum of ``_dense_contraction``'s form (see the module docstring)."""
    changed = False
    for node in list(graph.nodes):
        found = _dense_contraction(graph, node) if node.op_type == "Einsum" else None
        if found is None:
            continue
        d, w, kept, summed, free = found
        letters = einsum_terms(node)[0][w]
        constant = graph.consts[node.input[w]]
        order = [letters.index(c) for c in summed + free]
        moved = np.transpose(constant, order)
        summed_size = int(np.prod(moved.shape[:len(summed)]))
        free_shape = list(moved.shape[len(summed):])
        matrix = graph.add_const("dense_kernel", moved.reshape(summed_size, -1).copy())
        data = node.input[d]
        if len(summed) > 1:          # merge the summed axes; 0 copies a kept axis
            data = _reshape(graph, data, [0] * len(kept) + [summed_size], "dense_in")
            graph.ranks[data] = len(kept) + 1
        index = graph.nodes.index(node)
        if len(free) > 1:
            product = graph.fresh("dense_out")
            graph.ranks[product] = len(kept) + 1
            graph.nodes[index] = helper.make_node("MatMul", [data, matrix], [product])
            shape = graph.add_const("dense_out_shape",
                                    np.asarray([0] * len(kept) + free_shape, np.int64))
            graph.nodes.append(helper.make_node("Reshape", [product, shape],
                                                list(node.output)))
        else:
            graph.nodes[index] = helper.make_node("MatMul", [data, matrix], list(node.output))
        changed = True
    return changed
