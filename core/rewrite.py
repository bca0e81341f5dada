"""Rewriting a model by re-evaluating its jaxpr with a hook that may change equations.

Every transformation in this project (physical pruning, masks, low-rank factorization,
fake-quant, block removal) is the same loop: walk the equations, and for some of them bind
different primitives, parameters or shapes. ``evaluate`` is that loop, written once. The
result is a plain JAX function (jit, grad, vmap, sharding and export work on it) because
it only ever calls ``primitive.bind``.

Call-like equations (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``...) are
inlined so the hook sees, and may reshape, the equations inside them; that drops custom
derivative rules, which a rewritten (narrower) model could not keep anyway. ``cond``
branches are evaluated through ``lax.switch`` with the hook applied inside each branch.
Other equations with sub-jaxprs (``scan``, ``while``) are bound unchanged.

Equation paths match ``core.trace.iter_eqns``: ``(i,)`` for equation i of the top jaxpr,
``(i, k, j)`` for equation j of the k-th sub-jaxpr of equation i.
"""
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
from jax import lax
from jax._src import source_info_util
from jax.extend import core as jcore

from core import trace as trace_lib

# hook(eqn, invals, path) -> list of output values, or None to evaluate the equation as is.
Hook = Callable[[Any, Sequence[Any], Tuple[int, ...]], Optional[Sequence[Any]]]


def bind_equation(eqn, invals):
    """Evaluates one equation with (possibly re-shaped) inputs; always returns a list."""
    params = eqn.primitive.get_bind_params(eqn.params)
    with source_info_util.user_context(eqn.source_info.traceback), eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def evaluate(closed: jcore.ClosedJaxpr, args: Sequence[Any], hook: Optional[Hook] = None,
             prefix: Tuple[int, ...] = (), inline_calls: bool = True):
    """Evaluates ``closed`` on ``args`` with ``hook`` applied to every equation, recursively."""
    jaxpr = closed.jaxpr
    env = {}

    def read(atom):
        return atom.val if isinstance(atom, jcore.Literal) else env[atom]

    for var, value in zip(jaxpr.constvars, closed.consts):
        env[var] = value
    if len(args) != len(jaxpr.invars):
        raise ValueError(f"jaxpr takes {len(jaxpr.invars)} inputs, got {len(args)}")
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for i, eqn in enumerate(jaxpr.eqns):
        path = prefix + (i,)
        invals = [read(v) for v in eqn.invars]
        outvals = hook(eqn, invals, path) if hook else None
        if outvals is None:
            outvals = _evaluate_default(eqn, invals, hook, path, inline_calls)
        for var, value in zip(eqn.outvars, outvals):
            if not isinstance(var, jcore.DropVar):
                env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _evaluate_default(eqn, invals, hook, path, inline_calls):
    sub = trace_lib.call_jaxpr(eqn) if inline_calls else None
    if sub is not None and len(sub.jaxpr.invars) == len(invals):
        return evaluate(sub, invals, hook, path + (0,), inline_calls)
    if eqn.primitive.name == "cond" and inline_calls:
        index, operands = invals[0], invals[1:]
        branches = [
            (lambda ops, b=branch, k=k: evaluate(b, list(ops), hook, path + (k,), inline_calls))
            for k, branch in enumerate(eqn.params["branches"])]
        return list(lax.switch(index, branches, operands))
    return bind_equation(eqn, invals)


def as_function(traced: trace_lib.Traced, hook: Optional[Hook] = None) -> Callable:
    """``fn(variables, *inputs)`` that evaluates the traced jaxpr with ``hook``.

    ``variables`` may hold different arrays (e.g. physically smaller ones) than the traced
    model, as long as its tree structure is the same; the hook makes the shapes agree.
    """
    def fn(variables, *inputs):
        leaves = jax.tree_util.tree_leaves((variables, *inputs))
        outs = evaluate(traced.closed_jaxpr, leaves, hook)
        return jax.tree_util.tree_unflatten(traced.out_tree, outs)
    return fn
