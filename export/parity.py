"""Parity between a JAX function and its ONNX export, checked in onnxruntime.

An export that silently changes the numbers is worse than none: every model the tools produce
is checked right after export, and a mismatch raises ``ExportParityError``. The tolerance is
relative to the scale of each output (max |reference|), so logits of any magnitude and tiny
regression outputs are judged alike; integer outputs must match exactly.
"""
import dataclasses
from typing import List, Sequence, Union

import jax
import numpy as np
import onnx
import onnxruntime as ort


class ExportParityError(AssertionError):
    """onnxruntime does not reproduce the JAX function within tolerance."""


@dataclasses.dataclass
class OutputParity:
    name: str
    shape: tuple
    max_abs_error: float
    scale: float
    relative_error: float


@dataclasses.dataclass
class ParityReport:
    outputs: List[OutputParity]
    rtol: float
    batches: List[int]

    @property
    def max_relative_error(self) -> float:
        return max((o.relative_error for o in self.outputs), default=0.0)

    @property
    def ok(self) -> bool:
        return self.max_relative_error <= self.rtol


def session(model: Union[str, bytes, onnx.ModelProto], threads: int = 1,
            optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def batch_variant(inputs: Sequence[np.ndarray], batch: int) -> List[np.ndarray]:
    """The example inputs resized along axis 0 to ``batch`` rows (cycling the examples)."""
    out = []
    for x in inputs:
        x = np.asarray(x)
        index = np.arange(batch) % x.shape[0]
        out.append(x[index])
    return out


def compare(model, fn, variables, inputs: Sequence, rtol: float = 1e-4,
            batches: Sequence[int] = ()) -> ParityReport:
    """Runs ``model`` in onnxruntime and ``fn(variables, *inputs)`` in JAX on the example inputs
    (and on copies resized to each extra batch size) and measures the error per output."""
    sess = session(model)
    names = [i.name for i in sess.get_inputs()]
    jitted = jax.jit(fn)
    input_sets = [[np.asarray(x) for x in inputs]]
    input_sets += [batch_variant(inputs, b) for b in batches]
    worst = {}
    for xs in input_sets:
        got = sess.run(None, dict(zip(names, xs)))
        want = [np.asarray(w) for w in jax.tree_util.tree_leaves(jitted(variables, *xs))]
        if len(got) != len(want):
            raise ExportParityError(f"ONNX model has {len(got)} outputs, JAX has {len(want)}")
        for out, g, w in zip(sess.get_outputs(), got, want):
            if g.shape != w.shape:
                raise ExportParityError(
                    f"output {out.name}: ONNX shape {g.shape} != JAX shape {w.shape}")
            if w.dtype.kind in "iub":
                err = float(np.max(g != w)) if w.size else 0.0
                scale, rel = 1.0, err
            else:
                diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
                err = float(np.max(diff)) if w.size else 0.0
                if not np.all(np.isfinite(g)) and np.array_equal(np.isfinite(g),
                                                                  np.isfinite(w)):
                    err = float(np.max(diff[np.isfinite(w)], initial=0.0))
                scale = float(np.max(np.abs(w[np.isfinite(w)]), initial=0.0)) if w.size else 0
                rel = err / max(scale, 1e-6) if np.isfinite(err) else float("inf")
            previous = worst.get(out.name)
            if previous is None or rel > previous.relative_error:
                worst[out.name] = OutputParity(out.name, tuple(w.shape), err, scale, rel)
    return ParityReport(list(worst.values()), rtol, [len(np.asarray(inputs[0]))] + list(batches)
                        if len(inputs) and np.ndim(inputs[0]) else [])


def check_parity(model, fn, variables, inputs: Sequence, rtol: float = 1e-4,
                 batches: Sequence[int] = ()) -> ParityReport:
    """``compare``, raising ``ExportParityError`` when an output is off by more than rtol."""
    report = compare(model, fn, variables, inputs, rtol, batches)
    if not report.ok:
        lines = [f"  {o.name} {o.shape}: max |onnx - jax| = {o.max_abs_error:.3g}, "
                 f"output scale {o.scale:.3g}, relative {o.relative_error:.3g}"
                 for o in report.outputs]
        raise ExportParityError(
            f"ONNX export does not reproduce JAX (rtol {rtol:g}, batches {report.batches}):\n"
            + "\n".join(lines))
    return report
