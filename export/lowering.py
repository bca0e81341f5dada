"""Jaxpr rewrites that turn a model jax2onnx would export wrongly into one it exports right.

Both re-evaluate the traced jaxpr (``core.rewrite.evaluate``) with a hook, so the result is
again a plain JAX function that computes the same thing:

- half precision -> float32. onnxruntime's CPU provider has no bfloat16 Gemm / MatMul / Conv
  (and few float16 kernels), so a bf16 or fp16 model exported as is builds a graph that
  cannot run. ``as_float32`` gives the same model computed in float32: half-precision
  variables and inputs are cast up, and every equation is re-bound with float32 operands
  and float32 in place of a half dtype in its parameters (``convert_element_type``'s
  ``new_dtype``, ``dot_general``'s ``preferred_element_type``, ``iota``'s ``dtype``...), so
  casts a Flax ``dtype=jnp.bfloat16`` layer makes inside become float32 too. Parity is then
  checked against this float32 function.
- ``pad`` under a symbolic batch. jax2onnx 0.17's pad lowering stamps the output shape with
  ``int(dim)``, which raises ``InconclusiveDimensionOperation: Symbolic dimension 'B'``.
  The same pad written as slices and a concatenation with a broadcast constant lowers
  fine (ONNX Slice / Expand / Concat), so ``for_jax2onnx`` swaps those pads, and only them.
- an output the model also reads (``for_jax2onnx``): returned through a copy, so jax2onnx's
  transpose folding keeps the node that makes it.
"""
import logging
from typing import Callable, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import jaxpr_as_fun

from core import primitives as P, rewrite, trace as trace_lib

HALF_FLOATS = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))
logger = logging.getLogger(__name__)


def _is_half(dtype) -> bool:
    try:
        return np.dtype(dtype) in HALF_FLOATS
    except TypeError:
        return False


def uses_half_floats(closed) -> bool:
    """Whether any value of ``closed`` (inputs, constants, every equation's results in
    nested jaxprs) is bfloat16 or float16."""
    values = list(closed.jaxpr.invars) + list(closed.jaxpr.constvars)
    values += [v for _, eqn in trace_lib.iter_eqns(closed.jaxpr) for v in eqn.outvars]
    return any(_is_half(getattr(v.aval, "dtype", None)) for v in values)


def _up(value):
    """A half-precision array (traced or concrete) as float32; anything else unchanged."""
    if _is_half(getattr(value, "dtype", None)):
        return lax.convert_element_type(value, np.float32)
    return value


def _up_concrete(value):
    return np.asarray(value, np.float32) if _is_half(getattr(value, "dtype", None)) else value


def _float32_param(value):
    if isinstance(value, (np.dtype, type)) and _is_half(value):
        return np.dtype(np.float32)
    return value


def _float32_operand(value, atom):
    """An operand as float32 if it is half precision; literals as arrays first (a loop's
    carry must have one type going in and coming out)."""
    if not isinstance(value, jax.Array):
        value = jnp.asarray(value, atom.aval.dtype)
    return _up(value)


def _float32_hook(eqn, invals, path):
    if trace_lib.call_jaxpr(eqn) is not None or eqn.primitive is P.cond_p:
        return None                   # inlined by rewrite.evaluate, this hook applied inside
    if eqn.primitive in rewrite.CONTROL_FLOW:     # scan / while: bodies computed in float32
        return rewrite.rebind_control_flow(
            eqn, [_float32_operand(v, a) for v, a in zip(invals, eqn.invars)], _float32_hook,
            path, finish=lambda outs: [_up(o) for o in outs])
    if trace_lib.sub_jaxprs(eqn) and any(uses_half_floats(s) for s in trace_lib.sub_jaxprs(eqn)):
        raise NotImplementedError(
            f"cannot compute {eqn.primitive.name} at {trace_lib.source_line(eqn)} in float32 "
            f"for ONNX export: its body is half precision; cast the model to float32 first")
    params = {k: _float32_param(v) for k, v in eqn.params.items()}
    return rewrite.bind_equation(eqn.replace(params=params), [_up(v) for v in invals])


def as_float32(fn: Callable, variables, inputs: Sequence) -> Tuple[Callable, object, tuple]:
    """``(fn32, variables32, inputs32)``: ``fn`` computed in float32 wherever it used
    bfloat16 / float16, with its half-precision variables and inputs cast to float32.
    ``fn32`` takes the same pytrees (of any batch size) and returns float32 outputs.

    ``fn`` is traced on the float32 arguments, so Python constants meeting them stay float32
    and only the model's own casts to a half type remain, re-bound as float32 (constants the
    model applies after such a cast, like gelu's, were already rounded to half precision)."""
    def fn32(variables32, *inputs32):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(variables32, *inputs32)
        leaves32 = jax.tree_util.tree_leaves((variables32, *inputs32))
        outs = rewrite.evaluate(closed, [_up(x) for x in leaves32], _float32_hook)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape),
                                            [_up(o) for o in outs])

    up = lambda tree: jax.tree_util.tree_map(_up_concrete, tree)
    return fn32, up(variables), tuple(up(x) for x in inputs)


def half_floats_as_float32(fn, variables, example_inputs, traced, retrace: Callable,
                           exporter: str) -> Tuple[Callable, object, tuple, object, List[str]]:
    """``(fn, variables, example_inputs, traced, notes)`` computed in float32 when the traced
    model uses bfloat16 / float16 anywhere (``retrace(fn, variables, example_inputs)``
    traces the float32 function again), else returned as they are with no note. The
    exporters call it first: neither onnxruntime's CPU provider nor the TFLite converter
    runs half-precision Gemm / Conv, so a half model is exported and checked in float32."""
    if not uses_half_floats(traced.closed):
        return fn, variables, example_inputs, traced, []
    note = ("the model computes in bfloat16/float16, which the target runtime's CPU kernels "
            "do not run; exported in float32 (variables, inputs and computation cast to "
            "float32), parity checked against the float32 JAX function")
    logger.warning("%s: %s", exporter, note)
    fn, variables, example_inputs = as_float32(fn, variables, example_inputs)
    return fn, variables, example_inputs, retrace(fn, variables, example_inputs), [note]


def pad_by_concatenation(x, value, config):
    """``lax.pad(x, value, config)`` without interior padding, as slices (negative edges)
    and a concatenation with ``value`` broadcast to each edge's shape."""
    for axis, (lo, hi, interior) in enumerate(config):
        if interior:
            raise ValueError("interior padding has no slice/concatenate form")
        size = x.shape[axis]
        x = lax.slice_in_dim(x, max(-lo, 0), size - max(-hi, 0), axis=axis)
        parts = [x]
        for edge, at_end in ((lo, False), (hi, True)):
            if edge > 0:
                shape = x.shape[:axis] + (edge,) + x.shape[axis + 1:]
                fill = jnp.broadcast_to(jnp.asarray(value, x.dtype), shape)
                parts = parts + [fill] if at_end else [fill] + parts
        if len(parts) > 1:
            x = lax.concatenate(parts, axis)
    return x


def _symbolic_pad(eqn) -> bool:
    return (eqn.primitive is lax.pad_p
            and any(not isinstance(d, (int, np.integer)) for d in eqn.invars[0].aval.shape)
            and all(interior == 0 for _, _, interior in eqn.params["padding_config"]))


def _contains_symbolic_pad(eqn) -> bool:
    return any(_symbolic_pad(e) for sub in trace_lib.sub_jaxprs(eqn)
               for _, e in trace_lib.iter_eqns(sub.jaxpr))


def _pad_hook(eqn, invals, path):
    if _symbolic_pad(eqn):
        return [pad_by_concatenation(invals[0], invals[1], eqn.params["padding_config"])]
    if trace_lib.call_jaxpr(eqn) is not None and _contains_symbolic_pad(eqn):
        return None                   # inlined, so the pads inside are swapped too
    return rewrite.bind_equation(eqn, invals)


def _outputs_read_inside(jaxpr) -> List[int]:
    """Positions of the outputs that equations of ``jaxpr`` also read (a feature map the
    model returns and computes on)."""
    read = {v for e in jaxpr.eqns for v in e.invars if not trace_lib.is_literal(v)}
    return [i for i, v in enumerate(jaxpr.outvars)
            if not trace_lib.is_literal(v) and v in read]


def for_jax2onnx(closed) -> Callable:
    """The function of ``closed`` to hand to jax2onnx: ``jaxpr_as_fun``, or, when it pads a
    tensor with a symbolic dimension, the same with those pads as concatenations. An output
    that the model also computes on is returned through ``copy`` (an ONNX Identity): when its
    only reader is a conv, jax2onnx 0.17.1's transpose-pair folding removes the NCHW->NHWC
    Transpose that makes the output and leaves the graph output without a producer."""
    fn = jaxpr_as_fun(closed)
    if any(_symbolic_pad(e) for _, e in trace_lib.iter_eqns(closed.jaxpr)):
        fn = lambda *xs: rewrite.evaluate(closed, list(xs), _pad_hook)  # noqa: E731
    shared = _outputs_read_inside(closed.jaxpr)
    if not shared:
        return fn

    def with_copies(*xs):
        outs = list(fn(*xs))
        return [lax.copy_p.bind(o) if i in shared else o for i, o in enumerate(outs)]
    return with_copies
