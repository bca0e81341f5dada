"""TFLite models as plain JAX functions: ``from_tflite(path) -> (fn, variables, example)``.

Why: real pretrained edge models ship as .tflite files; once one is a plain JAX function
``fn(variables, x)``, every method of the project (find_groups, prune, masked, lowrank, quant,
blocks, export) applies to it unchanged.

The flatbuffer is read with the schema classes shipped in ``ai-edge-litert`` (no
TensorFlow). Each operator is computed by the rule of its builtin op name (or custom op
code) in ``models.tflite_rules.RULES``; an operator without a rule raises
``UnsupportedTFLiteOp`` naming the op, the operator index and the supported ops.

At import, not in the graph:
- constant weights stored as float16 or int8 behind a DEQUANTIZE are dequantized to float32,
  and the DEQUANTIZE disappears;
- floating constants become ``variables``, a flat dict keyed by their tensor names
  ('conv2d/Kernel', ...); integer constants (shapes, sizes, axes) stay static numpy values;
- conv kernels are brought to the HWIO layout of ``lax.conv_general_dilated`` (transposed
  convs flipped once here, so no flip sits in the graph to hide prunable groups).
The graph stays NHWC, as TFLite is. The batch axis follows the input: the example input has
the model's batch (1) but ``fn`` runs any batch.
"""
import dataclasses
import pathlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from models import tflite_rules

_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
           "INT32": np.int32, "INT64": np.int64, "INT16": np.int16, "INT8": np.int8,
           "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
           "BOOL": np.bool_}


class UnsupportedTFLiteOp(NotImplementedError):
    """An operator of the model has no rule in ``models.tflite_rules.RULES``."""


class TFLiteImportError(ValueError):
    """The model uses a feature the importer does not handle (message says which)."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    shape: Tuple[int, ...]
    dtype: Any
    scale: Optional[np.ndarray] = None        # quantization, per tensor or per axis
    zero_point: Optional[np.ndarray] = None
    axis: int = 0


@dataclasses.dataclass(frozen=True)
class Operator:
    """One TFLite operator, with what its rule needs to know statically."""
    index: int
    op: str                                   # builtin name, or the custom op code
    inputs: Tuple[int, ...]                   # tensor indices; -1 = omitted optional input
    outputs: Tuple[int, ...]
    options: Any                              # the builtin options object (or None)
    custom_options: bytes
    in_shapes: Tuple[Optional[Tuple[int, ...]], ...]
    out_shapes: Tuple[Tuple[int, ...], ...]
    batch: int                                # the model input's batch, as stored


@dataclasses.dataclass
class Graph:
    """The first subgraph of a model, with constants folded."""
    tensors: List[Tensor]
    constants: Dict[int, np.ndarray]
    operators: List[Operator]
    inputs: List[int]
    outputs: List[int]


def _schema():
    """The flatbuffer schema and reader that ai-edge-litert ships."""
    try:
        from ai_edge_litert import schema_py_generated
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError as e:
        raise ImportError("models.from_tflite reads .tflite files with the schema of the "
                          "pinned ai-edge-litert package: run `bash scripts/setup.sh`") from e
    return schema_py_generated, flatbuffer_utils


def _names(enum) -> Dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def _tensor(t, schema) -> Tensor:
    dtype = _DTYPES.get(_names(schema.TensorType)[t.type])
    q = t.quantization
    scale = zero = None
    if q is not None and q.scale is not None and len(q.scale):
        scale = np.asarray(q.scale, np.float32)
        zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.int64)
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    return Tensor(t.name.decode() if isinstance(t.name, bytes) else str(t.name), shape, dtype,
                  scale, zero, int(q.quantizedDimension) if scale is not None else 0)


def _buffer_bytes(model, index: int) -> Optional[bytes]:
    data = model.buffers[index].data
    return None if data is None or not len(data) else np.asarray(data, np.uint8).tobytes()


def _op_name(model, op, names: Dict[int, str]) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
    if builtin == "CUSTOM":
        custom = code.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return builtin


def dequantize(value: np.ndarray, tensor: Tensor) -> np.ndarray:
    """float32 of a stored constant: float16 widened, integers scaled by their quantization."""
    if np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float32)
    if tensor.scale is None:
        raise TFLiteImportError(f"DEQUANTIZE of {tensor.name!r}: integer without scale")
    shape = [1] * value.ndim
    if tensor.scale.size > 1:
        shape[tensor.axis] = -1
    scale, zero = tensor.scale.reshape(shape), tensor.zero_point.reshape(shape)
    return ((value.astype(np.int64) - zero) * scale).astype(np.float32)


def read(path) -> Graph:
    """The first subgraph of the .tflite file at ``path``, DEQUANTIZE of constants folded."""
    schema, flatbuffer_utils = _schema()
    # Resolves buffers stored by offset (models over 2 GB) and large custom options.
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(pathlib.Path(path).read_bytes()))
    if len(model.subgraphs) != 1:
        raise TFLiteImportError(f"{path}: {len(model.subgraphs)} subgraphs; only single-"
                                "subgraph models (no control flow) are supported")
    sub, names = model.subgraphs[0], _names(schema.BuiltinOperator)
    tensors = [_tensor(t, schema) for t in sub.tensors]
    constants = {}
    for i, t in enumerate(sub.tensors):
        data = _buffer_bytes(model, t.buffer)
        if data is not None and tensors[i].dtype is not None:
            constants[i] = np.frombuffer(data, tensors[i].dtype).reshape(tensors[i].shape)
    inputs = [int(i) for i in sub.inputs]
    batch = tensors[inputs[0]].shape[0] if tensors[inputs[0]].shape else 1
    operators = []
    for index, op in enumerate(sub.operators):
        name = _op_name(model, op, names)
        ins = tuple(int(i) for i in op.inputs)
        outs = tuple(int(i) for i in op.outputs)
        if name == "DEQUANTIZE" and ins[0] in constants:      # fp16 / int8 stored weights
            constants[outs[0]] = dequantize(constants[ins[0]], tensors[ins[0]])
            tensors[outs[0]] = dataclasses.replace(tensors[outs[0]], name=tensors[ins[0]].name)
            continue
        operators.append(Operator(
            index, name, ins, outs, op.builtinOptions,
            bytes(op.customOptions) if op.customOptions is not None else b"",
            tuple(tensors[i].shape if i >= 0 else None for i in ins),
            tuple(tensors[i].shape for i in outs), batch))
    return Graph(tensors, constants, operators, inputs, [int(i) for i in sub.outputs])


def _unsupported(op: Operator) -> UnsupportedTFLiteOp:
    return UnsupportedTFLiteOp(
        f"TFLite op {op.op} (operator {op.index}) has no rule in models.tflite_rules; "
        f"supported ops: {', '.join(sorted(tflite_rules.RULES))}")


def unique_name(name: str, taken: Dict[str, Any]) -> str:
    """``name``, or ``name#k`` when taken (both importers' variable names)."""
    candidate, k = name or "const", 1
    while candidate in taken:
        candidate, k = f"{name}#{k}", k + 1
    return candidate


def prepare_variables(graph: Graph):
    """Floating constants -> variables (kernels in the layout their rule wants, changed here
    once); returns variables and, per operator, {input position: variable name}."""
    variables: Dict[str, np.ndarray] = {}
    by_layout: Dict[Tuple[int, Any], str] = {}
    bindings: List[Dict[int, str]] = []
    for op in graph.operators:
        rule = tflite_rules.RULES.get(op.op)
        if rule is None:
            raise _unsupported(op)
        bound = {}
        for pos, t in enumerate(op.inputs):
            value = graph.constants.get(t)
            if value is None or not np.issubdtype(value.dtype, np.floating):
                continue
            layout = rule.kernels.get(pos)
            key = (t, layout)
            if key not in by_layout:
                name = unique_name(graph.tensors[t].name, variables)
                array = value if layout is None else layout(value)
                variables[name] = np.ascontiguousarray(array, np.float32)
                by_layout[key] = name
            bound[pos] = by_layout[key]
        bindings.append(bound)
    return variables, bindings


def apply_operator(op: Operator, bound: Dict[int, str], variables, values) -> tuple:
    """The outputs of one operator: its weights from ``variables`` (``bound``: input position
    -> variable name, from ``prepare_variables``), every other input from ``values`` (tensor
    index -> array or static constant). Used by ``build`` and, fed LiteRT's own tensors, by
    the per-operator parity test."""
    args = [None if t < 0 else variables[bound[pos]] if pos in bound else values[t]
            for pos, t in enumerate(op.inputs)]
    result = tflite_rules.RULES[op.op].fn(op, *args)
    return result if isinstance(result, tuple) else (result,)


def needed_for(graph: Graph, wanted: Sequence[int]) -> Graph:
    """``graph`` with only the operators that the ``wanted`` tensors depend on: an inner
    output must not leave the rest computed and unused (its weights would count as the
    model's parameters, its FLOPs in ``core.cost.count``)."""
    needed, kept = set(wanted), []
    for op in reversed(graph.operators):
        if needed.intersection(op.outputs):
            kept.append(op)
            needed.update(i for i in op.inputs if i >= 0)
    return dataclasses.replace(graph, operators=kept[::-1], outputs=list(wanted))


def build(graph: Graph, outputs: Optional[Sequence[str]] = None):
    """``(fn, variables)`` computing ``graph``; ``outputs`` names tensors to return instead
    of the graph's outputs (to compare intermediate values)."""
    by_name = {t.name: i for i, t in enumerate(graph.tensors)}
    unknown = [n for n in outputs or () if n not in by_name]
    if unknown:
        raise TFLiteImportError(f"outputs {unknown} are not tensors of the graph")
    wanted = graph.outputs if outputs is None else [by_name[n] for n in outputs]
    graph = needed_for(graph, wanted)
    variables, bindings = prepare_variables(graph)
    static = dict(graph.constants)

    def fn(variables, x):
        env: Dict[int, Any] = {**static, graph.inputs[0]: x}
        for op, bound in zip(graph.operators, bindings):
            env.update(zip(op.outputs, apply_operator(op, bound, variables, env)))
        outs = [env[t] for t in wanted]
        return outs[0] if len(outs) == 1 else tuple(outs)

    return fn, variables


def from_tflite(path, outputs: Optional[Sequence[str]] = None
                ) -> Tuple[Callable, Dict[str, Any], np.ndarray]:
    """``(fn, variables, example_input)`` of the single-input TFLite model at ``path``:
    ``fn(variables, x)`` is a plain JAX function of an NHWC input, ``variables`` a dict of
    float32 arrays keyed by tensor name, ``example_input`` zeros of the model's input shape
    and dtype."""
    import jax.numpy as jnp
    graph = read(path)
    if len(graph.inputs) != 1:
        raise TFLiteImportError(f"{path}: {len(graph.inputs)} inputs; one is supported")
    fn, variables = build(graph, outputs)
    spec = graph.tensors[graph.inputs[0]]
    example = np.zeros(spec.shape, spec.dtype or np.float32)
    return fn, {k: jnp.asarray(v) for k, v in variables.items()}, example
