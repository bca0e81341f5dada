"""int8 QDQ ONNX: our calibrated (or learned) quantizers, run by onnxruntime's integer kernels.

jax2onnx emits no QuantizeLinear / DequantizeLinear, so the float model is exported first
(``export.to_onnx``) and the QDQ nodes are written into it here:

- every activation site gets ``QuantizeLinear -> DequantizeLinear`` on the ONNX tensor that
  holds the same values, with our scale and zero point (uint8 or int8), all consumers
  rewired to the dequantized tensor: the exact meaning of fake-quant on that tensor;
- every weight becomes an int8 initializer (``clip(round(w / s))``, per output channel
  along the matching ONNX axis) read through ``DequantizeLinear``;
- a Conv / Gemm bias whose input and weight are quantized becomes int32 with scale
  ``s_x * s_w`` (what QLinearConv needs to fuse).

Which ONNX tensor is which jaxpr value is decided by the values themselves: the float model
runs once in JAX and once in onnxruntime on the same batch, and each site is matched to the
ONNX tensors whose sorted values agree (layout-independent: NHWC in JAX, NCHW in ONNX; a
weight's axis permutation is recovered the same way). This needs no knowledge of how
jax2onnx or the graph passes named or rearranged anything. A weight whose channels cannot be
expressed on one ONNX axis is stored already fake-quantized in float (still exact).

``check`` runs the QDQ model in onnxruntime, reports which integer kernels its optimized
graph uses (QLinearConv, QGemm, ...) and the parity with the JAX fake-quant model.
"""
import collections
import dataclasses
import itertools
import json
import os
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.parity import session
from quant import qdq_placement
from quant.fakequant import QuantizedModel
from quant.quantizers import quantize_to_int

INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm",
               "QLinearAdd", "QLinearConcat", "QLinearGlobalAveragePool",
               "QLinearAveragePool", "QLinearMul", "QLinearReduceMean", "QLinearSigmoid",
               "QLinearLeakyRelu", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
UNPAID_SITES_KEY = "quantization_sites_left_float"


class QdqExportError(RuntimeError):
    """A quantizer could not be placed on the ONNX graph."""


@dataclasses.dataclass
class QdqExport:
    model: onnx.ModelProto
    path: Optional[str]
    activation_tensors: Dict[str, List[str]]       # site -> ONNX tensors quantized
    weight_initializers: Dict[str, str]            # site -> ONNX initializer (int8)
    float_weights: List[str]                       # sites stored fake-quantized in float
    # activation sites left float: no integer kernel of the runner reads them
    # (quant.qdq_placement); the JAX model matching the file runs without them
    unpaid_sites: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class QdqCheck:
    integer_ops: Dict[str, int]                    # in onnxruntime's optimized graph
    float_ops: Dict[str, int]
    top1_agreement: float
    max_abs_error: float
    output_scale: float
    # Top-1 agreement on the rows whose fake-quant top-1 leads by more than 1% of the output
    # scale: near-ties (a briefly trained model) flip on any rounding and say nothing.
    decided_agreement: float = float("nan")
    decided_rows: int = 0


def _intermediate_values(model: onnx.ModelProto, feeds) -> Dict[str, np.ndarray]:
    """Every float tensor of ``model`` (inputs, node outputs) on ``feeds``."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output)}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in existing and types.get(name) == TensorProto.FLOAT:
                probe.graph.output.append(helper.make_tensor_value_info(
                    name, TensorProto.FLOAT, None))
                existing.add(name)
    sess = session(probe, optimize=False)
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, feeds)))
    values.update(feeds)
    return values


def _fingerprint(x: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(x, np.float64).reshape(-1))


def _same_values(a_sorted, b_sorted) -> bool:
    if a_sorted.size != b_sorted.size:
        return False
    scale = max(float(np.max(np.abs(a_sorted))), 1e-6)
    return bool(np.max(np.abs(a_sorted - b_sorted)) <= 2e-4 * scale)


def _match_tensors(site_values, onnx_values) -> Dict[str, List[str]]:
    by_size = collections.defaultdict(list)
    for name, value in onnx_values.items():
        if np.asarray(value).dtype.kind == "f":
            by_size[np.size(value)].append((name, _fingerprint(value)))
    matches = {}
    for site, value in site_values.items():
        fp = _fingerprint(value)
        matches[site] = [n for n, other in by_size[fp.size] if _same_values(fp, other)]
    return matches


def _weight_layout(w: np.ndarray, target: np.ndarray, channel_axes) -> Optional[Tuple]:
    """(permutation, ONNX channel axis or None) such that ``w`` transposed by the
    permutation and reshaped is ``target``; None when no permutation matches."""
    for perm in itertools.permutations(range(w.ndim)):
        moved = np.transpose(w, perm)
        if moved.size != target.size or not np.allclose(
                moved.reshape(target.shape), target, rtol=1e-5, atol=1e-7):
            continue
        if not channel_axes:
            return perm, None
        positions = sorted(perm.index(a) for a in channel_axes)
        if moved.shape == target.shape and len(positions) == 1:
            return perm, positions[0]
        # A reshape merged axes: the channel axes must be exactly one target axis.
        sizes = list(moved.shape)
        start = int(np.prod(sizes[:positions[0]]))
        span = int(np.prod([sizes[p] for p in positions]))
        contiguous = positions == list(range(positions[0], positions[-1] + 1))
        cumulative = np.cumprod([1] + list(target.shape))
        for j in range(target.ndim):
            if contiguous and cumulative[j] == start and target.shape[j] == span:
                return perm, j
        return perm, "unrepresentable"
    return None


class _Editor:
    """Collects new nodes and initializers, rewires consumers, re-sorts topologically."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.new_nodes: List[onnx.NodeProto] = []
        self.counter = itertools.count()

    def const(self, name: str, array: np.ndarray) -> str:
        name = f"{name}_{next(self.counter)}"
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def qdq_tensor(self, tensor: str, scale: float, zero_point: int, dtype) -> str:
        base = tensor.replace("/", "_")
        s = self.const(f"{base}_scale", np.asarray(scale, np.float32))
        z = self.const(f"{base}_zero_point", np.asarray(zero_point, dtype))
        quantized, dequantized = f"{base}_q{next(self.counter)}", f"{base}_dq{next(self.counter)}"
        for node in self.graph.node:
            for k, name in enumerate(node.input):
                if name == tensor:
                    node.input[k] = dequantized
        self.new_nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [quantized]))
        self.new_nodes.append(helper.make_node("DequantizeLinear", [quantized, s, z],
                                               [dequantized]))
        return dequantized

    def int_initializer(self, name: str, ints: np.ndarray, scale: np.ndarray, axis,
                        dtype) -> None:
        """Replaces float initializer ``name`` by ``DequantizeLinear(ints, scale)``."""
        self.graph.initializer.remove(self.inits.pop(name))
        q = self.const(f"{name}_int", ints.astype(dtype))
        s = self.const(f"{name}_scale", np.asarray(scale, np.float32))
        z = self.const(f"{name}_zero_point", np.zeros(np.shape(scale), dtype))
        attrs = {"axis": int(axis)} if axis is not None and np.ndim(scale) else {}
        self.new_nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [name], **attrs))

    def finish(self) -> onnx.ModelProto:
        nodes = list(self.graph.node) + self.new_nodes
        available = {i.name for i in self.graph.initializer} | {i.name for i in
                                                                  self.graph.input} | {""}
        ordered, pending = [], nodes
        while pending:
            ready = [n for n in pending if all(i in available for i in n.input)]
            if not ready:
                raise QdqExportError("QDQ graph has a cycle or a dangling input")
            for n in ready:
                ordered.append(n)
                available.update(n.output)
            pending = [n for n in pending if n not in ready]
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        onnx.checker.check_model(self.model)
        return self.model


def to_qdq_onnx(model: QuantizedModel, variables, qparams, example_input,
                path: Optional[str] = None, float_onnx: Optional[onnx.ModelProto] = None,
                drop_unpaid: bool = True) -> QdqExport:
    """The QDQ ONNX model of ``model.apply(variables, qparams, x)``.

    ``example_input`` (a few real images are best) drives the value matching;
    ``float_onnx`` skips the float export when it was already made from the same
    (float) function. With ``drop_unpaid`` and a profile that lists its runner's
    ``integer_kernels``, activation quantizers no integer kernel reads are left out
    (``quant.qdq_placement``; listed in ``unpaid_sites``).
    """
    import export as export_lib
    x = np.asarray(example_input)
    if float_onnx is None:
        float_onnx = export_lib.to_onnx(model.float_fn, variables, x, parity=False).model
    qdq = onnx.ModelProto()
    qdq.CopyFrom(float_onnx)
    input_name = qdq.graph.input[0].name
    onnx_values = _intermediate_values(qdq, {input_name: x})
    site_values = model.site_values(variables, x)
    acts = {n: v for n, v in site_values.items() if model.sites[n].kind == "activation"}
    act_matches = _match_tensors(acts, {k: v for k, v in onnx_values.items()})
    missing = [n for n, m in act_matches.items() if not m]
    if missing:
        raise QdqExportError(f"no ONNX tensor holds the values of activation sites {missing}"
                             f" ({[model.sites[n].source for n in missing]})")
    editor = _Editor(qdq)
    tensor_scale: Dict[str, float] = {}
    for name, tensors in act_matches.items():
        site = model.sites[name]
        scale = float(np.asarray(qparams["scale"][name]).reshape(()))
        zp = int(np.asarray(qparams["zero_point"][name]).reshape(()))
        dtype = _storage_dtype(site.spec)
        for tensor in tensors:
            dq = editor.qdq_tensor(tensor, scale, zp, dtype)
            tensor_scale[dq] = scale

    weight_inits, float_weights, weight_scale = _quantize_weights(
        editor, model, site_values, qparams)
    _quantize_biases(editor, weight_scale, tensor_scale)
    result = editor.finish()
    unpaid = []
    if drop_unpaid and model.profile.integer_kernels:
        result, removed = qdq_placement.drop_unpaid(result, model.profile.integer_kernels)
        unpaid = [site for site, tensors in act_matches.items()
                  if all(t in removed for t in tensors)]
        result.metadata_props.add(key=UNPAID_SITES_KEY, value=json.dumps(unpaid))
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        onnx.save(result, path)
    return QdqExport(result, path, act_matches, weight_inits, float_weights, unpaid)


def _quantize_weights(editor: _Editor, model: QuantizedModel, site_values, qparams):
    """Every weight site as an int8 initializer behind DequantizeLinear (per channel where
    the ONNX layout allows, dequantized float where it cannot be represented); returns
    site -> initializer, the sites left float, and initializer -> (scale, axis)."""
    inits = {n: numpy_helper.to_array(i) for n, i in editor.inits.items()
             if i.data_type == TensorProto.FLOAT}
    weight_inits, float_weights, weight_scale = {}, [], {}
    for name, site in model.sites.items():
        if site.kind != "weight":
            continue
        w = np.asarray(site_values[name], np.float64)
        found = None
        for init_name, value in inits.items():
            if value.size == w.size and init_name not in weight_inits.values():
                layout = _weight_layout(w, value, site.channel_axes)
                if layout is not None:
                    found = (init_name, layout)
                    break
        if found is None:
            raise QdqExportError(f"weight {name} ({site.source}) has no ONNX initializer")
        init_name, (perm, axis) = found
        scale = np.asarray(qparams["scale"][name], np.float64)
        zp = np.asarray(qparams["zero_point"][name], np.float64)
        ints = quantize_to_int(w, scale, zp, site.spec)
        moved = np.transpose(ints, perm).reshape(inits[init_name].shape)
        if axis == "unrepresentable":
            dequant = np.transpose((ints - zp) * scale, perm).reshape(inits[init_name].shape)
            editor.graph.initializer.remove(editor.inits.pop(init_name))
            editor.graph.initializer.append(numpy_helper.from_array(
                dequant.astype(np.float32), init_name))
            float_weights.append(name)
            continue
        per_channel = scale.reshape(-1) if axis is not None else scale.reshape(())
        editor.int_initializer(init_name, moved, per_channel, axis, np.int8)
        weight_inits[name] = init_name
        weight_scale[init_name] = (per_channel, axis)
    return weight_inits, float_weights, weight_scale


def _storage_dtype(spec):
    if spec.bits > 8:
        return np.uint16 if spec.unsigned else np.int16
    return np.uint8 if spec.unsigned else np.int8


def _quantize_biases(editor: _Editor, weight_scale, tensor_scale):
    """Conv / Gemm biases to int32 with scale s_x * s_w where input and weight are QDQ."""
    for node in editor.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        x, w, b = node.input[0], node.input[1], node.input[2]
        if x not in tensor_scale or w not in weight_scale or b not in editor.inits:
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        w_scale, axis = weight_scale[w]
        bias = numpy_helper.to_array(editor.inits[b]).astype(np.float64)
        if np.ndim(w_scale) and bias.shape != w_scale.shape:
            continue
        scale = tensor_scale[x] * (w_scale if np.ndim(w_scale) else np.full(bias.shape,
                                                                              w_scale))
        ints = np.round(bias / scale)
        if np.any(np.abs(ints) > 2 ** 31 - 1):
            continue
        editor.int_initializer(b, ints, scale, 0, np.int32)


def unpaid_sites(qdq_model: onnx.ModelProto) -> List[str]:
    """The activation sites ``to_qdq_onnx`` left float in this model (its metadata)."""
    for prop in qdq_model.metadata_props:
        if prop.key == UNPAID_SITES_KEY:
            return list(json.loads(prop.value))
    return []


def enabled_sites(qdq_model: onnx.ModelProto, model: QuantizedModel) -> List[str]:
    """The sites of ``model`` that ``qdq_model`` quantizes: pass them as
    ``model.apply(..., enabled=...)`` to get the fake-quant twin of the ONNX model."""
    left_float = set(unpaid_sites(qdq_model))
    return [name for name in model.sites if name not in left_float]


def check(qdq_model: onnx.ModelProto, model: QuantizedModel, variables, qparams, x,
          threads: int = 1) -> QdqCheck:
    """Runs the QDQ model in onnxruntime; integer kernels used and parity with JAX (the
    fake-quant model without the sites the export left float, ``unpaid_sites``)."""
    import jax
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        optimized_path = os.path.join(tmp, "optimized.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.optimized_model_filepath = optimized_path
        sess = ort.InferenceSession(qdq_model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: np.asarray(x)})[0]
        optimized = onnx.load(optimized_path)
    counts = collections.Counter(n.op_type for n in optimized.graph.node)
    integer = {k: v for k, v in counts.items() if k in INTEGER_OPS}
    float_ops = {k: v for k, v in counts.items() if k in ("Conv", "MatMul", "Gemm",
                                                           "FusedConv", "FusedMatMul", "Einsum")}
    enabled = enabled_sites(qdq_model, model)
    want = np.asarray(jax.jit(lambda v, q, x: model.apply(v, q, x, enabled=enabled))(
        variables, qparams, x))
    agree = np.argmax(got, -1) == np.argmax(want, -1)
    scale = float(np.max(np.abs(want)))
    top2 = np.sort(want, -1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 0.01 * scale
    return QdqCheck(integer, float_ops, float(np.mean(agree)),
                    float(np.max(np.abs(got - want))), scale,
                    float(np.mean(agree[decided])) if decided.any() else float("nan"),
                    int(decided.sum()))
