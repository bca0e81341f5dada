"""One flat jaxpr with def-use links and the values computed from parameters alone.

Quantization decisions are about data flow: "the operand of this conv that comes from the
parameters is a weight", "this add has two activation operands, so an integer runtime
requantizes both", "this conv's output only feeds a bias add and a ReLU". Those questions
are easy on a FLAT jaxpr. ``flatten`` is ``core.rewritten.flatten`` (``jit``,
``custom_jvp_call`` and the other call primitives inlined), so ``jax.nn.relu`` becomes a
plain ``max(x, 0.0)`` in the same jaxpr as the conv that feeds it, and every equation keeps
its source line; ``FlatModel.at`` is that flat jaxpr at other input shapes, matched to the
analysed one (``FlatFunction``, a ``core.rewritten.RewrittenFunction``).

A variable is *constant* when it depends on parameters only (a kernel, a BatchNorm scale
``rsqrt(var + eps) * gamma``, a reshaped bias); the rest are *activations*
(``core.trace.activations``). Constant
values are computed once, concretely, from the given variables.
"""
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.extend import core as jcore

from jax._src import source_info_util

from core import primitives as P, rewrite, trace as trace_lib
from core.rewritten import Rewritten, RewrittenFunction, flatten as core_flatten, signature
from core.trace import source_line

# Frames from these places are library or tool code, not the model's: a finding points at
# the first frame outside them (the line of the model that made the op).
TOOL_DIRS = ("site-packages", os.sep + "core" + os.sep, os.sep + "quant" + os.sep,
             os.sep + "export" + os.sep)


def model_source(eqn) -> str:
    """``'models/vit.py:60 (Block.__call__)'``: the model line an equation came from,
    skipping library frames (flax.linen) and this project's tools; falls back to
    ``core.trace.source_line``."""
    for frame in source_info_util.user_frames(eqn.source_info.traceback):
        name = frame.file_name
        if any(part in name for part in TOOL_DIRS):
            continue
        if name.startswith(trace_lib._ROOT + os.sep):
            name = os.path.relpath(name, trace_lib._ROOT)
        return f"{name}:{frame.start_line} ({frame.function_name})"
    return source_line(eqn)


class FlatFunction(RewrittenFunction):
    """``fn`` as its flat jaxpr at any input shapes (concrete, traced or symbolic), each
    signature's program knowing which analysed equation and variable each of its own is.

    The analyses (sites, folded ops) name equations by index and variables of the jaxpr
    traced at the example; a model whose shapes depend on the batch (a ViT reshapes to
    ``(batch, tokens, dim)``) is traced again at other shapes. Its equations are matched
    to the analysed ones as ``pruning.plan`` does: one to one when the primitive sequences
    agree, else by the longest matching runs (a symbolic batch adds a few shape
    computations, which match nothing)."""

    def __init__(self, fn, variables, analysed: trace_lib.Traced, example_inputs):
        super().__init__(fn, variables)
        self.analysed = analysed
        self._programs[signature(example_inputs)] = self._program(analysed, {}, None)

    def _program(self, traced, var_map, analysed) -> "Retraced":
        params = tuple(p for p, is_p in zip(traced.in_paths, traced.is_param) if is_p)
        return Retraced(traced.closed_jaxpr, traced.out_tree, params, var_map, analysed)

    def rewrite(self, *input_specs) -> "Retraced":
        other = core_flatten(self.original_fn, self.variables_spec, *input_specs)
        old, new = self.analysed.jaxpr, other.jaxpr
        pairs = trace_lib.matching_equations(old.eqns, new.eqns)
        var_map = dict(zip(old.invars, new.invars))
        var_map.update(zip(old.constvars, new.constvars))
        for i, j in pairs:
            var_map.update(zip(old.eqns[i].outvars, new.eqns[j].outvars))
        return self._program(other, var_map, {j: i for i, j in pairs})


@dataclasses.dataclass
class Retraced(Rewritten):
    """A model's flat jaxpr at some input shapes (``FlatModel.at``)."""
    var_map: Dict[Any, Any] = dataclasses.field(default_factory=dict)  # analysed var -> ours
    analysed: Optional[Dict[int, int]] = None  # equation of ``closed`` -> analysed (None: same)

    def analysed_index(self, index: int) -> Optional[int]:
        return index if self.analysed is None else self.analysed.get(index)


@dataclasses.dataclass
class FlatModel:
    """A model as one flat jaxpr (calls inlined) with parameter paths and def-use maps."""
    traced: trace_lib.Traced
    producer: Dict[Any, int]                  # var -> index of the equation making it
    consumers: Dict[Any, List[Tuple[int, int]]]   # var -> [(eqn index, operand index)]
    constant: Dict[Any, bool]                 # var -> depends on parameters only
    const_values: Dict[Any, np.ndarray]       # concrete values of constant vars
    param_path: Dict[Any, str]                # parameter invar -> 'params/conv/kernel'
    function: FlatFunction                    # the flat program at any input shapes

    @property
    def jaxpr(self) -> jcore.Jaxpr:
        return self.traced.jaxpr

    @property
    def eqns(self):
        return self.traced.jaxpr.eqns

    def at(self, *inputs) -> Retraced:
        """The flat jaxpr for inputs like these (``FlatFunction``)."""
        return self.function.at(*inputs)

    def is_const(self, atom) -> bool:
        return isinstance(atom, jcore.Literal) or self.constant.get(atom, False)

    def value(self, atom) -> np.ndarray:
        if isinstance(atom, jcore.Literal):
            return np.asarray(atom.val)
        return self.const_values[atom]

    def uses(self, var) -> List[Tuple[int, int]]:
        return self.consumers.get(var, [])

    def is_output(self, var) -> bool:
        return any(var is v for v in self.jaxpr.outvars)

    def source(self, index: int) -> str:
        """The model line of equation ``index``; for equations traced inside a library
        function (``jax.nn.relu``), the line of the nearest activation producer before it."""
        seen = []
        while True:
            eqn = self.eqns[index]
            line = model_source(eqn)
            if "site-packages" not in line and line != "unknown source" or len(seen) > 8:
                return line + "".join(f" -> {p}" for p in reversed(seen))
            seen.append(eqn.primitive.name)
            acts = [a for a in eqn.invars if not isinstance(a, jcore.Literal)
                    and not self.is_const(a) and a in self.producer]
            if not acts:
                return line
            index = self.producer[acts[0]]

    def root_param(self, atom) -> Optional[str]:
        """The parameter a constant comes from through layout-only ops (reshape,
        broadcast, convert, transpose), or None."""
        while not isinstance(atom, jcore.Literal):
            if atom in self.param_path:
                return self.param_path[atom]
            index = self.producer.get(atom)
            if index is None or self.eqns[index].primitive not in LAYOUT_ONLY:
                return None
            atom = self.eqns[index].invars[0]
        return None


# What keeps a parameter "the same parameter" for ``root_param``.
LAYOUT_ONLY = P.LAYOUT | P.COPY | {P.convert_element_type_p}


def flatten(fn, variables, *inputs) -> FlatModel:
    """Traces ``fn(variables, *inputs)`` to a flat jaxpr (``core.rewritten.flatten``) and
    computes its constant values. Outputs of an equation with sub-jaxprs (a ``cond``, a
    loop) count as activations, so constant values are all computed by plain equations."""
    traced = core_flatten(fn, variables, *inputs)
    jaxpr = traced.jaxpr
    loops = [v for e in jaxpr.eqns if trace_lib.sub_jaxprs(e) for v in e.outvars]
    acts = trace_lib.activations(jaxpr, [v for v, is_param in zip(jaxpr.invars,
                                                                  traced.is_param)
                                         if not is_param] + loops)
    producer, consumers = {}, {}
    constant = {v: v not in acts for v in list(jaxpr.invars) + list(jaxpr.constvars)}
    param_path = {v: p for v, p, is_p in zip(jaxpr.invars, traced.in_paths, traced.is_param)
                  if is_p}
    for i, eqn in enumerate(jaxpr.eqns):
        for k, atom in enumerate(eqn.invars):
            if not isinstance(atom, jcore.Literal):
                consumers.setdefault(atom, []).append((i, k))
        for var in eqn.outvars:
            producer[var] = i
            constant[var] = var not in acts
    const_values = _constant_values(traced, variables, constant)
    return FlatModel(traced, producer, consumers, constant, const_values, param_path,
                     FlatFunction(fn, variables, traced, inputs))


def _constant_values(traced, variables, constant) -> Dict[Any, np.ndarray]:
    """Evaluates only the parameter-derived equations, on the concrete variables."""
    jaxpr = traced.jaxpr
    values = {}
    leaves = jax.tree_util.tree_leaves(variables)
    for var, leaf in zip(jaxpr.invars, leaves):
        values[var] = np.asarray(leaf)
    for var, c in zip(jaxpr.constvars, traced.closed_jaxpr.consts):
        values[var] = np.asarray(c)
    for eqn in jaxpr.eqns:
        if not all(constant.get(v, False) for v in eqn.outvars) or not eqn.outvars:
            continue
        invals = [a.val if isinstance(a, jcore.Literal) else values[a] for a in eqn.invars]
        for var, out in zip(eqn.outvars, rewrite.bind_equation(eqn, invals)):
            values[var] = np.asarray(out)
    return values


def record_values(flat: FlatModel, variables, *inputs, wanted: Sequence = ()) -> Dict:
    """Concrete values of the ``wanted`` vars (default: every activation) on ``inputs``,
    computed in one jitted evaluation."""
    jaxpr = flat.jaxpr
    if not wanted:
        wanted = [v for v in list(jaxpr.invars) + [o for e in jaxpr.eqns for o in e.outvars]
                  if not flat.is_const(v) and not isinstance(v, jcore.DropVar)]
    order = list(dict.fromkeys(wanted))
    position = {v: i for i, v in enumerate(order)}

    def run(args):
        found = [None] * len(order)
        for var, value in zip(jaxpr.invars, args):
            if var in position:
                found[position[var]] = value

        def hook(eqn, invals, path):
            outs = rewrite.bind_equation(eqn, invals)
            for var, out in zip(eqn.outvars, outs):
                if var in position and len(path) == 1:
                    found[position[var]] = out
            return outs
        rewrite.evaluate(flat.traced.closed_jaxpr, args, hook)
        return found
    values = jax.jit(run)(jax.tree_util.tree_leaves((variables, *inputs)))
    return {v: np.asarray(x) for v, x in zip(order, values) if x is not None}
