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
"""
import dataclasses
import logging
import os
from typing import Any, List, Optional, Sequence

import jax
import numpy as np
import onnx
from jax.extend.core import jaxpr_as_fun

from core.trace import input_specs
from export import graph_passes
from export.parity import ParityReport, check_parity



@dataclasses.dataclass
class ExportResult:
    path: Optional[str]
    model: onnx.ModelProto
    input_names: List[str]
    output_names: List[str]
    output_tree: Any                       # treedef of fn's output pytree
    parity: Optional[ParityReport]
    op_counts: dict

    @property
    def transpose_count(self) -> int:
        return self.op_counts.get("Transpose", 0)


def trace(fn, variables, *example_inputs, dynamic_batch: bool = True):
    """The closed jaxpr of ``inputs -> fn(variables, *inputs)`` (variables become consts)
    and the treedef of the output."""
    specs = input_specs(example_inputs, dynamic_batch)
    closed, out_shape = jax.make_jaxpr(lambda *xs: fn(variables, *xs), return_shape=True)(*specs)
    return closed, jax.tree_util.tree_structure(out_shape), specs


def to_onnx(fn, variables, *example_inputs, path: Optional[str] = None,
            dynamic_batch: bool = True, parity: bool = True, rtol: float = 1e-4,
            optimize: bool = True, input_names: Optional[Sequence[str]] = None,
            model_name: str = "model") -> ExportResult:
    """Exports ``fn(variables, *example_inputs)`` to ONNX (written to ``path`` if given).

    The outputs are the leaves of fn's output pytree, in ``jax.tree_util`` order. With
    ``dynamic_batch`` axis 0 of every input (and output) is the symbolic dimension "B".
    With ``parity`` the exported model is run in onnxruntime and compared with JAX; a
    relative error above ``rtol`` raises ``export.ExportParityError``.
    """
    import jax2onnx  # imported lazily: it takes seconds and patches libraries on import
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # chatty about shape-only values

    closed, out_tree, specs = trace(fn, variables, *example_inputs, dynamic_batch=dynamic_batch)
    as_fun = jaxpr_as_fun(closed)

    def flat_fn(*xs):
        outs = as_fun(*xs)
        return tuple(outs) if len(outs) != 1 else outs[0]

    names = list(input_names) if input_names else [f"input_{i}" for i in range(len(specs))]
    n_out = out_tree.num_leaves
    output_names = [f"output_{i}" for i in range(n_out)]
    model = jax2onnx.to_onnx(flat_fn, specs, model_name=model_name, input_names=names,
                             output_names=output_names)
    if optimize:
        model = graph_passes.optimize(model)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        onnx.save(model, path)
    report = None
    if parity:
        batch = np.shape(example_inputs[0])[0] if example_inputs and np.ndim(
            example_inputs[0]) else None
        extra = [batch + 1] if dynamic_batch and batch else []
        report = check_parity(model, fn, variables, example_inputs, rtol=rtol, batches=extra)
    return ExportResult(path, model, names, output_names, out_tree, report,
                        graph_passes.count_ops(model))
