"""Whole blocks of a model, found in its jaxpr and removed from it.

A block is computation whose output can be dropped while every shape stays valid: the
branch ``f`` of a residual ``x + f(x)`` (removing it leaves ``x``), the attention or MLP
sub-block of a pre-norm transformer (a residual in the same sense), one of two parallel
branches of an ``add`` (the convs of a downsampling ResNet block next to its projection), a
piece of a ``concatenate`` (an Inception branch, a DenseNet layer; its slot is filled with
zeros so the consumers keep their shapes), or a module named by its path whose single input
and single output have one shape (its output is replaced by its input).

Everything works on the model's jaxpr with calls inlined (``flatten``), so it sees the
equations of any model, Flax or not, the same way. Removing blocks is an edit of that jaxpr:
a *bypass* makes the readers of a value read another one instead (the add's result becomes
its kept operand), a *zero* feeds zeros to one operand of one equation (a concatenation).
Backward liveness from the outputs under these edits says which equations are still needed;
the rest are the block's equations, and the rewritten function never binds them, so its
jaxpr (and its ONNX export) really lacks them. A candidate whose removal deletes no conv or
matmul is not a block (the ``x + c * x**3`` inside a tanh-GELU), and one whose removal would
change a shape is never offered; it is reported in ``BlockAnalysis.rejected`` with a reason.
"""
import dataclasses
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from jax import lax
from jax.extend import core as jcore

from core import primitives as P, rewrite
from core.rewritten import (Rewritten, RewrittenFunction, flatten, leaves_by_path,
                            nest_by_path)
from core.trace import activations, shape_of, source_line

WEIGHTED = P.LINEAR   # what makes a branch worth a block


# ------------------------------------------------------------------------------- edits
@dataclasses.dataclass(frozen=True)
class Bypass:
    """Readers of output ``out`` of equation ``eqn`` read ``source`` instead: ``('eqn', i,
    k)`` is output k of equation i, ``('in', j)`` is invar j of the jaxpr."""
    eqn: int
    out: int
    source: Tuple


@dataclasses.dataclass(frozen=True)
class Zero:
    """Operand ``operand`` of equation ``eqn`` is replaced by zeros of its shape."""
    eqn: int
    operand: int


def _locate(jaxpr) -> Dict[jcore.Var, Tuple]:
    where = {v: ("in", j) for j, v in enumerate(jaxpr.invars)}
    for i, eqn in enumerate(jaxpr.eqns):
        for k, v in enumerate(eqn.outvars):
            if not isinstance(v, jcore.DropVar):
                where[v] = ("eqn", i, k)
    return where


def _var_at(jaxpr, location):
    if location[0] == "in":
        return jaxpr.invars[location[1]]
    return jaxpr.eqns[location[1]].outvars[location[2]]


class EditedGraph:
    """A flat jaxpr with a set of edits: which equations are still live, what reads what."""

    def __init__(self, jaxpr: jcore.Jaxpr, edits: Sequence):
        self.jaxpr = jaxpr
        self.alias: Dict[jcore.Var, jcore.Var] = {}
        self.zeroed: Dict[int, Set[int]] = {}
        for edit in edits:
            if isinstance(edit, Bypass):
                self.alias[jaxpr.eqns[edit.eqn].outvars[edit.out]] = _var_at(jaxpr, edit.source)
            else:
                self.zeroed.setdefault(edit.eqn, set()).add(edit.operand)
        self.live = self._liveness()

    def resolve(self, atom):
        seen = 0
        while not isinstance(atom, jcore.Literal) and atom in self.alias:
            atom = self.alias[atom]
            seen += 1
            if seen > len(self.alias):
                raise ValueError("cyclic bypass edits")
        return atom

    def _liveness(self) -> FrozenSet[int]:
        needed = {self.resolve(v) for v in self.jaxpr.outvars
                  if not isinstance(v, jcore.Literal)}
        live = set()
        for i in reversed(range(len(self.jaxpr.eqns))):
            eqn = self.jaxpr.eqns[i]
            if not any(v in needed for v in eqn.outvars if not isinstance(v, jcore.DropVar)):
                continue
            live.add(i)
            for p, v in enumerate(eqn.invars):
                if isinstance(v, jcore.Literal) or p in self.zeroed.get(i, ()):
                    continue
                needed.add(self.resolve(v))
        return frozenset(live)

    def used_invars(self) -> Set[int]:
        used = {self.resolve(v) for v in self.jaxpr.outvars if not isinstance(v, jcore.Literal)}
        for i in self.live:
            eqn = self.jaxpr.eqns[i]
            used.update(self.resolve(v) for p, v in enumerate(eqn.invars)
                        if not isinstance(v, jcore.Literal) and p not in self.zeroed.get(i, ()))
        return {j for j, v in enumerate(self.jaxpr.invars) if v in used}

    def evaluate(self, consts, args):
        """Runs the live equations only (the block's equations are never bound): the edits
        are a hook of ``core.rewrite.evaluate``."""
        values = dict(zip(self.jaxpr.invars, args))

        def edited(eqn, invals, path):
            i = path[0]
            outs = [None] * len(eqn.outvars)
            if i in self.live:
                zeroed = self.zeroed.get(i, ())
                outs = rewrite.bind_equation(eqn, [
                    lax.full(v.aval.shape, 0, v.aval.dtype) if p in zeroed else x
                    for p, (v, x) in enumerate(zip(eqn.invars, invals))])
            outs = [values[self.resolve(v)] if v in self.alias else x
                    for v, x in zip(eqn.outvars, outs)]
            values.update(zip(eqn.outvars, outs))
            return outs
        return rewrite.evaluate(jcore.ClosedJaxpr(self.jaxpr, consts), args, edited)


# ------------------------------------------------------------------------------ blocks
@dataclasses.dataclass(frozen=True)
class Block:
    """One removable block of a model.

    ``anchor`` is the equation whose operand (or, for a module, whose output) the removal
    redirects; ``equations`` are the flat-jaxpr indices the removal deletes (alone);
    ``flops`` the FLOPs it saves (``core.cost`` convention), filled by ``with_costs``."""
    id: int
    kind: str                       # residual | add_branch | concat_branch | module
    module_path: str
    modules: Tuple[str, ...]        # sub-modules the removed equations belong to
    source_lines: Tuple[str, ...]
    anchor: int
    edit: object                    # the Bypass or Zero that removes it
    equations: Tuple[int, ...]
    key: Tuple = ()                 # names the block at any batch size (see ``_Finder.key``)
    flops: int = 0
    params: int = 0

    @property
    def label(self) -> str:
        inner = ",".join(m for m in self.modules if m)
        path = self.module_path or "<top>"
        return f"{path}/{{{inner}}}" if inner and len(self.modules) > 1 else path

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "module_path": self.module_path,
                "label": self.label, "modules": list(self.modules),
                "source_lines": list(self.source_lines), "anchor": self.anchor,
                "num_equations": len(self.equations), "flops": self.flops,
                "params": self.params}


@dataclasses.dataclass
class BlockAnalysis:
    """The blocks of one model at one input signature; ``rejected`` lists candidates that
    are never offered (removal would change a shape), as ``(description, reason)``."""
    closed: jcore.ClosedJaxpr
    out_tree: object
    in_paths: Tuple[str, ...]
    num_params: int
    blocks: List[Block]
    rejected: List[Tuple[str, str]]
    root: str

    @property
    def jaxpr(self):
        return self.closed.jaxpr

    def by_id(self, ids: Sequence[int]) -> List[Block]:
        table = {b.id: b for b in self.blocks}
        return [table[i] for i in ids]

    def graph(self, blocks: Sequence[Block] = ()) -> EditedGraph:
        return EditedGraph(self.jaxpr, [b.edit for b in blocks])

    def available(self, removed: Sequence[Block]) -> List[Block]:
        """Blocks that still delete a conv or matmul once ``removed`` are gone."""
        base = self.graph(removed)
        done = {b.id for b in removed}
        out = []
        for block in self.blocks:
            if block.id in done or block.anchor not in base.live:
                continue
            after = self.graph(list(removed) + [block])
            if any(self.jaxpr.eqns[i].primitive in WEIGHTED for i in base.live - after.live):
                out.append(block)
        return out


def _stack(eqn, root: str) -> str:
    name = str(eqn.source_info.name_stack)
    if root and (name == root or name.startswith(root + "/")):
        name = name[len(root) + 1:]
    return name


def _root(jaxpr) -> str:
    """The top module's name when every named equation sits under it (``ResNet``)."""
    firsts = {str(e.source_info.name_stack).split("/")[0] for e in jaxpr.eqns
              if str(e.source_info.name_stack)}
    return firsts.pop() if len(firsts) == 1 else ""


def _common_prefix(names: Sequence[str]) -> str:
    parts = [n.split("/") for n in names]
    prefix = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return "/".join(prefix)


class _Finder:
    def __init__(self, closed, num_params: int):
        self.jaxpr = closed.jaxpr
        self.num_params = num_params
        self.act = activations(self.jaxpr, self.jaxpr.invars[num_params:])
        self.where = _locate(self.jaxpr)
        self.base = EditedGraph(self.jaxpr, []).live
        self.root = _root(self.jaxpr)
        self.blocks: List[Block] = []
        self.rejected: List[Tuple[str, str]] = []

    def describe(self, i: int) -> str:
        eqn = self.jaxpr.eqns[i]
        return f"{eqn.primitive.name} #{i} at {source_line(eqn)} ({_stack(eqn, self.root)})"

    def deleted(self, edit) -> Tuple[int, ...]:
        return tuple(sorted(self.base - EditedGraph(self.jaxpr, [edit]).live))

    def disconnects_inputs(self, edit) -> bool:
        """Whether the outputs would stop depending on a model input they depend on now."""
        inputs = set(range(self.num_params, len(self.jaxpr.invars)))
        before = EditedGraph(self.jaxpr, []).used_invars() & inputs
        return not before <= EditedGraph(self.jaxpr, [edit]).used_invars()

    def offer(self, kind: str, anchor: int, edit, eqns, description: str, detail):
        if self.disconnects_inputs(edit):
            self.rejected.append((description, "removal would disconnect the model input"))
        else:
            self.add(kind, anchor, edit, eqns, detail)

    def key(self, kind: str, anchor: int, detail) -> Tuple:
        """What names a block in any trace of the model: the anchor's primitive, module path,
        source line and rank among equations alike, and which operand (or module) goes.
        Equation indices alone are not enough: at batch 1 some ops trace differently."""
        eqn = self.jaxpr.eqns[anchor]
        like = (eqn.primitive.name, _stack(eqn, self.root), source_line(eqn))
        rank = sum(1 for e in self.jaxpr.eqns[:anchor]
                   if (e.primitive.name, _stack(e, self.root), source_line(e)) == like)
        return (kind,) + like + (rank, detail)

    def weighted(self, eqns: Sequence[int]) -> bool:
        return any(self.jaxpr.eqns[i].primitive in WEIGHTED for i in eqns)

    def frontier(self, eqns: Sequence[int]) -> Set[jcore.Var]:
        """Activations the deleted equations read from outside themselves."""
        inside = set(eqns)
        produced = {v for i in inside for v in self.jaxpr.eqns[i].outvars}
        return {v for i in inside for v in self.jaxpr.eqns[i].invars
                if not isinstance(v, jcore.Literal) and v in self.act and v not in produced}

    def add(self, kind: str, anchor: int, edit, eqns: Sequence[int], detail):
        stacks = [_stack(self.jaxpr.eqns[i], self.root) for i in eqns]
        path = _common_prefix(stacks)
        depth = len(path.split("/")) if path else 0
        modules = []                  # direct sub-modules, in order of first appearance
        for s in stacks:
            parts = s.split("/") if s else []
            if len(parts) > depth and parts[depth] not in modules:
                modules.append(parts[depth])
        lines = sorted({source_line(self.jaxpr.eqns[i]) for i in eqns})
        self.blocks.append(Block(len(self.blocks), kind, path, tuple(modules), tuple(lines),
                                 anchor, edit, tuple(eqns), self.key(kind, anchor, detail)))

    def find_adds_and_concats(self):
        candidates = {P.add_p: self._add_candidates, P.concatenate_p: self._concat_candidates}
        for i, eqn in enumerate(self.jaxpr.eqns):
            rule = candidates.get(eqn.primitive)
            if rule is not None:
                rule(i, eqn)

    def _add_candidates(self, i, eqn):
        operands = eqn.invars
        if any(isinstance(v, jcore.Literal) or v not in self.act for v in operands):
            return
        out = eqn.outvars[0]
        for removed in (0, 1):
            kept = operands[1 - removed]
            edit = Bypass(i, 0, self.where[kept])
            eqns = self.deleted(edit)
            if not self.weighted(eqns):
                continue
            if shape_of(kept) != shape_of(out) or kept.aval.dtype != out.aval.dtype:
                self.rejected.append((f"operand {removed} of {self.describe(i)}",
                                      f"the kept operand has shape {shape_of(kept)}, the sum "
                                      f"{shape_of(out)}"))
                continue
            kind = "residual" if self.frontier(eqns) == {kept} else "add_branch"
            self.offer(kind, i, edit, eqns, f"operand {removed} of {self.describe(i)}",
                       removed)

    def _concat_candidates(self, i, eqn):
        for p, piece in enumerate(eqn.invars):
            if isinstance(piece, jcore.Literal) or piece not in self.act:
                continue
            edit = Zero(i, p)
            eqns = self.deleted(edit)
            if self.weighted(eqns):
                self.offer("concat_branch", i, edit, eqns,
                           f"piece {p} of {self.describe(i)}", p)

    def find_module(self, path: str):
        """The equations under module ``path``; a block if they read one activation and
        produce one value of that shape and dtype."""
        path = path.strip("/")
        region = [i for i, e in enumerate(self.jaxpr.eqns)
                  if (s := _stack(e, self.root)) == path or s.startswith(path + "/")]
        if not region:
            self.rejected.append((f"module {path}", "no equation has this module path"))
            return
        inside = set(region)
        produced = {v for i in region for v in self.jaxpr.eqns[i].outvars}
        inputs = {v for i in region for v in self.jaxpr.eqns[i].invars
                  if not isinstance(v, jcore.Literal) and v in self.act and v not in produced}
        readers_outside = set(self.jaxpr.outvars)
        for j, e in enumerate(self.jaxpr.eqns):
            if j not in inside:
                readers_outside.update(v for v in e.invars if not isinstance(v, jcore.Literal))
        outputs = [v for v in produced if v in readers_outside]
        if len(inputs) != 1 or len(outputs) != 1:
            self.rejected.append((f"module {path}", f"{len(inputs)} activation inputs and "
                                  f"{len(outputs)} outputs (need one of each)"))
            return
        (x,), (y,) = inputs, outputs
        if shape_of(x) != shape_of(y) or x.aval.dtype != y.aval.dtype:
            self.rejected.append((f"module {path}", f"input shape {shape_of(x)} but output "
                                  f"shape {shape_of(y)}: removal would change a shape"))
            return
        _, anchor, out = self.where[y]
        edit = Bypass(anchor, out, self.where[x])
        eqns = self.deleted(edit)
        if not self.weighted(eqns):
            self.rejected.append((f"module {path}", "deletes no conv or matmul"))
            return
        self.offer("module", anchor, edit, eqns, f"module {path}", path)


def find_blocks(fn: Callable, variables, *example_inputs, module_paths: Sequence[str] = (),
                automatic: bool = True) -> BlockAnalysis:
    """Every removable block of ``fn(variables, *inputs)``: residual and parallel add
    branches and concatenation pieces (``automatic``), plus the modules named in
    ``module_paths`` (relative to the top module, e.g. ``'stage0_block1'``)."""
    traced = flatten(fn, variables, *example_inputs)
    in_paths = traced.in_paths[:traced.num_params]
    finder = _search(traced.closed_jaxpr, len(in_paths), module_paths, automatic)
    return BlockAnalysis(traced.closed_jaxpr, traced.out_tree, in_paths, len(in_paths),
                         finder.blocks, finder.rejected, finder.root)


def _search(closed, num_params: int, module_paths: Sequence[str], automatic: bool) -> _Finder:
    finder = _Finder(closed, num_params)
    if automatic:
        finder.find_adds_and_concats()
    for path in module_paths:
        finder.find_module(path)
    return finder


def match_blocks(closed, num_params: int, blocks: Sequence[Block]) -> List[Block]:
    """``blocks`` (found in another trace of the same model) located in ``closed``."""
    modules = sorted({b.key[-1] for b in blocks if b.kind == "module"})
    found = {b.key: b for b in _search(closed, num_params, modules,
                                        any(b.kind != "module" for b in blocks)).blocks}
    missing = [b.label for b in blocks if b.key not in found]
    if missing:
        raise ValueError(f"blocks {missing} are not in the model traced at these shapes")
    return [found[b.key] for b in blocks]


# ----------------------------------------------------------------------------- removal
@dataclasses.dataclass
class _Edited(Rewritten):
    graph: Optional[EditedGraph] = None


class BlockRemovedFunction(RewrittenFunction):
    """``fn(variables, *inputs)`` of the model without some blocks, at any input signature.

    For each signature the original model is flattened again at those shapes (another
    batch size, a symbolic batch for export, a tracer under jit or grad) and the blocks are
    found again there by their ``key``, so the edits apply even where the program differs
    (batch 1 traces some ops differently). ``variables`` need only hold the parameters that
    survive, found by path."""

    def __init__(self, original_fn, variables, analysis: BlockAnalysis,
                 blocks: Sequence[Block]):
        super().__init__(original_fn, variables)
        self.analysis = analysis
        self.blocks = list(blocks)

    def rewrite(self, *inputs) -> _Edited:
        traced = flatten(self.original_fn, self.variables_spec, *inputs)
        here = match_blocks(traced.closed_jaxpr, self.analysis.num_params, self.blocks)
        graph = EditedGraph(traced.jaxpr, [b.edit for b in here])
        used = graph.used_invars()
        paths = tuple(p if j in used else None for j, p in enumerate(self.analysis.in_paths))
        return _Edited(traced.closed_jaxpr, traced.out_tree, paths, graph)

    def graph(self, *inputs) -> EditedGraph:
        return self.at(*inputs).graph

    def used_param_paths(self, *inputs) -> List[str]:
        return [p for p in self.at(*inputs).param_paths if p is not None]

    def evaluate(self, program: _Edited, args, hook=None) -> list:
        return program.graph.evaluate(program.closed.consts, args)


@dataclasses.dataclass
class BlockRemoved:
    """A model without some blocks: ``fn(variables, x)`` with only the surviving
    ``variables``; ``removed_params`` are the parameter paths that went with the blocks."""
    fn: BlockRemovedFunction
    variables: object
    blocks: List[Block]
    removed_params: List[str]


def remove_blocks(fn: Callable, variables, *example_inputs, blocks: Sequence[Block],
                  analysis: BlockAnalysis) -> BlockRemoved:
    """Removes ``blocks`` (from ``analysis`` of this model) and whatever only served them."""
    removed_fn = BlockRemovedFunction(fn, variables, analysis, blocks)
    used = set(removed_fn.used_param_paths(*example_inputs))
    leaves = leaves_by_path(variables)
    kept = [p for p in leaves if p in used]
    new_vars = nest_by_path(kept, [leaves[p] for p in kept])
    return BlockRemoved(removed_fn, new_vars, list(blocks),
                        [p for p in leaves if p not in used])


def with_costs(fn: Callable, variables, example_input, analysis: BlockAnalysis) -> BlockAnalysis:
    """``analysis`` with each block's ``flops`` and ``params`` saved when removed alone."""
    from core import cost
    one = example_input[:1]
    full = cost.count(fn, variables, one)
    blocks = []
    for block in analysis.blocks:
        removed = remove_blocks(fn, variables, one, blocks=[block], analysis=analysis)
        report = cost.count(removed.fn, removed.variables, one)
        blocks.append(dataclasses.replace(block, flops=int(full.flops - report.flops),
                                          params=int(full.params - report.params)))
    return dataclasses.replace(analysis, blocks=blocks)


__all__ = ["Block", "BlockAnalysis", "BlockRemoved", "BlockRemovedFunction", "Bypass",
           "Zero", "EditedGraph", "find_blocks", "remove_blocks", "with_costs"]
