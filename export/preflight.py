"""Checks made on the jaxpr before jax2onnx sees it, so an export that cannot work fails up
front with the primitive and the user's source line, not deep inside jax2onnx or as a
parity mismatch after a 10 s export.

Two checks:

- primitives jax2onnx cannot lower, or lowers into a graph onnxruntime refuses. jax2onnx's
  own plugin registry says which primitives it has a lowering for; ``UNSUPPORTED`` lists the
  ones it has a plugin for that still fail in onnxruntime (found by exporting them).
- reshapes that hard-code the batch size under a symbolic batch (``x.reshape(1, -1)``,
  ``x.reshape(4, 48)`` traced at batch 4). Traced with the batch "B", such a reshape moves
  B away from axis 0 ((B, 4, 4, 3) -> (1, 48*B)) or drops it ((B, 4, 4, 3) -> (4, 48));
  often the trace then fails further down (a matmul of 48*B against 48 features), far from
  the reshape. ``watch_reshapes`` checks every reshape as it is traced, so the error names
  the reshape itself; ``check_reshapes`` checks a finished jaxpr (nested jits cached from an
  earlier trace are not re-traced).
"""
import contextlib
import functools
import math
import os
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax._src import source_info_util

from core import primitives as P
from core import trace as trace_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Primitives jax2onnx has a plugin for whose ONNX graph onnxruntime still cannot run.
UNSUPPORTED: Dict[Primitive, str] = {
    P.fft_p: "jax2onnx emits DFT on complex64 tensors, which onnxruntime's DFT rejects",
}


class UnsupportedPrimitiveError(ValueError):
    """The model uses a primitive that cannot be exported to a runnable ONNX graph."""


class SymbolicBatchError(ValueError):
    """The model traces at its example batch size but not with a symbolic batch."""


class HardCodedBatchError(SymbolicBatchError):
    """A reshape hard-codes the batch size, so the model cannot have a dynamic batch."""


@functools.lru_cache(maxsize=1)
def jax2onnx_primitives() -> Optional[FrozenSet[str]]:
    """Primitive names jax2onnx has a lowering for (its plugin registry), or None when the
    registry cannot be read (then only ``UNSUPPORTED`` is checked)."""
    from export import jax2onnx_loading
    try:
        return frozenset(jax2onnx_loading.load()[1].PLUGIN_REGISTRY)
    except (ImportError, AttributeError):
        return None


def located_eqns(jaxpr, outer: str = "unknown source") -> Iterator[Tuple[object, str]]:
    """``(eqn, source line)`` over ``jaxpr`` and its nested jaxprs. Equations inside a
    library's jit (``jnp.fft.fft``, ``jnp.pad``) carry no user frame: they get the line of
    the call that contains them."""
    for eqn in jaxpr.eqns:
        here = trace_lib.source_line(eqn)
        here = outer if here == "unknown source" else here
        yield eqn, here
        for sub in trace_lib.sub_jaxprs(eqn):
            yield from located_eqns(sub.jaxpr, here)


def _caller_line() -> str:
    """The user line being traced right now (innermost frame outside this file, JAX and
    installed packages), formatted like ``core.trace.source_line``."""
    for frame in source_info_util.user_frames(source_info_util.current().traceback):
        name = frame.file_name
        if name == __file__ or "site-packages" in name:
            continue
        if name.startswith(_ROOT + os.sep):
            name = os.path.relpath(name, _ROOT)
        return f"{name}:{frame.start_line} ({frame.function_name})"
    return "unknown source"


def _why_unsupported(primitive: Primitive, known: Optional[FrozenSet[str]]) -> Optional[str]:
    """``known``: the names jax2onnx's plugin registry lowers (its registry is by name)."""
    if primitive in UNSUPPORTED:
        return UNSUPPORTED[primitive]
    if known is not None and primitive.name not in known:
        return "jax2onnx has no lowering for it"
    return None


def check_primitives(closed) -> None:
    """Raises ``UnsupportedPrimitiveError`` listing every primitive of ``closed`` (nested
    jaxprs included) that cannot be exported, each with its source line."""
    known = jax2onnx_primitives()
    problems: Dict[str, List[str]] = {}
    for eqn, where in located_eqns(closed.jaxpr):
        why = _why_unsupported(eqn.primitive, known)
        if why is not None:
            problems.setdefault(f"{eqn.primitive.name}: {why}", []).append(where)
    if problems:
        lines = [f"  {what}, at {', '.join(sorted(set(where)))}"
                 for what, where in problems.items()]
        raise UnsupportedPrimitiveError(
            "the model uses primitives that cannot be exported to ONNX:\n" + "\n".join(lines))


def _symbolic(dim) -> bool:
    return not isinstance(dim, (int, np.integer))


def hard_codes_batch(in_shape: Sequence, out_shape: Sequence) -> bool:
    """Whether a reshape of ``in_shape`` (batch symbol on axis 0) to ``out_shape`` fixes the
    batch: the batch must stay outermost, alone or merged with the axes after it ((B, 16)
    -> (16*B,) or (B, 4, 4) are fine; unit axes may come before it, (1, B, 16)); a constant
    before it ((1, 48*B), (2, 24*B)) or no batch at all ((4, 48)) means a fixed batch."""
    if not in_shape or not _symbolic(in_shape[0]):
        return False
    first = next((i for i, d in enumerate(out_shape) if _symbolic(d)), None)
    if first is None:
        return True
    if first == 0:
        return False
    return math.prod(out_shape[:first]) != 1 or str(out_shape[first]) != str(in_shape[0])


def _hard_coded_error(in_shape, out_shape, where: str) -> HardCodedBatchError:
    fmt = lambda s: "(" + ", ".join(str(d) for d in s) + ")"
    return HardCodedBatchError(
        f"the model hard-codes its batch size: at {where} a reshape turns {fmt(in_shape)} "
        f"into {fmt(out_shape)} with the symbolic batch B; export it with "
        f"dynamic_batch=False (or reshape with x.shape[0] instead of a constant)")


def check_reshapes(closed) -> None:
    """Raises ``HardCodedBatchError`` at the first reshape of ``closed`` that fixes the
    batch."""
    for eqn, where in located_eqns(closed.jaxpr):
        if eqn.primitive is lax.reshape_p:
            shapes = trace_lib.shape_of(eqn.invars[0]), trace_lib.shape_of(eqn.outvars[0])
            if hard_codes_batch(*shapes):
                raise _hard_coded_error(*shapes, where)


@contextlib.contextmanager
def watch_reshapes() -> Iterator[None]:
    """While active, tracing a reshape that fixes the batch raises ``HardCodedBatchError``
    at that reshape. It wraps ``lax.reshape_p.bind`` for the duration (restored on exit),
    because the trace often fails later, where the reshape is no longer visible."""
    primitive = lax.reshape_p
    if "bind" in vars(primitive):          # already watched (nested export)
        yield
        return
    original = primitive.bind

    def bind(operand, *args, **params):
        out = original(operand, *args, **params)
        in_shape, out_shape = tuple(np.shape(operand)), tuple(np.shape(out))
        if hard_codes_batch(in_shape, out_shape):
            raise _hard_coded_error(in_shape, out_shape, _caller_line())
        return out

    primitive.bind = bind
    try:
        yield
    finally:
        del primitive.bind
