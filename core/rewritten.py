"""A model rewritten from its traced jaxpr: the one base every compression method builds on.

Pruning, block removal, low-rank factorization and quantization each turn ``fn(variables,
*inputs)`` into another plain JAX function, and each needs the same three things:

- **a jaxpr per input signature.** The rewrite is made on the jaxpr of the ORIGINAL model,
  traced again at the shapes of the inputs it is called with (another batch size, the
  symbolic batch of an export, a tracer under ``jit`` or ``vmap``), once per signature
  (``RewrittenFunction.at``, keyed by ``signature``: a symbolic dimension counts with its
  scope, so two exports' ``B`` never share a jaxpr);
- **parameters bound by path.** The rewritten model's ``variables`` are not the original's
  (parameters disappear with a removed block, a kernel becomes two factors), so the
  program's parameter inputs are looked up by their path (``Rewritten.param_paths``);
- **a per-equation hook** (``core.rewrite.evaluate``) that applies the rewrite, either when
  the signature's program is built or at every call (``RewrittenFunction.evaluate``).

``flatten`` is the jaxpr those analyses read: every call (``jit``, ``custom_jvp_call``,
``closed_call``, ``remat``...) inlined, so ``jax.nn.relu`` is a plain ``max`` next to the
conv that feeds it, and every equation keeps its full module name stack and source line.
"""
import dataclasses
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import source_info_util
from jax.extend import core as jcore

from core import primitives as P, rewrite
from core.trace import Traced, call_jaxpr, path_to_str, trace


# ------------------------------------------------------------ signatures and specs
def _dim_key(dim):
    """A symbolic dimension with its scope object (two exports' 'B' print alike but do not
    mix: a jaxpr traced in one scope fails with the other's; held, so never recycled)."""
    return dim if isinstance(dim, (int, np.integer)) else (str(dim), getattr(dim, "scope", None))


def aval_key(values: Sequence) -> Tuple:
    """Shapes (symbolic dimensions with their scope) and dtypes of a flat list of values."""
    return tuple((tuple(_dim_key(d) for d in jnp.shape(v)), str(jnp.result_type(v)))
                 for v in values)


def signature(inputs) -> Hashable:
    """What a jaxpr traced at ``inputs`` (any pytree of arrays) depends on."""
    leaves, tree = jax.tree_util.tree_flatten(inputs)
    return tree, aval_key(leaves)


def spec_tree(tree):
    """``tree`` with every array replaced by its ``ShapeDtypeStruct``."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


# ------------------------------------------------------------ parameters by path
def leaves_by_path(variables, is_leaf: Optional[Callable] = None) -> Dict[str, Any]:
    """``{'params/conv/kernel': leaf}`` for every leaf of ``variables``."""
    flat = jax.tree_util.tree_flatten_with_path(variables, is_leaf=is_leaf)[0]
    return {path_to_str(p): leaf for p, leaf in flat}


def nest_by_path(paths: Sequence[str], leaves: Sequence) -> dict:
    """Nested dicts holding ``leaves`` at ``paths`` (the inverse of ``leaves_by_path``)."""
    tree: dict = {}
    for path, leaf in zip(paths, leaves):
        node = tree
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    return tree


# ------------------------------------------------------------ flatten
def _full_name_stacks(jaxpr, prefix=(), outer="", out=None) -> Dict[Tuple[int, ...], str]:
    """Equation path (as in ``core.rewrite``) -> its name stack including the calls around it."""
    out = {} if out is None else out
    for i, eqn in enumerate(jaxpr.eqns):
        path = prefix + (i,)
        name = "/".join(p for p in (outer, str(eqn.source_info.name_stack)) if p)
        out[path] = name
        sub = call_jaxpr(eqn)
        if sub is not None:
            _full_name_stacks(sub.jaxpr, path + (0,), name, out)
        elif eqn.primitive is P.cond_p:
            for k, branch in enumerate(eqn.params["branches"]):
                _full_name_stacks(branch.jaxpr, path + (k,), name, out)
    return out


def flatten(fn: Callable, variables, *inputs) -> Traced:
    """``core.trace.trace`` of ``fn(variables, *inputs)`` with every call inlined (``cond``
    branches flattened in place); equations keep their full module name stack and source
    line. ``variables`` and ``inputs`` may be arrays or ``ShapeDtypeStruct``s."""
    traced = trace(fn, spec_tree(variables), *spec_tree(inputs))
    stacks = _full_name_stacks(traced.jaxpr)

    def bind_named(eqn, invals, path):
        if call_jaxpr(eqn) is not None or eqn.primitive is P.cond_p:
            return None                              # inlined by core.rewrite.evaluate
        stack = source_info_util.new_name_stack(stacks.get(path, ""))
        params = eqn.primitive.get_bind_params(eqn.params)
        with source_info_util.user_context(eqn.source_info.traceback, name_stack=stack), \
                eqn.ctx.manager:
            out = eqn.primitive.bind(*invals, **params)
        return list(out) if eqn.primitive.multiple_results else [out]

    def flat_fn(*leaves):
        return rewrite.evaluate(traced.closed_jaxpr, leaves, bind_named)

    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in traced.jaxpr.invars]
    return dataclasses.replace(traced, closed_jaxpr=jax.make_jaxpr(flat_fn)(*avals))


# ------------------------------------------------------------ the rewritten function
@dataclasses.dataclass
class Rewritten:
    """The program of one input signature: ``closed`` takes the parameters named by
    ``param_paths`` (``None``: one it does not read, passed as ``None``), then the inputs'
    leaves; its outputs unflatten with ``out_tree``."""
    closed: jcore.ClosedJaxpr
    out_tree: Any
    param_paths: Tuple[Optional[str], ...]


class RewrittenFunction:
    """``fn(variables, *inputs)`` computed by a rewrite of ``original_fn``'s jaxpr.

    Subclasses say how a signature's program is made (``rewrite``), may adapt a parameter
    on its way in (``parameter``: a cast, a marker) and may evaluate with a hook
    (``evaluate``). ``variables`` given to the constructor are the ORIGINAL ones (only
    their shapes and dtypes are kept, to trace the original model)."""

    is_leaf: Optional[Callable] = None        # what counts as one parameter (a factor pair)

    def __init__(self, original_fn: Callable, variables):
        self.original_fn = original_fn
        self.variables_spec = spec_tree(variables)
        self._programs: Dict[Hashable, Rewritten] = {}

    def rewrite(self, *input_specs) -> Rewritten:
        """The program for inputs of these shapes (``ShapeDtypeStruct`` pytrees)."""
        raise NotImplementedError

    def trace(self, *input_specs) -> Traced:
        """The original model traced at these input shapes."""
        return trace(self.original_fn, self.variables_spec, *input_specs)

    def at(self, *inputs) -> Rewritten:
        """The program for inputs like these (built once per ``signature``)."""
        key = signature(inputs)
        if key not in self._programs:
            self._programs[key] = self.rewrite(*spec_tree(inputs))
        return self._programs[key]

    def jaxpr(self, *inputs) -> jcore.ClosedJaxpr:
        """The rewritten model's jaxpr at these inputs (parameters, then inputs)."""
        return self.at(*inputs).closed

    def parameter(self, path: str, leaf):
        return leaf

    def arguments(self, program: Rewritten, variables, inputs) -> List[Any]:
        """The program's arguments: parameters looked up by path, then the inputs."""
        by_path = leaves_by_path(variables, self.is_leaf)
        args = []
        for path in program.param_paths:
            if path is not None and path not in by_path:
                raise KeyError(f"the {type(self).__name__} needs parameter {path!r}")
            args.append(None if path is None else self.parameter(path, by_path[path]))
        return args + jax.tree_util.tree_leaves(inputs)

    def evaluate(self, program: Rewritten, args: Sequence, hook=None) -> list:
        """The outputs' leaves; ``hook`` (``core.rewrite.Hook``) rewrites each equation, and
        without one the program runs as it is."""
        if hook is None:
            return jcore.jaxpr_as_fun(program.closed)(*args)
        return rewrite.evaluate(program.closed, list(args), hook)

    def run(self, variables, *inputs, hook=None):
        program = self.at(*inputs)
        outs = self.evaluate(program, self.arguments(program, variables, inputs), hook)
        return jax.tree_util.tree_unflatten(program.out_tree, outs)

    def __call__(self, variables, *inputs):
        return self.run(variables, *inputs)


__all__ = ["Rewritten", "RewrittenFunction", "flatten", "signature", "aval_key",
           "spec_tree", "leaves_by_path", "nest_by_path"]
