"""Tracing a model to one closed jaxpr whose inputs know which parameter they are.

Every compression tool in this project works on the jaxpr of ``fn(variables, *inputs)``,
not on Flax modules, so it works on any JAX model (linen, NNX through ``nnx.split``, plain
jax.numpy). ``jax.make_jaxpr`` flattens its arguments exactly like
``jax.tree_util.tree_flatten_with_path((variables, *inputs))``, so invar ``i`` of the jaxpr is
leaf ``i`` of that flattening: that is how an invar gets its parameter path, and how the
invars split into parameters (leaves of ``variables``) and model inputs (the rest).

Models also hide most of their equations inside sub-jaxprs: ``jax.nn.relu`` is a
``custom_jvp_call`` around a nested ``jit``, ``jnp.take`` is a ``jit``, ``jax.checkpoint``
is ``remat2``. ``call_jaxpr`` and ``sub_jaxprs`` give the nested jaxprs of an equation so an
interpreter can enter them, and ``source_line`` names the user code an equation came from.
"""
import dataclasses
import difflib
import os
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import jax
import numpy as np
from jax import export as jax_export
from jax._src import source_info_util
from jax.extend import core as jcore

from core import flax_param_check, primitives

# Call-like primitive -> the parameter holding its jaxpr (``core.primitives``).
CALL_JAXPR_PARAM = primitives.CALL_JAXPR_PARAM


def path_to_str(path) -> str:
    """``(DictKey('params'), DictKey('conv'), ...)`` -> ``'params/conv/...'``."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


@dataclasses.dataclass
class Traced:
    """A model as a closed jaxpr whose invars carry their pytree paths.

    ``in_paths[i]`` names invar ``i``: for parameters, the path inside ``variables``
    (``'params/stem/kernel'``); for model inputs, ``'input0'``, ``'input1/...'``.
    """
    closed_jaxpr: jcore.ClosedJaxpr
    in_paths: Tuple[str, ...]
    in_key_paths: Tuple[Tuple[Any, ...], ...]
    is_param: Tuple[bool, ...]
    out_tree: Any
    out_shapes: Any

    @property
    def jaxpr(self) -> jcore.Jaxpr:
        return self.closed_jaxpr.jaxpr

    @property
    def num_params(self) -> int:
        return sum(self.is_param)

    def param_invars(self) -> List[Tuple[str, jcore.Var]]:
        return [(p, v) for p, v, is_p in zip(self.in_paths, self.jaxpr.invars, self.is_param)
                if is_p]

    def input_invars(self) -> List[Tuple[str, jcore.Var]]:
        return [(p, v) for p, v, is_p in zip(self.in_paths, self.jaxpr.invars, self.is_param)
                if not is_p]


def trace(fn: Callable, variables, *inputs) -> Traced:
    """Traces ``fn(variables, *inputs)`` to a closed jaxpr with parameter paths on its invars."""
    with flax_param_check.memoized_param_check():   # a quarter of a linen ResNet-50's trace
        closed, out_shapes = jax.make_jaxpr(fn, return_shape=True)(variables, *inputs)
    flat, _ = jax.tree_util.tree_flatten_with_path((variables, *inputs))
    if len(flat) != len(closed.jaxpr.invars):
        raise ValueError(f"{len(flat)} leaves but {len(closed.jaxpr.invars)} jaxpr invars")
    num_params = len(jax.tree_util.tree_leaves(variables))
    paths, key_paths = [], []
    for i, (path, _) in enumerate(flat):
        key_paths.append(tuple(path[1:]))
        if i < num_params:
            paths.append(path_to_str(path[1:]))
        else:
            # path[0] is the position in (variables, *inputs); input k is position k + 1.
            rest = path_to_str(path[1:])
            paths.append(f"input{path[0].idx - 1}" + (f"/{rest}" if rest else ""))
    is_param = tuple(i < num_params for i in range(len(flat)))
    return Traced(closed, tuple(paths), tuple(key_paths), is_param,
                  jax.tree_util.tree_structure(out_shapes), out_shapes)


def as_closed(jaxpr) -> jcore.ClosedJaxpr:
    """Open ``Jaxpr`` (as in ``remat2``) or ``ClosedJaxpr`` -> ``ClosedJaxpr``."""
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        return jaxpr
    return jcore.ClosedJaxpr(jaxpr, ())


def call_jaxpr(eqn) -> Optional[jcore.ClosedJaxpr]:
    """The sub-jaxpr of a call-like equation (operands map 1:1 to its invars), else None."""
    param = CALL_JAXPR_PARAM.get(eqn.primitive)
    if param is None or param not in eqn.params:
        return None
    return as_closed(eqn.params[param])


def sub_jaxprs(eqn) -> List[jcore.ClosedJaxpr]:
    """Every jaxpr nested in an equation's parameters (calls, cond branches, loop bodies)."""
    found = []
    for value in eqn.params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, (jcore.ClosedJaxpr, jcore.Jaxpr)):
                found.append(as_closed(item))
    return found


def iter_eqns(jaxpr: jcore.Jaxpr, prefix: Tuple[int, ...] = ()
              ) -> Iterator[Tuple[Tuple[int, ...], Any]]:
    """Depth-first ``(path, eqn)`` over a jaxpr and all its sub-jaxprs; a path is the
    equation indices from the top (sub-jaxprs of one equation are numbered after it)."""
    for i, eqn in enumerate(jaxpr.eqns):
        path = prefix + (i,)
        yield path, eqn
        for k, sub in enumerate(sub_jaxprs(eqn)):
            yield from iter_eqns(sub.jaxpr, path + (k,))


def activations(jaxpr: jcore.Jaxpr, sources: Iterable[Any]) -> Set[jcore.Var]:
    """The variables of ``jaxpr`` computed from any of ``sources`` (the model inputs: these
    are the activations), sources included. Every other variable is parameter-derived (a
    kernel, a BatchNorm scale ``rsqrt(var + eps) * gamma``, a reshaped bias): constant for
    given variables. An equation with sub-jaxprs counts as one operation."""
    found = set(sources)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, jcore.Literal) and v in found for v in eqn.invars):
            found.update(v for v in eqn.outvars if not isinstance(v, jcore.DropVar))
    return found


def equation_signature(eqn) -> Tuple:
    """What must agree for two equations of one program traced at different shapes to be
    the same equation: the primitive and the ranks of its operands and results (shapes and
    sizes may differ, ranks may not)."""
    return (eqn.primitive, tuple(len(shape_of(a)) for a in eqn.invars),
            tuple(len(shape_of(a)) for a in eqn.outvars))


def matching_equations(a: Sequence, b: Sequence) -> List[Tuple[int, int]]:
    """``(i, j)`` pairs matching equation i of a program to equation j of the same program
    traced at other shapes: one to one when their signatures agree, else the longest
    matching runs (a symbolic batch adds shape computations, e.g. the float count of a mean
    over the batch, a ``convert_element_type`` of rank 0 that must not be taken for the
    model's own casts of activations)."""
    a, b = [equation_signature(e) for e in a], [equation_signature(e) for e in b]
    if a == b:
        return [(i, i) for i in range(len(a))]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [(m.a + t, m.b + t) for m in matcher.get_matching_blocks() for t in range(m.size)]


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_line(eqn) -> str:
    """``'models/resnet.py:23 (__call__)'``: the user code an equation was traced from. The
    innermost frame outside installed packages wins, so a conv made by ``flax.linen.Conv``
    points at the model line that called it, not at flax."""
    frame = None
    for candidate in source_info_util.user_frames(eqn.source_info.traceback):
        if frame is None:
            frame = candidate
        if "site-packages" not in candidate.file_name:
            frame = candidate
            break
    if frame is None:
        return "unknown source"
    name = frame.file_name
    if name.startswith(_ROOT + os.sep):
        name = os.path.relpath(name, _ROOT)
    return f"{name}:{frame.start_line} ({frame.function_name})"


def shape_of(atom) -> Tuple[int, ...]:
    """Static shape of a Var or Literal (``()`` for tokens and other shapeless values)."""
    return tuple(getattr(atom.aval, "shape", ()))


def is_literal(atom) -> bool:
    return isinstance(atom, jcore.Literal)


def count_eqns(jaxpr: jcore.Jaxpr) -> int:
    return sum(1 for _ in iter_eqns(jaxpr))


__all__ = ["Traced", "trace", "call_jaxpr", "sub_jaxprs", "iter_eqns", "source_line",
           "as_closed", "path_to_str", "shape_of", "is_literal", "CALL_JAXPR_PARAM",
           "count_eqns", "activations"]


BATCH_AXIS_NAME = "B"


def input_specs(example_inputs, dynamic_batch: bool = False) -> List[jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of the example inputs; with ``dynamic_batch`` axis 0 becomes one
    symbolic dimension shared by all inputs, so one export (jax.export, ONNX) serves every
    batch size."""
    arrays = [np.asarray(x) if not hasattr(x, "shape") else x for x in example_inputs]
    if not dynamic_batch:
        return [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in arrays]
    (batch,) = jax_export.symbolic_shape(BATCH_AXIS_NAME)
    return [jax.ShapeDtypeStruct(((batch,) + tuple(x.shape[1:])) if x.ndim else (), x.dtype)
            for x in arrays]
