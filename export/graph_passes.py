"""Clean-up of the ONNX graph that jax2onnx emits, so a runtime sees Conv+bias+activation in NCHW.

JAX convolutions are NHWC; ONNX's are NCHW. jax2onnx wraps every Conv in a Transpose pair,
folds no constants (BatchNorm stays Sub/Div/Mul/Add on parameters, never a BatchNormalization
node), writes ReLU as ``Max(x, 0)`` and lowers NHWC pooling to 4-D pooling over unsqueezed 6-D
tensors, which onnxruntime cannot run. ``optimize`` runs:

1. ``fold_constants``: weight transposes, BN scale arithmetic, masks built from constants;
2. ``pools_to_nchw``: NHWC pooling becomes Transpose, 2-D MaxPool/AveragePool, Transpose;
3. ``canonicalize``: ``Sub``/``Div`` by a constant become ``Add``/``Mul``, ``Max(x, 0)``
   becomes ``Relu`` and ``Min(Relu, 6)`` ``Clip`` (activations onnxruntime fuses into the
   Conv), chained constant ``Mul``s merge;
4. ``sink_transposes`` alternating with ``cancel_transposes``: Transposes are pushed down
   through elementwise ops, reductions, Concat and Gather until they meet, those that met are
   composed and the identities dropped, until one Transpose is left at the input;
   Einsums absorb the Transposes at their inputs and outputs into their equations;
5. ``einsums_to_matmul``: an Einsum of a tensor with a constant matrix along its last or
   second-to-last axis (a separable bilinear resize) becomes a MatMul; the selfie
   segmentation's 3 resizes went from 6 Einsums and 9 Transposes to 6 MatMuls;
   ``dense_einsums_to_matmul`` (``export.dense_einsums``): an Einsum with a constant of rank
   > 2 (Flax's DenseGeneral: attention projections) becomes Reshape, MatMul, Reshape;
6. ``fold_conv_affine``: the per-channel ``Mul``/``Add`` after a Conv (BN, NCHW now) into its
   weights and bias;
7. ``singleton_transposes_to_reshape``: a Transpose that only moves size-1 axes (the input of
   a 1-channel image, an SE gate) becomes a Reshape.

Measured in onnxruntime (``benchmarks/export_latency.py --ablate``): without 1 or 2 some models
do not run, 3 is worth 1.4-4x at batch 1 on conv nets; 4, 6, 7 matter less there (its own
transpose optimizer and Conv+Add/Mul fusions do much the same: 0.96-1.23x) but give the QDQ
writer and other runtimes plain NCHW.
4 and 7 live in ``export.transpose_sinking``, the graph view in ``export.onnx_graph``.

No library does 1-7 correctly here. onnxoptimizer's ``fuse_bn_into_conv`` needs a
BatchNormalization node; its transpose passes only meet adjacent Transposes (and 0.4.2
crashed the process on a fuzz model, so 4 composes them itself).
onnxslim 0.1.98's constant folding runs through onnxruntime and leaves what that has no kernel
for (transformer_lm's causal mask, a Where on bool: the export does not run), its FusionConvMul
folds a Mul along W into the output channels when W == Cout (error 3.05), and the rest (CSE,
weight tying) changed no latency measured at 2-3x the pass time.

Every rule is keyed by op type in a table; the passes never look at what model made the graph.
"""
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from export.dense_einsums import dense_einsums_to_matmul, einsum_with_constant
from export.onnx_graph import Graph, attr as _attr
from export.transpose_sinking import (einsum_terms, rewrite_until_stable, set_einsum_terms,
                                      sink_and_cancel, sink_transposes,
                                      singleton_transposes_to_reshape)

MAX_FOLDED_ELEMENTS = 1 << 24


# ---------------------------------------------------------------- constant folding

def fold_constants(graph: Graph) -> bool:
    """Evaluate nodes whose inputs are all constants with onnx's reference evaluator, which
    runs every ONNX type (onnxruntime, which onnxslim folds with, has no bool Where)."""
    changed = False
    opsets = list(graph.model.opset_import)
    for node in list(graph.nodes):
        inputs = [i for i in node.input if i]
        if not inputs or not all(i in graph.consts for i in inputs):
            continue
        if any(o in graph.outputs for o in node.output) or node.op_type.startswith("Random"):
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            continue
        if node.domain not in ("", "ai.onnx"):
            continue
        values = _evaluate(node, graph.consts, opsets)
        if values is None or sum(v.size for v in values) > MAX_FOLDED_ELEMENTS:
            continue
        for name, value in zip(node.output, values):
            graph.consts[name] = value
            graph.ranks[name] = value.ndim
        graph.nodes.remove(node)
        changed = True
    return changed


def _evaluate(node, consts, opsets) -> Optional[List[np.ndarray]]:
    inputs = [helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(consts[name].dtype), consts[name].shape)
        for name in dict.fromkeys(i for i in node.input if i)]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
               for o in node.output]
    model = helper.make_model(helper.make_graph([node], "fold", inputs, outputs),
                              opset_imports=opsets)
    try:
        results = ReferenceEvaluator(model).run(None, {v.name: consts[v.name] for v in inputs})
    except Exception:
        return None
    return [np.asarray(r) for r in results]


# ---------------------------------------------------------------- canonical forms

def canonicalize(graph: Graph) -> bool:
    changed = False
    uses = graph.consumers()
    for node in list(graph.nodes):
        rule = CANONICAL_RULES.get(node.op_type)
        if rule is not None and rule(graph, node, uses):
            changed = True
            uses = graph.consumers()
    return changed


def _scalar_const(graph, name) -> Optional[float]:
    value = graph.consts.get(name)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def _sub_to_add(graph, node, uses):
    a, b = node.input
    if b in graph.consts and graph.consts[b].dtype.kind == "f":
        node.op_type = "Add"
        node.input[1] = graph.add_const(b, -graph.consts[b])
        return True
    return False


def _div_to_mul(graph, node, uses):
    a, b = node.input
    if b in graph.consts and graph.consts[b].dtype.kind == "f":
        node.op_type = "Mul"
        node.input[1] = graph.add_const(b, (1.0 / graph.consts[b]).astype(graph.consts[b].dtype))
        return True
    return False


def _max_to_relu(graph, node, uses):
    if len(node.input) != 2:
        return False
    for data, other in ((0, 1), (1, 0)):
        if _scalar_const(graph, node.input[other]) == 0.0 and \
                graph.ranks.get(node.input[data], -1) >= graph.ranks.get(node.input[other], 0):
            x = node.input[data]
            del node.input[:]
            node.input.append(x)
            node.op_type = "Relu"
            return True
    return False


def _min_of_relu_to_clip(graph, node, uses):
    if len(node.input) != 2:
        return False
    producers = graph.producer()
    for data, other in ((0, 1), (1, 0)):
        upper = _scalar_const(graph, node.input[other])
        source = producers.get(node.input[data])
        if upper is None or source is None or source.op_type != "Relu" or \
                len(uses.get(source.output[0], [])) != 1:
            continue
        dtype = graph.consts[node.input[other]].dtype
        lo = graph.add_const("clip_min", np.array(0, dtype))
        hi = graph.add_const("clip_max", np.array(upper, dtype))
        clip = helper.make_node("Clip", [source.input[0], lo, hi], list(node.output))
        graph.nodes[graph.nodes.index(node)] = clip
        graph.nodes.remove(source)
        return True
    return False


def _merge_const_muls(graph, node, uses):
    """Mul(Mul(x, c1), c2) -> Mul(x, c1*c2); Mul(x, 1) -> x."""
    const_index = [i for i, n in enumerate(node.input) if n in graph.consts]
    if len(node.input) != 2 or len(const_index) != 1:
        return False
    c = graph.consts[node.input[const_index[0]]]
    x = node.input[1 - const_index[0]]
    if c.dtype.kind != "f":
        return False
    if c.size == 1 and float(c.reshape(())) == 1.0 and \
            graph.ranks.get(x, -1) >= c.ndim:
        graph.nodes.remove(node)
        graph.rename_uses(node.output[0], x)
        return True
    inner = graph.producer().get(x)
    if inner is None or inner.op_type != "Mul" or len(uses.get(x, [])) != 1:
        return False
    inner_const = [i for i, n in enumerate(inner.input) if n in graph.consts]
    if len(inner_const) != 1:
        return False
    product = graph.consts[inner.input[inner_const[0]]] * c
    inner.input[inner_const[0]] = graph.add_const("mul", product.astype(c.dtype))
    graph.nodes.remove(node)
    graph.rename_uses(node.output[0], inner.output[0])
    return True


CANONICAL_RULES = {"Sub": _sub_to_add, "Div": _div_to_mul, "Max": _max_to_relu,
                   "Min": _min_of_relu_to_clip, "Mul": _merge_const_muls}


# ---------------------------------------------------------------- NHWC pooling

def _unsqueezed_twice(graph, name, producers) -> Optional[str]:
    """The 4-D tensor that ``name`` is with two leading unit axes added: jax2onnx writes
    Unsqueeze(axes=[0]) then Unsqueeze(axes=[1]); onnxslim merges them into axes=[0, 1]."""
    axes, source = [], name
    while len(axes) < 2:
        node = producers.get(source)
        if node is None or node.op_type != "Unsqueeze" or len(node.input) != 2 or \
                node.input[1] not in graph.consts:
            return None
        axes = [int(a) for a in graph.consts[node.input[1]].reshape(-1)] + axes
        source = node.input[0]
    return source if axes == [0, 1] else None


def _pool_window(graph, node) -> Optional[list]:
    """The 4-D window (1, kh, kw, 1) of an NHWC MaxPool, or of a Conv with an all-ones 6-D
    kernel (jax2onnx's window sum for average pooling); None for anything else."""
    if node.op_type == "MaxPool":
        kernel = _attr(node, "kernel_shape")
    else:
        weight = graph.consts.get(node.input[1]) if len(node.input) == 2 else None
        if weight is None or weight.ndim != 6 or weight.shape[:2] != (1, 1) or \
                not np.all(weight == 1):
            return None
        kernel = list(weight.shape[2:])
    if kernel is None or len(kernel) != 4 or kernel[0] != 1 or kernel[3] != 1:
        return None
    strides = list(_attr(node, "strides", [1] * 4))
    pads = list(_attr(node, "pads", [0] * 8))
    if strides[0] != 1 or strides[3] != 1 or pads[0] or pads[3] or pads[4] or pads[7] or \
            any(d != 1 for d in _attr(node, "dilations", [1] * 4)) or _attr(node, "group", 1) != 1:
        return None
    return kernel


def pools_to_nchw(graph: Graph) -> bool:
    """jax2onnx pools NHWC by unsqueezing to 6-D and pooling 4 "spatial" axes; undo that."""
    changed = False
    producers, uses = graph.producer(), graph.consumers()
    for node in list(graph.nodes):
        if node.op_type not in ("MaxPool", "Conv") or len(node.input) < 1:
            continue
        kernel = _pool_window(graph, node)
        x = _unsqueezed_twice(graph, node.input[0], producers) if kernel else None
        squeeze = uses.get(node.output[0], [])
        if x is None or len(squeeze) != 1 or squeeze[0].op_type != "Squeeze" or \
                len(squeeze[0].input) != 2 or squeeze[0].input[1] not in graph.consts or \
                graph.consts[squeeze[0].input[1]].reshape(-1).tolist() != [0, 1]:
            continue
        strides, pads = list(_attr(node, "strides", [1] * 4)), list(_attr(node, "pads", [0] * 8))
        out = squeeze[0].output[0]
        to_nchw, pooled = graph.fresh("pool_in"), graph.fresh("pool_out")
        attrs = dict(kernel_shape=kernel[1:3], strides=strides[1:3],
                     pads=[pads[1], pads[2], pads[5], pads[6]])
        new = [helper.make_node("Transpose", [x], [to_nchw], perm=[0, 3, 1, 2])]
        if node.op_type == "MaxPool":
            new.append(helper.make_node("MaxPool", [to_nchw], [pooled], **attrs))
        else:  # window sum = average with padding counted, times the window size
            averaged = graph.fresh("pool_avg")
            size = graph.add_const("pool_size", np.array(kernel[1] * kernel[2], np.float32))
            new += [helper.make_node("AveragePool", [to_nchw], [averaged],
                                     count_include_pad=1, **attrs),
                    helper.make_node("Mul", [averaged, size], [pooled])]
        new.append(helper.make_node("Transpose", [pooled], [out], perm=[0, 2, 3, 1]))
        graph.ranks.update({to_nchw: 4, pooled: 4, out: 4})
        index = graph.nodes.index(squeeze[0])
        graph.nodes[index:index + 1] = new
        graph.nodes.remove(node)
        changed = True
    return changed


# ---------------------------------------------------------------- Conv + affine folding

def fold_conv_affine(graph: Graph) -> bool:
    """Folds a constant per-channel Mul or Add that alone reads a Conv into its weights."""
    return rewrite_until_stable(graph, Graph.consumers, _fold_chain_into_conv)


def _fold_chain_into_conv(graph, conv, uses) -> bool:
    """Folds the Mul/Add chain after ``conv`` one node at a time, as long as one folds."""
    folded = False
    while _fold_user_into_conv(graph, conv, uses):
        folded = True
        uses = graph.consumers()
    return folded


def _fold_user_into_conv(graph, conv, uses) -> bool:
    if conv.op_type != "Conv" or conv.input[1] not in graph.consts:
        return False
    users = uses.get(conv.output[0], [])
    if len(users) != 1 or conv.output[0] in graph.outputs or \
            users[0].op_type not in ("Mul", "Add") or len(users[0].input) != 2:
        return False
    user = users[0]
    other = user.input[1] if user.input[0] == conv.output[0] else user.input[0]
    weight = graph.consts[conv.input[1]]
    cout, rank = weight.shape[0], weight.ndim
    c = graph.consts.get(other)
    if c is None or c.ndim > rank or c.dtype != weight.dtype:
        return False
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if full.shape[0] != 1 or any(s != 1 for s in full.shape[2:]) or \
            full.shape[1] not in (1, cout):
        return False
    per_channel = np.broadcast_to(full.reshape(-1), (cout,)).astype(weight.dtype)
    bias = (graph.consts[conv.input[2]] if len(conv.input) > 2 and conv.input[2]
            else np.zeros(cout, weight.dtype))
    if user.op_type == "Mul":
        weight = weight * per_channel.reshape((cout,) + (1,) * (rank - 1))
        bias = bias * per_channel
    else:
        bias = bias + per_channel
    new_inputs = [conv.input[0], graph.add_const("conv_w", weight),
                  graph.add_const("conv_b", bias)]
    del conv.input[:]
    conv.input.extend(new_inputs)
    conv.output[0] = user.output[0]
    graph.nodes.remove(user)
    return True


# ---------------------------------------------------------------- constant-matrix Einsums

def _matrix_contraction(graph, node) -> Optional[tuple]:
    """(data input, matrix input, summed letter, new letter) of an Einsum that maps one axis
    of a tensor by a constant matrix (a bilinear resize, a per-axis linear map): the output
    holds the data's letters with the summed one replaced by the new one; else None."""
    found = einsum_with_constant(graph, node)
    if found is None:
        return None
    inputs, output, d, w = found
    matrix, data = inputs[w], inputs[d]
    if len(matrix) != 2 or len(set(matrix)) != 2 or len(set(data)) != len(data):
        return None
    summed = [c for c in matrix if c in data]
    new = [c for c in matrix if c not in data]
    if len(summed) != 1 or summed[0] in output or \
            sorted(output) != sorted(data.replace(summed[0], new[0])):
        return None
    return d, w, summed[0], new[0]


def _reorder_einsum_output(graph, node, order: str, uses) -> bool:
    """Write ``node``'s output axes in ``order`` when only Einsums read it (their letters
    for it move along); False when another op or a graph output needs the present order."""
    inputs, output = einsum_terms(node)
    name = node.output[0]
    readers = uses.get(name, [])
    if name in graph.outputs or not readers or \
            any(r.op_type != "Einsum" or einsum_terms(r) is None for r in readers):
        return False
    old_axis = [output.index(letter) for letter in order]
    for reader in readers:
        reader_inputs, reader_output = einsum_terms(reader)
        for i, reader_input in enumerate(reader.input):
            if reader_input == name:
                letters = reader_inputs[i]
                reader_inputs[i] = "".join(letters[a] for a in old_axis)
        set_einsum_terms(reader, reader_inputs, reader_output)
    set_einsum_terms(node, inputs, order)
    return True


def einsums_to_matmul(graph: Graph) -> bool:
    """An Einsum of a tensor with a constant matrix over its last or second-to-last axis is
    a MatMul (``x @ W.T`` or ``W @ x``, broadcast over the leading axes).

    jax2onnx writes ``jnp.einsum`` (the TFLite importer's bilinear resizes) as Einsum wrapped
    in Transposes; once those are absorbed into the equations (``transpose_sinking``), the
    output of an Einsum read only by Einsums is written in place (the new letter where the
    summed one was), so a separable resize of an NCHW tensor is ``W_h @ x @ W_w.T``.
    onnxruntime (1 thread) ran the 64->128 resize of 16 channels as two such MatMuls in
    0.59 ms, as Einsums with their Transposes in 1.9 ms."""
    changed = False
    uses = graph.consumers()
    for node in list(graph.nodes):
        found = _matrix_contraction(graph, node) if node.op_type == "Einsum" else None
        if found is None:
            continue
        d, w, summed, new = found
        inputs, output = einsum_terms(node)
        in_place = inputs[d].replace(summed, new)
        if output != in_place and _reorder_einsum_output(graph, node, in_place, uses):
            output, changed = in_place, True
        position = len(in_place) - in_place.index(new)
        if output != in_place or position > 2:
            continue
        matrix = graph.consts[node.input[w]]
        new_by_summed = matrix if inputs[w] == new + summed else matrix.T
        if position == 1:       # [..., summed] @ [summed, new]
            operands = [node.input[d], graph.add_const("matmul_rhs", new_by_summed.T.copy())]
        else:                   # [new, summed] @ [..., summed, x]
            operands = [graph.add_const("matmul_lhs", new_by_summed.copy()), node.input[d]]
        graph.nodes[graph.nodes.index(node)] = helper.make_node(
            "MatMul", operands, list(node.output))
        changed = True
    return changed


OUR_PASSES = {step.__name__: step for step in
              (fold_constants, pools_to_nchw, canonicalize, sink_transposes, einsums_to_matmul,
               dense_einsums_to_matmul, fold_conv_affine, singleton_transposes_to_reshape)}


def _run(model: onnx.ModelProto, steps, skip) -> onnx.ModelProto:
    """Our passes in order on one Graph, repeated until nothing changes."""
    graph = Graph(model)
    for _ in range(4):
        changed = [step(graph) for step in steps if step.__name__ not in skip]
        graph.remove_dead()
        if not any(changed):
            break
    return graph.to_model()


def optimize(model: onnx.ModelProto, skip=()) -> onnx.ModelProto:
    """The clean-up pipeline of the module docstring; returns a new, checked model.

    ``skip`` names passes of ``OUR_PASSES`` to leave out (for measuring what each is worth)."""
    unknown = set(skip) - set(OUR_PASSES)
    if unknown:
        raise ValueError(f"graph_passes.optimize: unknown passes to skip {sorted(unknown)}; "
                         f"known: {sorted(OUR_PASSES)}")
    model = _run(model, (fold_constants, pools_to_nchw, canonicalize), skip)
    if "sink_transposes" not in skip:
        model = sink_and_cancel(model)
    model = _run(model, (einsums_to_matmul, dense_einsums_to_matmul, canonicalize,
                         fold_conv_affine,
                         singleton_transposes_to_reshape), skip)
    onnx.checker.check_model(model)
    return model


def count_ops(model: onnx.ModelProto) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
