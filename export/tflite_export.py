"""Export any JAX function ``fn(variables, *inputs)`` to a .tflite flatbuffer, checked in LiteRT.

Why: edge devices run .tflite; a compressed model must reach them with the same numbers.
The function is traced by us (``export.onnx_export.trace`` at the example's static batch)
and the closed jaxpr, variables as constants, is handed to ``jax.experimental.jax2tf`` and
then to the TFLite converter of TensorFlow (builtin ops only, so plain LiteRT runs it
without the TF-ops delegate). The graph keeps the model's own layout: NHWC models (the zoo,
imported TFLite models) convert without inserted transposes.

Parity is checked like ``to_onnx``'s: the flatbuffer runs in LiteRT (XNNPACK, the runtime
``litert-cpu-1t`` measures) on the example inputs, every output leaf is compared with the
JAX function relative to that leaf's scale, and a mismatch raises ``ExportParityError``.
A bfloat16 / float16 model is exported and checked in float32, as ``to_onnx`` does.

Inputs and outputs may be any pytrees: the .tflite inputs are the input leaves named
``input_<i>`` and its outputs the output leaves named ``output_<j>``, in ``jax.tree_util``
order, found by name through the model's signature (LiteRT's tensor order may differ).

TensorFlow is an extra (``requirements-tflite.txt``): without it ``to_tflite`` raises an
ImportError saying how to install it; reading and running .tflite needs only ai-edge-litert.
"""
import collections
import dataclasses
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.extend.core
import numpy as np

from export import litert_runner, lowering
from export.onnx_export import trace
from export.parity import ExportParityError, OutputParity, ParityReport, _leaf_error, example_batch


# Of each output's scale: LiteRT's XNNPACK float32 kernels against XLA's. Measured 1e-7..3e-5
# (tests/export/test_tflite_export.py); the issue measured at most 4e-4 on imported models.
DEFAULT_RTOL = 5e-4


@dataclasses.dataclass
class TFLiteExportResult:
    path: Optional[str]
    model: bytes                           # the .tflite flatbuffer
    input_names: List[str]                 # one per leaf of the example inputs
    output_names: List[str]                # one per leaf of fn's output
    output_tree: Any                       # treedef of fn's output pytree
    parity: Optional[ParityReport]
    op_counts: dict                        # builtin op name (or custom code) -> count
    input_tree: Any = None                 # treedef of the inputs tuple
    batch: Optional[int] = None            # the static batch the model was converted at
    notes: List[str] = dataclasses.field(default_factory=list)   # what the export changed

    @property
    def transpose_count(self) -> int:
        return self.op_counts.get("TRANSPOSE", 0)


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")       # C++ start-up chatter
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as error:
        raise ImportError(
            "to_tflite converts through TensorFlow, an extra of this project: "
            "`.venv/bin/pip install -r requirements-tflite.txt` (running .tflite models "
            "needs only ai-edge-litert)") from error
    return tf, jax2tf


def _schema():
    from ai_edge_litert import schema_py_generated
    return schema_py_generated


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def count_ops(model: bytes) -> Dict[str, int]:
    """Operator counts of the first subgraph of a .tflite flatbuffer, by builtin op name
    (the custom code for custom ops)."""
    schema = _schema()
    root = schema.Model.GetRootAs(bytearray(model), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
        codes.append(_text(code.CustomCode()) if name == "CUSTOM" else name)
    graph = root.Subgraphs(0)
    return dict(collections.Counter(codes[graph.Operators(j).OpcodeIndex()]
                                    for j in range(graph.OperatorsLength())))


def signature_tensors(model: bytes) -> Dict[str, Dict[str, int]]:
    """``{"inputs": {name: tensor index}, "outputs": {...}}`` of the model's first signature."""
    root = _schema().Model.GetRootAs(bytearray(model), 0)
    if not root.SignatureDefsLength():
        raise ValueError("the .tflite model has no signature; its inputs cannot be named")
    sig = root.SignatureDefs(0)
    return {"inputs": {_text(sig.Inputs(i).Name()): sig.Inputs(i).TensorIndex()
                       for i in range(sig.InputsLength())},
            "outputs": {_text(sig.Outputs(i).Name()): sig.Outputs(i).TensorIndex()
                        for i in range(sig.OutputsLength())}}


def run_named(model: bytes, runtime, input_names: Sequence[str],
              output_names: Sequence[str], inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Runs ``runtime`` (a LiteRT interpreter of ``model``) on ``inputs`` given in
    ``input_names`` order and returns the outputs in ``output_names`` order."""
    tensors = signature_tensors(model)
    by_tensor = {tensors["inputs"][n]: x for n, x in zip(input_names, inputs)}
    ordered = [by_tensor[d["index"]] for d in runtime.get_input_details()]
    got = litert_runner.run(runtime, ordered)
    position = {d["index"]: k for k, d in enumerate(runtime.get_output_details())}
    return [got[position[tensors["outputs"][n]]] for n in output_names]


def compare(model: bytes, fn, variables, inputs: Sequence, input_names: Sequence[str],
            output_names: Sequence[str], rtol: float = DEFAULT_RTOL) -> ParityReport:
    """Runs the .tflite ``model`` in LiteRT (XNNPACK) and ``fn(variables, *inputs)`` in JAX
    on the example inputs, and measures the error per output leaf."""
    leaves, in_tree = jax.tree_util.tree_flatten(list(inputs))
    xs = [np.asarray(x) for x in leaves]
    got = run_named(model, litert_runner.interpreter(model), input_names, output_names, xs)
    want = jax.tree_util.tree_flatten_with_path(
        jax.jit(fn)(variables, *jax.tree_util.tree_unflatten(in_tree, xs)))[0]
    outputs = []
    for name, g, (path, w) in zip(output_names, got, want):
        w, where = np.asarray(w), jax.tree_util.keystr(path)
        if g.shape != w.shape:
            raise ExportParityError(f"output {name} {where}: TFLite shape {g.shape} != JAX "
                                    f"shape {w.shape}")
        outputs.append(OutputParity(name, tuple(w.shape), *_leaf_error(g, w), where))
    batch = example_batch(inputs)
    return ParityReport(outputs, rtol, [batch] if batch is not None else [])


def check_parity(model: bytes, fn, variables, inputs: Sequence, input_names: Sequence[str],
                 output_names: Sequence[str], rtol: float = DEFAULT_RTOL) -> ParityReport:
    """``compare``, raising ``ExportParityError`` when an output is off by more than rtol."""
    report = compare(model, fn, variables, inputs, input_names, output_names, rtol)
    if not report.ok:
        lines = [f"  {o.name} {o.path} {o.shape}: max |tflite - jax| = {o.max_abs_error:.3g}, "
                 f"output scale {o.scale:.3g}, relative {o.relative_error:.3g}"
                 for o in report.outputs]
        raise ExportParityError(f"TFLite export does not reproduce JAX (rtol {rtol:g}):\n"
                                + "\n".join(lines))
    return report


def convert(traced, input_names: Sequence[str], output_names: Sequence[str]) -> bytes:
    """The .tflite flatbuffer of a traced program (``export.onnx_export.trace``), its
    constants inlined, inputs and outputs named in its signature."""
    tf, jax2tf = _tensorflow()
    as_fun = jax.extend.core.jaxpr_as_fun(traced.closed)
    converted = jax2tf.convert(lambda *xs: as_fun(*xs), with_gradient=False)

    def named(*xs):
        return dict(zip(output_names, converted(*xs)))

    signature = [tf.TensorSpec(s.shape, s.dtype, name=n)
                 for s, n in zip(traced.specs, input_names)]
    function = tf.function(named, input_signature=signature, autograph=False)
    holder = tf.Module()
    holder.function = function
    # Through a SavedModel with a serving signature: the converter then writes a signature
    # (input and output names -> tensors); from concrete functions it writes none.
    with tempfile.TemporaryDirectory() as directory:
        tf.saved_model.save(holder, directory,
                            signatures=function.get_concrete_function())
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return bytes(converter.convert())


def to_tflite(fn, variables, *example_inputs, path: Optional[str] = None,
              parity: bool = True, rtol: float = DEFAULT_RTOL) -> TFLiteExportResult:
    """Exports ``fn(variables, *example_inputs)`` to .tflite (written to ``path`` if given)
    at the example inputs' static shapes (their batch included).

    Each example input may be any pytree; the model's inputs are their leaves and its
    outputs the leaves of fn's output pytree, in ``jax.tree_util`` order. With ``parity``
    the model runs in LiteRT (XNNPACK) on the example inputs and is compared with JAX leaf
    by leaf; a relative error above ``rtol`` (of each leaf's scale) raises
    ``export.ExportParityError``. A bfloat16 / float16 model is exported (and checked) in
    float32, with a logged warning and a note in the result. Needs TensorFlow
    (``requirements-tflite.txt``)."""
    traced = trace(fn, variables, *example_inputs, dynamic_batch=False)
    fn, variables, example_inputs, traced, notes = lowering.half_floats_as_float32(
        fn, variables, example_inputs, traced, exporter="export.to_tflite",
        retrace=lambda f, v, xs: trace(f, v, *xs, dynamic_batch=False))
    input_names = [f"input_{i}" for i in range(len(traced.specs))]
    output_names = [f"output_{j}" for j in range(traced.out_tree.num_leaves)]
    model = convert(traced, input_names, output_names)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(model)
    report = None
    if parity:
        report = check_parity(model, fn, variables, example_inputs, input_names,
                              output_names, rtol)
    return TFLiteExportResult(path, model, input_names, output_names, traced.out_tree,
                              report, count_ops(model), traced.in_tree,
                              example_batch(example_inputs), notes)
