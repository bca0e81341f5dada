"""Export any JAX function ``fn(variables, *inputs)`` to ONNX, clean the graph, check parity.

The function is traced to a jaxpr by us (``jax.make_jaxpr`` with a symbolic batch dimension)
and ``jax.extend.core.jaxpr_as_fun`` of that jaxpr is handed to jax2onnx. jax2onnx therefore
only ever sees primitives: its patching of Flax layers never runs, so linen, NNX and plain
jax.numpy models, and the rewritten functions the compression tools produce, all export the
same way. The variables become ONNX initializers. jax2onnx does the per-primitive conversion;
``export.graph_passes`` then removes the NHWC<->NCHW Transpose pairs it leaves around convs
and pools, folds constants and BatchNorm into convs. Finally ``export.parity`` runs the model
in onnxruntime against JAX (also at another batch size when the batch is dynamic) and raises
``ExportParityError`` on a mismatch.

Inputs and outputs may be any pytrees (a tuple ``(image, token_ids)`` in, a dict out): the
ONNX inputs are the leaves of the inputs and the outputs the leaves of the output, in
``jax.tree_util`` order. Before jax2onnx runs, ``export.preflight`` refuses primitives that
cannot be exported and reshapes that hard-code the batch (naming their source lines), and
``export.lowering`` computes bfloat16 / float16 models in float32 (onnxruntime's CPU
provider has no half-precision Gemm or Conv) and rewrites pads jax2onnx cannot lower under
a symbolic batch.
"""
import dataclasses
import logging
import os
from typing import Any, List, NamedTuple, Optional, Sequence

import jax
import onnx

from core.trace import input_specs
from export import graph_passes, jax2onnx_loading, lowering, preflight
from export.parity import ParityReport, check_parity, example_batch


@dataclasses.dataclass
class ExportResult:
    path: Optional[str]
    model: onnx.ModelProto
    input_names: List[str]                 # one per leaf of the example inputs
    output_names: List[str]                # one per leaf of fn's output
    output_tree: Any                       # treedef of fn's output pytree
    parity: Optional[ParityReport]
    op_counts: dict
    input_tree: Any = None                 # treedef of the inputs tuple
    notes: List[str] = dataclasses.field(default_factory=list)   # what the export changed

    @property
    def transpose_count(self) -> int:
        return self.op_counts.get("Transpose", 0)


class Traced(NamedTuple):
    closed: Any                            # ClosedJaxpr of the input leaves -> output leaves
    out_tree: Any
    specs: List[jax.ShapeDtypeStruct]      # one per input leaf
    in_tree: Any


def _trace_flat(fn, variables, example_inputs, dynamic_batch: bool) -> Traced:
    leaves, in_tree = jax.tree_util.tree_flatten(tuple(example_inputs))
    specs = input_specs(leaves, dynamic_batch)
    flat = lambda *xs: fn(variables, *jax.tree_util.tree_unflatten(in_tree, xs))
    closed, out_shape = jax.make_jaxpr(flat, return_shape=True)(*specs)
    return Traced(closed, jax.tree_util.tree_structure(out_shape), specs, in_tree)


def trace(fn, variables, *example_inputs, dynamic_batch: bool = True) -> Traced:
    """The closed jaxpr of ``input leaves -> output leaves`` of ``fn(variables, *inputs)``
    (variables become consts), with the output and input treedefs and the input specs.

    With ``dynamic_batch``, a reshape that hard-codes the batch size raises
    ``HardCodedBatchError`` naming its line, and any other failure to trace with a symbolic
    batch (where a static batch traces) says to export with ``dynamic_batch=False``."""
    if not dynamic_batch:
        return _trace_flat(fn, variables, example_inputs, False)
    try:
        with preflight.watch_reshapes():
            traced = _trace_flat(fn, variables, example_inputs, True)
    except preflight.HardCodedBatchError:
        raise
    except Exception as error:
        _trace_flat(fn, variables, example_inputs, False)   # a plain bug fails here too
        raise preflight.SymbolicBatchError(
            f"the model does not trace with a symbolic batch dimension 'B' (it may depend on "
            f"its batch size); export it with dynamic_batch=False. The error: "
            f"{type(error).__name__}: {error}") from error
    preflight.check_reshapes(traced.closed)
    return traced


def to_onnx(fn, variables, *example_inputs, path: Optional[str] = None,
            dynamic_batch: bool = True, parity: bool = True, rtol: float = 1e-4,
            optimize: bool = True, input_names: Optional[Sequence[str]] = None,
            model_name: str = "model") -> ExportResult:
    """Exports ``fn(variables, *example_inputs)`` to ONNX (written to ``path`` if given).

    Each example input may be any pytree; the ONNX inputs are their leaves and the outputs
    the leaves of fn's output pytree, in ``jax.tree_util`` order. With ``dynamic_batch``
    axis 0 of every input leaf (and output) is the symbolic dimension "B". With ``parity``
    the exported model is run in onnxruntime and compared with JAX leaf by leaf; a relative
    error above ``rtol`` raises ``export.ExportParityError``. A bfloat16 / float16 model is
    exported (and checked) in float32, with a logged warning and a note in the result.
    Unsupported primitives and batch-fixing reshapes raise before jax2onnx runs.
    """
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # chatty about shape-only values
    traced = trace(fn, variables, *example_inputs, dynamic_batch=dynamic_batch)
    fn, variables, example_inputs, traced, notes = lowering.half_floats_as_float32(
        fn, variables, example_inputs, traced, exporter="export.to_onnx",
        retrace=lambda f, v, xs: trace(f, v, *xs, dynamic_batch=dynamic_batch))
    preflight.check_primitives(traced.closed)
    as_fun = lowering.for_jax2onnx(traced.closed)

    def flat_fn(*xs):
        outs = as_fun(*xs)
        return tuple(outs) if len(outs) != 1 else outs[0]

    specs = traced.specs
    names = list(input_names) if input_names else [f"input_{i}" for i in range(len(specs))]
    if len(names) != len(specs):
        raise ValueError(f"{len(names)} input_names for {len(specs)} input leaves")
    output_names = [f"output_{i}" for i in range(traced.out_tree.num_leaves)]
    jax2onnx, _ = jax2onnx_loading.load()
    with jax2onnx_loading.namespaces_restored():
        model = jax2onnx.to_onnx(flat_fn, specs, model_name=model_name, input_names=names,
                                 output_names=output_names)
    if optimize:
        model = graph_passes.optimize(model)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        onnx.save(model, path)
    report = None
    if parity:
        batch = example_batch(example_inputs)
        extra = [batch + 1] if dynamic_batch and batch else []
        report = check_parity(model, fn, variables, example_inputs, rtol=rtol, batches=extra)
    return ExportResult(path, model, names, output_names, traced.out_tree, report,
                        graph_passes.count_ops(model), traced.in_tree, notes)
