"""Cutting a trained model into teacher blocks, from its jaxpr alone.

DONNA replaces a pretrained network block by block, so the first step is to cut it into
blocks that each map ONE activation to ONE activation: then a student can stand in for a
block, and blocks can be distilled independently from recorded (input, output) pairs.

A cut point is a place in the program order of the model's equations where exactly one
activation is live (computed before, used after). Equations that read only parameters
(BatchNorm's ``rsqrt(var + eps)``, a transposed kernel) are not activations: they go with
every block that needs them. A residual block has no cut point inside (the skip and the
branch are both live), so cut points fall between blocks by themselves. The model is read
as ``core.rewritten.flatten`` gives it (every call inlined, so a jitted model or a jitted
sub-module is cut like a plain one) and the activations are ``core.trace.activations``.

- ``split_at_cut_points``: automatic blocks: cut points grouped into runs with no matmul
  (conv / dot) between them; in each run the cut goes after the last equation that keeps
  the run's activation shape (a block keeps its trailing BatchNorm and ReLU; a pooling that
  changes the shape starts the next block).
- ``split_by_modules``: a block starts at each named module (the first activation equation
  reading one of its parameters), at the latest cut point before it.

``assemble_teacher(blocks)`` chains the blocks back; it evaluates exactly the teacher's
equations, so it reproduces the teacher.
"""
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.extend import core as jcore

from core import primitives, rewrite, rewritten, trace as trace_lib

MATMUL_PRIMITIVES = primitives.LINEAR


@dataclasses.dataclass
class TeacherBlock:
    """One block of the teacher: ``fn(variables, x) -> y`` with ``variables`` a flat dict
    {parameter path: array} holding only the leaves this block reads."""
    name: str
    index: int
    closed_jaxpr: jcore.ClosedJaxpr       # invars: param_paths..., then the input activation
    param_paths: Tuple[str, ...]
    variables: Dict[str, jax.Array]
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]
    modules: Tuple[str, ...] = ()          # module names whose parameters it reads

    def fn(self, variables, x):
        args = [variables[p] for p in self.param_paths] + [x]
        return rewrite.evaluate(self.closed_jaxpr, args)[0]

    @property
    def num_matmuls(self) -> int:
        return sum(e.primitive in MATMUL_PRIMITIVES for e in self.closed_jaxpr.jaxpr.eqns)


@dataclasses.dataclass
class _Analysis:
    traced: trace_lib.Traced
    jaxpr: jcore.Jaxpr
    activation_eqns: List[int]             # indices (into jaxpr.eqns) that read an activation
    crossing: List[List[jcore.Var]]        # live activations before activation eqn position p


def _analyze(traced: trace_lib.Traced) -> _Analysis:
    jaxpr = traced.jaxpr
    inputs = [v for v, p in zip(jaxpr.invars, traced.is_param) if not p]
    if len(inputs) != 1 or len(jaxpr.outvars) != 1:
        raise ValueError("teacher blocks need a model with one input and one output; got "
                         f"{len(inputs)} inputs and {len(jaxpr.outvars)} outputs")
    is_act = trace_lib.activations(jaxpr, inputs)
    activation_eqns = [i for i, eqn in enumerate(jaxpr.eqns)
                       if any(not trace_lib.is_literal(v) and v in is_act for v in eqn.invars)]
    last_use: Dict[jcore.Var, int] = {}
    for pos, i in enumerate(activation_eqns):
        for v in jaxpr.eqns[i].invars:
            if isinstance(v, jcore.Var) and v in is_act:
                last_use[v] = pos
    end = len(activation_eqns)
    for v in jaxpr.outvars:
        if isinstance(v, jcore.Var) and v in is_act:
            last_use[v] = end
    defined_at = {inputs[0]: -1}
    for pos, i in enumerate(activation_eqns):
        for v in jaxpr.eqns[i].outvars:
            if not isinstance(v, jcore.DropVar):
                defined_at[v] = pos
    crossing = []
    for p in range(end + 1):
        crossing.append([v for v, d in defined_at.items()
                         if d < p and last_use.get(v, -2) >= p])
    return _Analysis(traced, jaxpr, activation_eqns, crossing)


def cut_points(fn: Callable, variables, x) -> List[int]:
    """Positions p (in the order of activation equations) where one activation is live."""
    analysis = _analyze(rewritten.flatten(fn, variables, x))
    return [p for p, live in enumerate(analysis.crossing) if len(live) == 1]


def _module_of(path: str) -> str:
    """'params/stage0_block1/conv1/kernel' -> 'stage0_block1' (the top module name)."""
    parts = path.split("/")
    return parts[1] if len(parts) > 2 else parts[0]


def _build_blocks(analysis: _Analysis, bounds: Sequence[int], names: Optional[Sequence[str]],
                  variables) -> List[TeacherBlock]:
    traced, jaxpr = analysis.traced, analysis.jaxpr
    leaves = jax.tree_util.tree_leaves((variables,))
    path_of = {v: p for v, p, is_p in zip(jaxpr.invars, traced.in_paths, traced.is_param)
               if is_p}
    value_of = {v: leaves[k] for k, v in enumerate(jaxpr.invars) if traced.is_param[k]}
    producer = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.outvars:
            producer[v] = i
    act_set = set(analysis.activation_eqns)
    blocks = []
    for b, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        (x_var,) = analysis.crossing[start]
        (y_var,) = analysis.crossing[stop]
        body = [analysis.activation_eqns[p] for p in range(start, stop)]
        # Parameter-only equations this block needs, found backwards from its equations.
        needed, stack = set(), [v for i in body for v in jaxpr.eqns[i].invars]
        params = []
        while stack:
            v = stack.pop()
            if not isinstance(v, jcore.Var) or v is x_var:
                continue
            if v in path_of:
                if v not in params:
                    params.append(v)
                continue
            i = producer.get(v)
            if i is not None and i not in act_set and i not in needed:
                needed.add(i)
                stack.extend(jaxpr.eqns[i].invars)
        eqn_ids = sorted(needed) + body
        params.sort(key=lambda v: traced.in_paths[list(jaxpr.invars).index(v)])
        constvars = list(jaxpr.constvars)
        block_jaxpr = jcore.Jaxpr(constvars, params + [x_var], [y_var],
                                  [jaxpr.eqns[i] for i in eqn_ids])
        closed = jcore.ClosedJaxpr(block_jaxpr, list(traced.closed_jaxpr.consts))
        paths = tuple(path_of[v] for v in params)
        modules = tuple(dict.fromkeys(_module_of(p) for p in sorted(
            paths, key=lambda p: (not p.startswith("params/"), p))))
        name = names[b] if names else (modules[0] if len(modules) == 1 else
                                       "+".join(modules) if modules else f"block{b}")
        blocks.append(TeacherBlock(name, b, closed, paths, {p: value_of[v]
                                                             for p, v in zip(paths, params)},
                                   trace_lib.shape_of(x_var), trace_lib.shape_of(y_var),
                                   modules))
    return blocks


def split_at_cut_points(fn: Callable, variables, x) -> List[TeacherBlock]:
    """Automatic blocks: one per run of cut points between matmuls (see module doc)."""
    analysis = _analyze(rewritten.flatten(fn, variables, x))
    eqns = analysis.jaxpr.eqns
    n = len(analysis.activation_eqns)
    is_matmul = [eqns[i].primitive in MATMUL_PRIMITIVES for i in analysis.activation_eqns]
    cuts = [p for p, live in enumerate(analysis.crossing) if len(live) == 1]
    bounds = [0]
    run: List[int] = []

    def close_run():
        if not run:
            return
        shape = trace_lib.shape_of(analysis.crossing[run[0]][0])
        keep = [p for p in run if trace_lib.shape_of(analysis.crossing[p][0]) == shape]
        if keep[-1] not in (0, n):
            bounds.append(keep[-1])
    for p in cuts:
        if run and any(is_matmul[run[-1]:p]):
            close_run()
            run = []
        run.append(p)
    close_run()
    if bounds[-1] != n:
        bounds.append(n)
    bounds = sorted(set(bounds))
    return _build_blocks(analysis, bounds, None, variables)


def split_by_modules(fn: Callable, variables, x, starts: Sequence[str],
                     names: Optional[Sequence[str]] = None) -> List[TeacherBlock]:
    """Blocks that start at the named top-level modules (e.g. 'stage1_block0'); the part
    before the first named module is block 0."""
    traced = rewritten.flatten(fn, variables, x)
    analysis = _analyze(traced)
    jaxpr = analysis.jaxpr
    module_of_var = {v: _module_of(p) for v, p, is_p in
                     zip(jaxpr.invars, traced.in_paths, traced.is_param) if is_p}
    # Parameter-derived values inherit the module of the parameters they come from.
    act_set = set(analysis.activation_eqns)
    for i, eqn in enumerate(jaxpr.eqns):
        if i in act_set:
            continue
        mods = {module_of_var[v] for v in eqn.invars if isinstance(v, jcore.Var)
                and v in module_of_var}
        if len(mods) == 1:
            for v in eqn.outvars:
                module_of_var[v] = next(iter(mods))
    first_use = {}
    for pos, i in enumerate(analysis.activation_eqns):
        for v in jaxpr.eqns[i].invars:
            if isinstance(v, jcore.Var) and v in module_of_var:
                first_use.setdefault(module_of_var[v], pos)
    cuts = [p for p, live in enumerate(analysis.crossing) if len(live) == 1]
    bounds = [0]
    for module in starts:
        if module not in first_use:
            raise KeyError(f"no parameters of module {module!r}; modules: {sorted(first_use)}")
        before = [p for p in cuts if p <= first_use[module]]
        if not before or before[-1] <= bounds[-1]:
            raise ValueError(f"no cut point between the previous block and module {module!r}"
                             " (a single activation must cross there)")
        bounds.append(before[-1])
    bounds.append(len(analysis.activation_eqns))
    if names is not None and len(names) != len(bounds) - 1:
        raise ValueError(f"{len(bounds) - 1} blocks but {len(names)} names")
    return _build_blocks(analysis, bounds, names, variables)


def assemble_teacher(blocks: Sequence[TeacherBlock]) -> Tuple[Callable, List[dict]]:
    """``fn(block_variables, x)`` chaining the blocks, and the list of their variables."""
    def fn(block_variables, x):
        for block, v in zip(blocks, block_variables):
            x = block.fn(v, x)
        return x
    return fn, [b.variables for b in blocks]


def record_activations(blocks: Sequence[TeacherBlock], x) -> List[np.ndarray]:
    """[input of block 0, output of block 0 (= input of block 1), ..., model output]."""
    acts = [x]
    for block in blocks:
        acts.append(block.fn(block.variables, acts[-1]))
    return acts


__all__ = ["TeacherBlock", "cut_points", "split_at_cut_points", "split_by_modules",
           "assemble_teacher", "record_activations", "MATMUL_PRIMITIVES"]
