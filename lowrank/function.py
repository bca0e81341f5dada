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
from core.rewritten import Rewritten, RewrittenFunction, leaves_by_path
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


class FactoredFunction(RewrittenFunction):
    """``fn(variables, *inputs)`` where the kernels at ``site_paths`` may be factorized."""

    is_leaf = staticmethod(is_factor)

    def __init__(self, fn: Callable, variables, site_paths: Sequence[str]):
        if any(is_factor(n) for n in jax.tree.leaves(variables, is_leaf=is_factor)):
            raise ValueError("FactoredFunction needs the ORIGINAL (unfactorized) variables")
        super().__init__(fn, variables)
        self.site_paths = frozenset(site_paths)

    def rewrite(self, *inputs) -> Rewritten:
        traced = self.trace(*inputs)
        return Rewritten(traced.closed_jaxpr, traced.out_tree,
                         traced.in_paths[:traced.num_params])

    def parameter(self, path: str, leaf):
        return _Bound(path, leaf) if path in self.site_paths else leaf

    def run(self, variables, *inputs, observe: Optional[Observer] = None):
        return super().run(variables, *inputs, hook=_make_hook(observe))


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
    leaves = [factors.get(p, leaf) for p, leaf in leaves_by_path(variables, is_factor).items()]
    return jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(variables, is_leaf=is_factor), leaves)


def kernels_at(variables, paths) -> Dict[str, Any]:
    """The leaves (arrays or LowRankKernel) of ``variables`` at the given paths."""
    wanted = set(paths)
    return {p: leaf for p, leaf in leaves_by_path(variables, is_factor).items() if p in wanted}
