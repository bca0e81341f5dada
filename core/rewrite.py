"""Rewriting a model by re-evaluating its jaxpr with a hook that may change equations.

Every transformation in this project (physical pruning, masks, low-rank factorization,
fake-quant, block removal) is the same loop: walk the equations, and for some of them bind
different primitives, parameters or shapes. ``evaluate`` is that loop, written once. The
result is a plain JAX function (jit, grad, vmap, sharding and export work on it) because
it only ever calls ``primitive.bind``.

Call-like equations (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``...) are
inlined so the hook sees, and may reshape, the equations inside them; inlining drops a
custom derivative rule (a straight-through estimator's gradient), so a hook that must keep
one handles those equations itself with ``rebind_custom_rule``. ``cond`` branches are
evaluated with the hook applied inside each branch and bound as one ``cond`` again (not
through ``lax.switch``, whose index clamp would be an equation the model does not have). Other
equations with sub-jaxprs (``scan``, ``while``) are bound unchanged unless the hook re-binds
them with ``rebind_control_flow``, which enters loop and branch bodies (their carries may
then change shape, consistently, as every iteration is rewritten the same way).

Equation paths match ``core.trace.iter_eqns``: ``(i,)`` for equation i of the top jaxpr,
``(i, k, j)`` for equation j of the k-th sub-jaxpr of equation i.
"""
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import numpy as np
from jax import lax
from jax import numpy as jnp
from jax._src import source_info_util
from jax._src.lax.control_flow.conditionals import _switch_internal
from jax.extend import core as jcore

from core import primitives as P
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
    if eqn.primitive is P.cond_p and inline_calls:
        branches = [
            (lambda *ops, b=branch, k=k: evaluate(b, list(ops), hook, path + (k,),
                                                  inline_calls))
            for k, branch in enumerate(eqn.params["branches"])]
        return rebind_cond(eqn, invals, branches)
    return bind_equation(eqn, invals)


def rebind_cond(eqn, invals, branches: Sequence[Callable]) -> list:
    """Binds ``cond`` again with ``branches`` (functions of the operands) in place of the
    equation's branch jaxprs, on ``eqn``'s index as it is. Not ``lax.switch``: its clamp
    of the index (already in range: the traced model made it) is an equation the original
    model does not have, and core.cost would count it in every rewritten model.
    ``_switch_internal`` is what ``lax.switch`` calls after the clamp (it traces the
    branches, shares their constants and binds ``cond_p``)."""
    index, operands = invals[0], invals[1:]
    return list(_switch_internal(index, list(branches), tuple(operands),
                                 branches_platforms=eqn.params.get("branches_platforms")))


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


# ------------------------------------------------------------ loop and branch bodies
def _body_hook(hook):
    """The hook to use inside a body traced on its own (``hook.body_hook()`` when defined:
    values a hook caches must not leak from one traced body into another)."""
    make = getattr(hook, "body_hook", None)
    return make() if make is not None else hook


def _sub_index(eqn, param: str) -> int:
    """Position of ``eqn.params[param]`` among ``trace.sub_jaxprs(eqn)`` (path numbering)."""
    target = trace_lib.as_closed(eqn.params[param]).jaxpr
    return [s.jaxpr for s in trace_lib.sub_jaxprs(eqn)].index(target)


def _like(values, atoms):
    """Python scalars and numpy values (literals, folded constants) as arrays of the
    equation's dtypes, so a loop's carry has the same type going in and coming out."""
    return [v if isinstance(v, jax.Array) else jnp.asarray(v, a.aval.dtype)
            for v, a in zip(values, atoms)]


def _cast(values, like):
    return [jnp.asarray(v, jnp.result_type(c)) for v, c in zip(values, like)]


def _cond(eqn, invals, hook, path, finish):
    branches = [
        (lambda *ops, b=branch, k=k: finish(evaluate(b, list(ops), _body_hook(hook),
                                                     path + (k,))))
        for k, branch in enumerate(eqn.params["branches"])]
    return rebind_cond(eqn, invals, branches)


def _scan(eqn, invals, hook, path, finish):
    p = eqn.params
    nc, ncarry = p["num_consts"], p["num_carry"]
    invals = _like(invals, eqn.invars)
    consts, init, xs = invals[:nc], invals[nc:nc + ncarry], invals[nc + ncarry:]
    k = _sub_index(eqn, "jaxpr")

    def step(carry, x):
        outs = finish(evaluate(p["jaxpr"], [*consts, *carry, *x], _body_hook(hook),
                               path + (k,)))
        return _cast(outs[:ncarry], carry), outs[ncarry:]

    carry, ys = lax.scan(step, init, xs, length=p["length"], reverse=p["reverse"],
                         unroll=p["unroll"])
    return [*carry, *ys]


def _while(eqn, invals, hook, path, finish):
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    invals = _like(invals, eqn.invars)
    cond_consts, body_consts, init = invals[:nc], invals[nc:nc + nb], invals[nc + nb:]
    kc, kb = _sub_index(eqn, "cond_jaxpr"), _sub_index(eqn, "body_jaxpr")

    def cond_fun(carry):
        return finish(evaluate(p["cond_jaxpr"], [*cond_consts, *carry], _body_hook(hook),
                               path + (kc,)))[0]

    def body_fun(carry):
        outs = finish(evaluate(p["body_jaxpr"], [*body_consts, *carry], _body_hook(hook),
                               path + (kb,)))
        return _cast(outs, carry)

    return list(lax.while_loop(cond_fun, body_fun, init))


CONTROL_FLOW = P.rule_table({P.cond_p: _cond, P.scan_p: _scan, P.while_p: _while})


def rebind_control_flow(eqn, invals, hook: Hook, path: Tuple[int, ...],
                        finish: Callable[[list], list] = list) -> list:
    """Re-binds a ``cond``, ``scan`` or ``while`` equation with ``hook`` applied inside its
    bodies (``cond`` re-bound / ``lax.scan`` / ``lax.while_loop`` of the rewritten bodies), so
    operands may have other shapes than in ``eqn``. ``finish`` turns a body's results into
    arrays (a hook's placeholders must become real values before they leave a body)."""
    return CONTROL_FLOW[eqn.primitive](eqn, invals, hook, path, finish)


# ------------------------------------------------------------ custom derivative rules
CUSTOM_RULES = P.CUSTOM_DERIVATIVE_CALLS


def _resized(resize, side: str, values, like) -> list:
    """``resize(side, k, value)`` over tangents; integer operands' (float0) tangents become
    zeros shaped like ``like[k]``."""
    return [np.zeros(np.shape(l), jax.dtypes.float0) if v.dtype == jax.dtypes.float0
            else resize(side, k, v) for k, (v, l) in enumerate(zip(values, like))]


def rebind_custom_rule(eqn, invals, body: Callable, widen: Callable,
                       narrow: Callable) -> list:
    """A ``custom_jvp_call`` / ``custom_vjp_call`` whose body was rewritten (``body(*invals)``
    gives its values) that keeps the ORIGINAL derivative rule: derivatives come from ``eqn``
    itself, bound at its own shapes. ``widen(side, k, value)`` brings operand (``side='in'``)
    or result (``'out'``) ``k`` of the rewritten call to the original's shape, ``narrow``
    goes back.

    Exact when the body works channel by channel on the axes that changed (an activation,
    a straight-through rounding): channels the rewrite removed never reach the others."""
    def original(*full):
        return bind_equation(eqn, list(full))

    def widened(side, values):
        return [widen(side, k, v) for k, v in enumerate(values)]

    if eqn.primitive is P.custom_jvp_call_p:
        @jax.custom_jvp
        def f(*args):
            return body(*args)

        @f.defjvp
        def f_jvp(primals, tangents):
            full = widened("in", primals)
            _, t_out = jax.jvp(original, tuple(full),
                               tuple(_resized(widen, "in", tangents, full)))
            outs = body(*primals)
            return outs, _resized(narrow, "out", list(t_out), outs)
        return list(f(*invals))

    @jax.custom_vjp
    def g(*args):
        return body(*args)

    def fwd(*args):
        return body(*args), args

    def bwd(args, cts):
        full_outs, pullback = jax.vjp(original, *widened("in", args))
        ct_in = pullback(_resized(widen, "out", list(cts), full_outs))
        return tuple(_resized(narrow, "in", list(ct_in), args))

    g.defvjp(fwd, bwd)
    return list(g(*invals))
