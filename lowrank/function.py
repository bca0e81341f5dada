"""The factorized model as a plain JAX function, by re-evaluating the original jaxpr.

A factorized kernel is stored in the variables as a ``LowRankKernel(w0, w1)`` pytree node
in place of the original array, so ``variables`` keeps its structure (paths become
``.../kernel/w0`` and ``.../kernel/w1``) and optax, checkpoints and ``core.train`` handle
it like any other parameters.

``FactoredFunction(fn, variables, sites)(variables, *inputs)`` traces the ORIGINAL ``fn``
at the shapes of the given inputs (cached), hands each site's kernel to
``core.rewrite.evaluate`` wrapped in a ``_Bound`` marker that knows its parameter path,
and a hook rebinds the one linear equation that receives it: as two equations for a
``LowRankKernel``, unchanged for a plain array. Because the marker travels with the value
(into inlined ``jit`` / ``custom_jvp_call`` bodies too), no equation numbering has to agree
between traces, and the same function runs at any batch size, under ``jit``, ``grad`` and
the symbolic batch of the ONNX exporter. ``observe`` lets callers see every site's input
and output (calibration statistics, layer-output losses) without another evaluation loop.
"""
import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import jax

from core import primitives, rewrite, trace as trace_lib
from lowrank.kernels import RULES


class LowRankKernel(NamedTuple):
    """Two thin kernels replacing one parameter (shapes from ``lowrank.kernels``)."""
    w0: Any
    w1: Any


def is_factor(node) -> bool:
    return isinstance(node, LowRankKernel)


@dataclasses.dataclass
class _Bound:
    """A site's kernel (array or LowRankKernel) on its way to its linear equation."""
    path: str
    value: Any


# observe(path, eqn, kernel_operand_index, invals_with_kernel, outvals) -> None
Observer = Callable[[str, Any, int, Sequence[Any], Sequence[Any]], None]


class SiteError(ValueError):
    """A site's kernel reached an equation that cannot take a factorized kernel."""


class FactoredFunction:
    """``fn(variables, *inputs)`` where the kernels at ``site_paths`` may be factorized."""

    def __init__(self, fn: Callable, variables, site_paths: Sequence[str]):
        self.original = fn
        if any(is_factor(n) for n in jax.tree.leaves(variables, is_leaf=is_factor)):
            raise ValueError("FactoredFunction needs the ORIGINAL (unfactorized) variables")
        self.shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                   variables)
        self.site_paths = frozenset(site_paths)
        self._traces: Dict[Any, trace_lib.Traced] = {}

    def traced(self, inputs) -> trace_lib.Traced:
        leaves, tree = jax.tree_util.tree_flatten(inputs)
        specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
        key = (tree, tuple((tuple(s.shape), str(s.dtype)) for s in specs))
        try:
            hit = self._traces.get(key)
        except TypeError:        # unhashable symbolic dimensions: trace every time
            key, hit = None, None
        if hit is None:
            hit = trace_lib.trace(self.original, self.shapes,
                                  *jax.tree_util.tree_unflatten(tree, specs))
            if key is not None:
                self._traces[key] = hit
        return hit

    def run(self, variables, *inputs, observe: Optional[Observer] = None):
        traced = self.traced(inputs)
        leaves = jax.tree_util.tree_leaves((variables, *inputs), is_leaf=is_factor)
        if len(leaves) != len(traced.in_paths):
            raise ValueError(f"variables and inputs have {len(leaves)} leaves, the model "
                             f"takes {len(traced.in_paths)}")
        args = [_Bound(path, leaf) if path in self.site_paths else leaf
                for path, leaf in zip(traced.in_paths, leaves)]
        outs = rewrite.evaluate(traced.closed_jaxpr, args, _make_hook(observe))
        return jax.tree_util.tree_unflatten(traced.out_tree, outs)

    def __call__(self, variables, *inputs):
        return self.run(variables, *inputs)


def _make_hook(observe: Optional[Observer]):
    def hook(eqn, invals, path):
        bound = [k for k, v in enumerate(invals) if isinstance(v, _Bound)]
        if not bound:
            return None
        if trace_lib.call_jaxpr(eqn) is not None:
            return None                      # evaluate inlines it; the marker goes inside
        rule = RULES.get(eqn.primitive)
        if rule is None or len(bound) != 1:
            raise SiteError(f"kernel {invals[bound[0]].path!r} reaches "
                            f"{eqn.primitive.name} at {trace_lib.source_line(eqn)}; only "
                            f"{primitives.names(RULES)} take a factorized kernel")
        k = bound[0]
        site = invals[k]
        invals = list(invals)
        if is_factor(site.value):
            invals[k] = site.value.w0        # what observers see as "the kernel"
            outs = rule.apply(eqn, k, invals, site.value.w0, site.value.w1)
        else:
            invals[k] = site.value
            outs = rewrite.bind_equation(eqn, invals)
        if observe is not None:
            observe(site.path, eqn, k, invals, outs)
        return outs
    return hook


def replace_kernels(variables, factors: Dict[str, Any]):
    """``variables`` with the leaves at the given paths replaced (``path -> new node``)."""
    flat, tree = jax.tree_util.tree_flatten_with_path(variables, is_leaf=is_factor)
    leaves = [factors.get(trace_lib.path_to_str(p), leaf) for p, leaf in flat]
    return jax.tree_util.tree_unflatten(tree, leaves)


def kernels_at(variables, paths) -> Dict[str, Any]:
    """The leaves (arrays or LowRankKernel) of ``variables`` at the given paths."""
    flat, _ = jax.tree_util.tree_flatten_with_path(variables, is_leaf=is_factor)
    wanted = set(paths)
    return {trace_lib.path_to_str(p): leaf for p, leaf in flat
            if trace_lib.path_to_str(p) in wanted}
