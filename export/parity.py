"""Parity between a JAX function and its ONNX export, checked in onnxruntime.

An export that silently changes the numbers is worse than none: every model the tools produce
is checked right after export, and a mismatch raises ``ExportParityError``. The tolerance is
relative to the scale of each output (max |reference|), so logits of any magnitude and tiny
regression outputs are judged alike; integer outputs must match exactly.

Inputs and outputs may be any pytrees: the ONNX model's inputs are the leaves of the inputs
(``jax.tree_util`` order) and its outputs the leaves of the output, so both are compared
leaf by leaf, and each output is reported with its path in the output pytree.
"""
import dataclasses
from typing import List, Optional, Sequence, Union

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
    path: str = ""            # where this leaf sits in fn's output pytree, e.g. "['logits']"


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


def batch_variant(inputs: Sequence, batch: int) -> List[np.ndarray]:
    """The leaves of the example inputs (any pytrees) resized along axis 0 to ``batch`` rows
    (cycling the examples); scalars stay as they are."""
    out = []
    for x in jax.tree_util.tree_leaves(list(inputs)):
        x = np.asarray(x)
        out.append(x[np.arange(batch) % x.shape[0]] if x.ndim else x)
    return out


def example_batch(inputs: Sequence) -> Optional[int]:
    """The batch size of the example inputs: axis 0 of their first leaf (None if scalar)."""
    leaves = jax.tree_util.tree_leaves(list(inputs))
    return int(np.shape(leaves[0])[0]) if leaves and np.ndim(leaves[0]) else None


def _leaf_error(got: np.ndarray, want: np.ndarray):
    """(max abs error, scale, relative error) of one output leaf."""
    if want.dtype.kind in "iub":
        err = float(np.max(got != want)) if want.size else 0.0
        return err, 1.0, err
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    err = float(np.max(diff)) if want.size else 0.0
    if not np.all(np.isfinite(got)) and np.array_equal(np.isfinite(got), np.isfinite(want)):
        err = float(np.max(diff[np.isfinite(want)], initial=0.0))
    scale = float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0)) if want.size else 0
    return err, scale, err / max(scale, 1e-6) if np.isfinite(err) else float("inf")


def compare(model, fn, variables, inputs: Sequence, rtol: float = 1e-4,
            batches: Sequence[int] = ()) -> ParityReport:
    """Runs ``model`` in onnxruntime and ``fn(variables, *inputs)`` in JAX on the example inputs
    (and on copies resized to each extra batch size) and measures the error per output leaf.
    ``inputs`` are fn's positional inputs, each any pytree."""
    sess = session(model)
    names = [i.name for i in sess.get_inputs()]
    jitted = jax.jit(fn)
    leaves, in_tree = jax.tree_util.tree_flatten(list(inputs))
    if len(leaves) != len(names):
        raise ExportParityError(f"ONNX model has {len(names)} inputs, the example inputs "
                                f"have {len(leaves)} leaves")
    input_sets = [[np.asarray(x) for x in leaves]]
    input_sets += [batch_variant(inputs, b) for b in batches]
    worst = {}
    for xs in input_sets:
        got = sess.run(None, dict(zip(names, xs)))
        flat_want = jax.tree_util.tree_flatten_with_path(
            jitted(variables, *jax.tree_util.tree_unflatten(in_tree, xs)))[0]
        if len(got) != len(flat_want):
            raise ExportParityError(
                f"ONNX model has {len(got)} outputs, JAX has {len(flat_want)} output leaves")
        for out, g, (path, w) in zip(sess.get_outputs(), got, flat_want):
            w = np.asarray(w)
            where = jax.tree_util.keystr(path)
            if g.shape != w.shape:
                raise ExportParityError(f"output {out.name} {where}: ONNX shape {g.shape} "
                                        f"!= JAX shape {w.shape}")
            err, scale, rel = _leaf_error(g, w)
            previous = worst.get(out.name)
            if previous is None or rel > previous.relative_error:
                worst[out.name] = OutputParity(out.name, tuple(w.shape), err, scale, rel,
                                               where)
    batch = example_batch(inputs)
    return ParityReport(list(worst.values()), rtol,
                        [batch] + list(batches) if batch is not None else [])


def check_parity(model, fn, variables, inputs: Sequence, rtol: float = 1e-4,
                 batches: Sequence[int] = ()) -> ParityReport:
    """``compare``, raising ``ExportParityError`` when an output is off by more than rtol."""
    report = compare(model, fn, variables, inputs, rtol, batches)
    if not report.ok:
        lines = [f"  {o.name} {o.path} {o.shape}: max |onnx - jax| = {o.max_abs_error:.3g}, "
                 f"output scale {o.scale:.3g}, relative {o.relative_error:.3g}"
                 for o in report.outputs]
        raise ExportParityError(
            f"ONNX export does not reproduce JAX (rtol {rtol:g}, batches {report.batches}):\n"
            + "\n".join(lines))
    return report
