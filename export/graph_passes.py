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
4. ``sink_transposes`` alternating with onnxoptimizer (``fuse_consecutive_transposes``,
   ``eliminate_nop_transpose``, ``eliminate_identity``): ours pushes Transposes down through
   elementwise ops, reductions, Concat and Gather until they meet, the library composes those
   that met and drops the identities, until one Transpose is left at the input;
5. ``fold_conv_affine``: the per-channel ``Mul``/``Add`` after a Conv (BN, NCHW now) into its
   weights and bias.

Measured in onnxruntime (``benchmarks/export_latency.py --ablate``): 1 and 2 are needed to run
at all on some models, 3 is worth 1.3-5.6x at batch 1; 4 and 5 change onnxruntime's latency
little, its own transpose optimizer and Conv+Add/Mul fusions doing the same, but leave the plain
NCHW graph that the QDQ writer (``quant.qdq_export``) and other runtimes get.

No library does 1-5 correctly on this graph. onnxoptimizer's ``fuse_bn_into_conv`` needs a
BatchNormalization node, and its transpose passes (used in 4) only meet adjacent Transposes.
onnxslim 0.1.98 is not used: its constant folding runs through onnxruntime and leaves what
onnxruntime has no kernel for (transformer_lm's causal mask, a Where on bool, so the export does
not run); its FusionConvMul folds a Mul that broadcasts along W into the output channels when
W equals Cout (error 3.05 on a 4x4 conv); what it adds besides (CSE, weight tying) changed no
latency measured and took 2-3x the time of these passes.

Every rule is keyed by op type in a table; the passes never look at what model made the graph.
"""
from typing import Dict, List, Optional

import numpy as np
import onnx
import onnxoptimizer
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Relu", "Clip", "Sigmoid", "Tanh", "Erf",
    "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Cast", "Identity", "Where", "Not",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Softplus", "Gelu", "Sign", "Floor", "Ceil", "Round", "IsNaN",
    "Mod", "PRelu"}
# Inputs of these ops that are parameters, not data, and keep their shape when sinking.
SCALAR_PARAMETER_INPUTS = {"Clip": {1, 2}}
REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"}
# onnxoptimizer passes run between sinking rounds: compose Transposes that met, drop no-ops.
TRANSPOSE_PASSES = ["fuse_consecutive_transposes", "eliminate_nop_transpose",
                    "eliminate_identity"]
MAX_SINK_ROUNDS = 8
MAX_FOLDED_ELEMENTS = 1 << 24


class Graph:
    """A mutable view of an ONNX graph: node list, constants as numpy, ranks of values."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.nodes: List[onnx.NodeProto] = list(graph.node)
        self.consts: Dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.outputs = [o.name for o in graph.output]
        self.ranks: Dict[str, int] = {}
        try:
            inferred = shape_inference.infer_shapes(model).graph
            values = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
        except Exception:  # shape inference is a help, not a requirement
            values = list(graph.value_info) + list(graph.input) + list(graph.output)
        for value in values:
            if value.type.tensor_type.HasField("shape"):
                self.ranks[value.name] = len(value.type.tensor_type.shape.dim)
        for name, array in self.consts.items():
            self.ranks[name] = array.ndim
        self._counter = 0

    def fresh(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}__opt{self._counter}"

    def add_const(self, stem: str, array: np.ndarray) -> str:
        name = self.fresh(stem)
        self.consts[name] = np.asarray(array)
        self.ranks[name] = np.ndim(array)
        return name

    def consumers(self) -> Dict[str, List[onnx.NodeProto]]:
        uses: Dict[str, List[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                uses.setdefault(name, []).append(node)
        return uses

    def producer(self) -> Dict[str, onnx.NodeProto]:
        return {out: node for node in self.nodes for out in node.output}

    def rename_uses(self, old: str, new: str):
        """Make every consumer of ``old`` read ``new``; graph outputs keep their name."""
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        if old in self.outputs:
            self.nodes.append(helper.make_node("Identity", [new], [old]))

    def remove_dead(self):
        while True:
            used = set(self.outputs)
            for node in self.nodes:
                used.update(node.input)
            alive = [n for n in self.nodes if any(o in used for o in n.output)]
            if len(alive) == len(self.nodes):
                break
            self.nodes = alive
        self.consts = {k: v for k, v in self.consts.items() if k in used}

    def toposort(self):
        known = set(self.consts) | {i.name for i in self.model.graph.input} | {""}
        ordered, pending = [], list(self.nodes)
        while pending:
            ready = [n for n in pending if all(i in known for i in n.input)]
            if not ready:
                raise ValueError("graph has a cycle or an undefined input")
            for node in ready:
                known.update(node.output)
            ordered.extend(ready)
            ready_ids = {id(n) for n in ready}
            pending = [n for n in pending if id(n) not in ready_ids]
        self.nodes = ordered

    def to_model(self) -> onnx.ModelProto:
        self.remove_dead()
        self.toposort()
        graph = self.model.graph
        new_graph = helper.make_graph(
            self.nodes, graph.name, list(graph.input), list(graph.output),
            [numpy_helper.from_array(np.asarray(v), k) for k, v in self.consts.items()])
        model = helper.make_model(new_graph, opset_imports=list(self.model.opset_import),
                                  producer_name=self.model.producer_name)
        model.ir_version = self.model.ir_version
        return model


def _attr(node, name, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _set_attr(node, name, value):
    for i, attribute in enumerate(node.attribute):
        if attribute.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


# ---------------------------------------------------------------- constant folding

def fold_constants(graph: Graph) -> bool:
    """Evaluate nodes whose inputs are all constants with onnx's reference evaluator, which
    runs every ONNX type; onnxslim folds through onnxruntime and leaves whatever onnxruntime
    has no kernel for (the causal mask's Where on bool in transformer_lm, which then fails to
    run at all)."""
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


# ---------------------------------------------------------------- transpose sinking

def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def sink_transposes(graph: Graph) -> bool:
    """Move Transposes towards the outputs, through elementwise ops, reductions, Concat and
    Gather; the Transposes that meet are composed and dropped by onnxoptimizer."""
    changed = False
    progress = True
    while progress:
        progress = False
        producers = graph.producer()
        for node in list(graph.nodes):
            rule = SINK_RULES.get(node.op_type)
            if rule is not None and rule(graph, node, producers):
                progress = changed = True
                producers = graph.producer()
    return changed


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


SINK_RULES = {**{op: _sink_through_elementwise for op in ELEMENTWISE - {"Identity"}},
              **{op: _sink_through_reduction for op in REDUCTIONS},
              "Concat": _sink_through_concat, "Gather": _sink_through_gather}


# ---------------------------------------------------------------- Conv + affine folding

def fold_conv_affine(graph: Graph) -> bool:
    changed = False
    progress = True
    while progress:
        progress = False
        uses = graph.consumers()
        for conv in list(graph.nodes):
            if conv.op_type != "Conv" or conv.input[1] not in graph.consts:
                continue
            users = uses.get(conv.output[0], [])
            if len(users) != 1 or conv.output[0] in graph.outputs or \
                    users[0].op_type not in ("Mul", "Add") or len(users[0].input) != 2:
                continue
            user = users[0]
            other = user.input[1] if user.input[0] == conv.output[0] else user.input[0]
            weight = graph.consts[conv.input[1]]
            cout, rank = weight.shape[0], weight.ndim
            c = graph.consts.get(other)
            if c is None or c.ndim > rank or c.dtype != weight.dtype:
                continue
            full = c.reshape((1,) * (rank - c.ndim) + c.shape)
            if full.shape[0] != 1 or any(s != 1 for s in full.shape[2:]) or \
                    full.shape[1] not in (1, cout):
                continue
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
            progress = changed = True
            break
    return changed


OUR_PASSES = {step.__name__: step for step in
              (fold_constants, pools_to_nchw, canonicalize, sink_transposes, fold_conv_affine)}


def _run(model: onnx.ModelProto, steps, skip) -> onnx.ModelProto:
    """Our passes in order on one Graph, repeated until nothing changes."""
    graph = Graph(model)
    for _ in range(4):
        changed = [step(graph) for step in steps if step.__name__ not in skip]
        graph.remove_dead()
        if not any(changed):
            break
    return graph.to_model()


def _sink_and_cancel(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sink Transposes (ours), then let onnxoptimizer compose and drop those that met; again
    until no Transpose moves (two rounds on the zoo)."""
    for _ in range(MAX_SINK_ROUNDS):
        graph = Graph(model)
        moved = sink_transposes(graph)
        model = onnxoptimizer.optimize(graph.to_model(), TRANSPOSE_PASSES)
        if not moved:
            break
    return model


def optimize(model: onnx.ModelProto, skip=()) -> onnx.ModelProto:
    """The clean-up pipeline of the module docstring; returns a new, checked model.

    ``skip`` names passes of ``OUR_PASSES`` to leave out (for measuring what each is worth)."""
    unknown = set(skip) - set(OUR_PASSES)
    if unknown:
        raise ValueError(f"graph_passes.optimize: unknown passes to skip {sorted(unknown)}; "
                         f"known: {sorted(OUR_PASSES)}")
    model = _run(model, (fold_constants, pools_to_nchw, canonicalize), skip)
    if "sink_transposes" not in skip:
        model = _sink_and_cancel(model)
    model = _run(model, (canonicalize, fold_conv_affine), skip)
    onnx.checker.check_model(model)
    return model


def count_ops(model: onnx.ModelProto) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
