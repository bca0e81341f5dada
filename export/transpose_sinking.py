"""Transpose sinking: jax2onnx wraps every NHWC Conv and pool in a Transpose pair; pushing the
Transposes down through elementwise ops, reductions, Concat and Gather until they meet, and
composing those that met and dropping the identities (``cancel_transposes``), leaves one
Transpose at the input of a conv net. No library does the pushing: onnxoptimizer's and
onnxslim's transpose passes only meet Transposes that are already adjacent, and the
composing is a few lines here (onnxoptimizer, used for it before, crashed the process on a
fuzz model). A Transpose that only moves size-1 axes
(a 1-channel image, an SE gate) then becomes a Reshape: without it onnxruntime took 0.92-1.22x
the time on four models (not separable from noise here; 1.04x at batch 1 on MobileNetV2 over
12 rounds), with it the graphs equal those of the hand-written passes this module replaced.
An Einsum has no fixed layout: the Transposes at its inputs, and one that alone reads its
output, are absorbed into its equation (3 per bilinear resize of the TFLite importer).
Rules are keyed by op type in ``SINK_RULES``.
"""
from typing import Callable, Dict

import numpy as np
import onnx
from onnx import helper, shape_inference

from export.onnx_graph import Graph, attr as _attr, set_attr as _set_attr

ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Relu", "Clip", "Sigmoid", "Tanh", "Erf",
    "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Cast", "Identity", "Where", "Not",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Softplus", "Gelu", "Sign", "Floor", "Ceil", "Round", "IsNaN",
    "Mod", "PRelu"}
# Inputs of these ops that are parameters, not data, and keep their shape when sinking.
SCALAR_PARAMETER_INPUTS = {"Clip": {1, 2}}
REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"}
MAX_SINK_ROUNDS = 8


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def rewrite_until_stable(graph: Graph, index_of: Callable[[Graph], dict],
                         rewrite: Callable[[Graph, onnx.NodeProto, dict], bool]) -> bool:
    """Sweeps ``rewrite(graph, node, index)`` over the nodes, in order, until a whole sweep
    changes nothing; True when anything changed. ``index_of(graph)`` (the producer or the
    consumers of each tensor) is recomputed after every change, since a rewrite rewires the
    graph. The fixed-point loop of the graph passes that rewrite one node at a time."""
    changed = False
    progress = True
    while progress:
        progress = False
        index = index_of(graph)
        for node in list(graph.nodes):
            if rewrite(graph, node, index):
                progress = changed = True
                index = index_of(graph)
    return changed


def sink_transposes(graph: Graph) -> bool:
    """Move Transposes towards the outputs, through elementwise ops, reductions, Concat and
    Gather; the Transposes that meet are composed and dropped by ``cancel_transposes``."""
    return rewrite_until_stable(graph, Graph.producer, _sink_one)


def _sink_one(graph, node, producers) -> bool:
    rule = SINK_RULES.get(node.op_type)
    return rule is not None and rule(graph, node, producers)


def _transposed_input(graph, name, producers):
    node = producers.get(name)
    if node is not None and node.op_type == "Transpose" and node.input[0] not in graph.consts:
        return node.input[0], list(_attr(node, "perm"))
    return None


def _sink_through_elementwise(graph, node, producers):
    fixed = SCALAR_PARAMETER_INPUTS.get(node.op_type, set())
    rank = graph.ranks.get(node.output[0])
    if rank is None or rank < 2 or len(node.output) != 1:
        return False
    perm, new_inputs = None, []
    for i, name in enumerate(node.input):
        if not name or i in fixed:
            continue
        source = _transposed_input(graph, name, producers)
        if source is not None and graph.ranks.get(name) == rank:
            if perm is not None and source[1] != perm:
                return False
            perm = source[1]
        elif name not in graph.consts:
            return False
    if perm is None:
        return False
    inverse = _inverse(perm)
    for i, name in enumerate(node.input):
        if not name or i in fixed:
            new_inputs.append(name)
        elif name in graph.consts:
            value = graph.consts[name]
            if value.ndim == 0:
                new_inputs.append(name)
            else:
                full = value.reshape((1,) * (rank - value.ndim) + value.shape)
                new_inputs.append(graph.add_const(name, np.transpose(full, inverse)))
        else:
            new_inputs.append(producers[name].input[0])
    inner = graph.fresh(node.output[0])
    graph.ranks[inner] = rank
    index = graph.nodes.index(node)
    moved = helper.make_node(node.op_type, new_inputs, [inner], domain=node.domain)
    moved.attribute.extend(node.attribute)
    graph.nodes[index:index + 1] = [
        moved, helper.make_node("Transpose", [inner], [node.output[0]], perm=perm)]
    return True


def _sink_through_reduction(graph, node, producers):
    source = _transposed_input(graph, node.input[0], producers)
    if source is None:
        return False
    x, perm = source
    rank = len(perm)
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in graph.consts:
            return False
        axes = [int(a) % rank for a in graph.consts[node.input[1]].reshape(-1)]
    else:
        axes = [int(a) % rank for a in (_attr(node, "axes") or range(rank))]
    new_axes = sorted(perm[a] for a in axes)
    keep = _attr(node, "keepdims", 1)
    inner = graph.fresh(node.output[0])
    reduced = helper.make_node(node.op_type, [x], [inner])
    reduced.attribute.extend(a for a in node.attribute if a.name != "axes")
    if len(node.input) > 1 and node.input[1]:
        reduced.input.append(graph.add_const("axes", np.array(new_axes, np.int64)))
    else:
        _set_attr(reduced, "axes", new_axes)
    if keep:
        post = perm
        graph.ranks[inner] = rank
    else:
        remaining = [perm[i] for i in range(rank) if i not in axes]
        post = [sorted(remaining).index(r) for r in remaining]
        graph.ranks[inner] = len(remaining)
    index = graph.nodes.index(node)
    tail = (helper.make_node("Transpose", [inner], [node.output[0]], perm=post)
            if post != sorted(post) else helper.make_node("Identity", [inner], [node.output[0]]))
    graph.nodes[index:index + 1] = [reduced, tail]
    return True


def _sink_through_concat(graph, node, producers):
    sources = [_transposed_input(graph, name, producers) for name in node.input]
    if not sources or any(s is None for s in sources) or \
            any(s[1] != sources[0][1] for s in sources):
        return False
    perm = sources[0][1]
    axis = _attr(node, "axis") % len(perm)
    inner = graph.fresh(node.output[0])
    graph.ranks[inner] = len(perm)
    index = graph.nodes.index(node)
    graph.nodes[index:index + 1] = [
        helper.make_node("Concat", [s[0] for s in sources], [inner], axis=perm[axis]),
        helper.make_node("Transpose", [inner], [node.output[0]], perm=perm)]
    return True


def _sink_through_gather(graph, node, producers):
    """Gather of a transposed tensor along one axis with 1-D constant indices keeps the rank."""
    source = _transposed_input(graph, node.input[0], producers)
    indices = graph.consts.get(node.input[1])
    if source is None or indices is None or indices.ndim != 1:
        return False
    x, perm = source
    axis = _attr(node, "axis", 0) % len(perm)
    inner = graph.fresh(node.output[0])
    graph.ranks[inner] = len(perm)
    index = graph.nodes.index(node)
    graph.nodes[index:index + 1] = [
        helper.make_node("Gather", [x, node.input[1]], [inner], axis=perm[axis]),
        helper.make_node("Transpose", [inner], [node.output[0]], perm=perm)]
    return True


def einsum_terms(node):
    """([input letters, ...], output letters) of an explicit Einsum equation, or None for an
    implicit one or one with an ellipsis (whose axes have no letter to move)."""
    equation = _attr(node, "equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    if "->" not in equation or "." in equation:
        return None
    inputs, output = equation.replace(" ", "").split("->")
    return inputs.split(","), output


def set_einsum_terms(node, inputs, output):
    _set_attr(node, "equation", ",".join(inputs) + "->" + output)


def _absorb_into_einsum(graph, node, producers):
    """Einsum(Transpose(x, perm), ...) is Einsum(x, ...) with the letters of that input moved:
    axis ``perm[i]`` of x carries the letter axis i of the Transpose had. The Einsum layout is
    free, so the Transpose is gone rather than moved."""
    terms = einsum_terms(node)
    if terms is None:
        return False
    inputs, output = terms
    changed = False
    for i, name in enumerate(node.input):
        source = _transposed_input(graph, name, producers)
        if source is None or len(source[1]) != len(inputs[i]):
            continue
        x, perm = source
        letters = [""] * len(perm)
        for axis, p in enumerate(perm):
            letters[p] = inputs[i][axis]
        inputs[i], node.input[i], changed = "".join(letters), x, True
    if changed:
        set_einsum_terms(node, inputs, output)
    return changed


def _absorb_einsum_output(graph, node, producers):
    """Transpose(Einsum(...), perm) whose Einsum feeds nothing else is one Einsum writing its
    output axes in the transposed order: output axis i carries the letter of axis perm[i]."""
    einsum = producers.get(node.input[0])
    if einsum is None or einsum.op_type != "Einsum" or node.input[0] in graph.outputs:
        return False
    terms = einsum_terms(einsum)
    perm = list(_attr(node, "perm"))
    if terms is None or len(perm) != len(terms[1]) or \
            len(graph.consumers().get(node.input[0], [])) != 1:
        return False
    inputs, output = terms
    set_einsum_terms(einsum, inputs, "".join(output[p] for p in perm))
    einsum.output[0] = node.output[0]
    graph.nodes.remove(node)
    return True


SINK_RULES = {**{op: _sink_through_elementwise for op in ELEMENTWISE - {"Identity"}},
              **{op: _sink_through_reduction for op in REDUCTIONS},
              "Concat": _sink_through_concat, "Gather": _sink_through_gather,
              "Einsum": _absorb_into_einsum, "Transpose": _absorb_einsum_output}


def singleton_transposes_to_reshape(graph: Graph) -> bool:
    """A Transpose that only moves size-1 axes (an SE gate of shape (B,1,1,C)) is a Reshape."""
    shapes = _static_shapes(graph)
    changed = False
    for node in list(graph.nodes):
        if node.op_type != "Transpose" or node.input[0] not in shapes:
            continue
        shape, perm = shapes[node.input[0]], list(_attr(node, "perm"))
        moved = [p for p in perm if shape[p] != 1]
        unknown = [d for d in shape if d is None]
        if moved != sorted(moved) or len(unknown) > 1:
            continue
        target = [-1 if shape[p] is None else shape[p] for p in perm]
        new_shape = graph.add_const("reshape", np.array(target, np.int64))
        index = graph.nodes.index(node)
        graph.nodes[index] = helper.make_node("Reshape", [node.input[0], new_shape],
                                              list(node.output))
        changed = True
    return changed


def _static_shapes(graph: Graph) -> Dict[str, list]:
    try:
        model = graph.to_model()
        inferred = shape_inference.infer_shapes(model).graph
    except Exception:
        return {}
    shapes = {}
    for value in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                  for d in tensor.shape.dim]
    return shapes


def cancel_transposes(graph: Graph) -> bool:
    """Compose a Transpose of a Transpose into one, and drop Transposes with the identity
    permutation and Identity nodes (rewiring their readers); True when anything changed.
    It does what onnxoptimizer's fuse_consecutive_transposes, eliminate_nop_transpose and
    eliminate_identity did here, in Python: onnxoptimizer 0.4.2 crashed the process
    (segmentation fault) on a fuzz model, which no exception handler can catch."""
    return rewrite_until_stable(graph, Graph.producer, _cancel_one)


def _cancel_one(graph, node, producers) -> bool:
    if node.op_type == "Identity":
        return _bypass(graph, node, producers)
    if node.op_type != "Transpose" or _attr(node, "perm") is None:
        return False
    perm, changed = [int(p) for p in _attr(node, "perm")], False
    inner = producers.get(node.input[0])
    if inner is not None and inner.op_type == "Transpose" and _attr(inner, "perm") is not None:
        first = [int(p) for p in _attr(inner, "perm")]
        perm = [first[p] for p in perm]          # out axis i = inner's axis perm[i]
        node.input[0] = inner.input[0]
        _set_attr(node, "perm", perm)
        changed = True
    if perm == list(range(len(perm))):
        return _bypass(graph, node, producers) or changed
    return changed


def _bypass(graph, node, producers) -> bool:
    """Readers of the one-input, one-output ``node`` read its input instead, and the node
    goes. A graph output keeps its name: the input's producer is renamed to it, or, when the
    input is a graph input or output itself, the node stays as an Identity."""
    source, out = node.input[0], node.output[0]
    if out in graph.outputs:
        producer = producers.get(source)
        if producer is None or source in graph.outputs:
            if node.op_type == "Identity":
                return False
            graph.nodes[graph.nodes.index(node)] = helper.make_node("Identity", [source], [out])
            return True
        graph.nodes.remove(node)
        producer.output[list(producer.output).index(source)] = out
        graph.rename_uses(source, out)
        return True
    graph.rename_uses(out, source)
    graph.nodes.remove(node)
    return True


def sink_and_cancel(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sink Transposes, then compose and drop those that met (``cancel_transposes``); again
    until no Transpose moves (two rounds on the zoo)."""
    for _ in range(MAX_SINK_ROUNDS):
        graph = Graph(model)
        moved = sink_transposes(graph)
        cancel_transposes(graph)
        model = graph.to_model()
        if not moved:
            break
    return model
