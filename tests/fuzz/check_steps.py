"""The individual checks that ``tests.fuzz.checks.check`` runs on one model, one per
function, each recording findings on the ``Checker`` instead of raising."""
import dataclasses
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tests.fuzz import build, groups_oracle


@dataclasses.dataclass
class Model:
    fn: Any
    variables: Any
    inputs: list
    reference: Any
    analysis: Any = None
    matching: Optional[groups_oracle.Matching] = None
    cost_model: Any = None
    masked: Any = None                  # jitted masked model


def run(fn, *args):
    """Evaluates under ``jax.jit``: one XLA compilation per model instead of one per
    primitive and shape, which is what makes hundreds of random models affordable."""
    return jax.jit(fn)(*args)


def analysis(c, m: Model) -> bool:
    """The analysis completes and its groups are the architecture's symbols."""
    from pruning import analyze
    ok, m.analysis = c.attempt("analysis", lambda: analyze(m.fn, m.variables, *m.inputs))
    if not ok:
        return False
    ok, m.matching = c.attempt("groups", lambda: groups_oracle.match(c.arch, m.analysis))
    if not ok:
        return False
    for message in m.matching.wrong:
        c.note("groups", "mismatch", message)
    for sid, reason in sorted(m.matching.not_prunable.items()):
        c.note("groups", "unsupported", f"s{sid} not prunable: {reason}")
    if not m.matching.wrong:
        c.outcome.passed.append("groups")
    return True


def identity(c, m: Model) -> None:
    """Keeping every channel gives the original function (pruned and masked)."""
    from pruning import keep_to_masks, masked, prune
    # float32: the masked model is another XLA program (its own fusions and summation order):
    # on an AVX-512 Xeon a layernorm + attention + loop model differed by 1.15e-6 of scale
    # with every mask one; a wrong channel costs errors of order 1.
    tol = 1e-5 if c.arch.dtype == "float32" else 1e-2
    ok, same = c.attempt("identity", lambda: prune(m.fn, m.variables, *m.inputs, keep={},
                                                   analysis=m.analysis))
    if ok:
        ok, out = c.attempt("identity", lambda: run(same.fn, same.variables, *m.inputs))
        if ok:
            c.expect("identity", out, m.reference, m.reference, tol, "(keep everything)")
    full = {g.id: np.arange(g.size) for g in m.analysis.prunable()}
    masks = keep_to_masks(m.analysis.groups, full, _float(c.arch))
    m.masked = jax.jit(masked(m.fn, m.analysis))
    ok, out = c.attempt("identity", lambda: m.masked(m.variables, masks, *m.inputs))
    if ok:
        c.expect("identity", out, m.reference, m.reference, tol, "(masks all one)")


def _float(arch):
    return jnp.bfloat16 if arch.dtype == "bfloat16" else jnp.float32


def keep_set(c, m: Model, keep: Dict[int, np.ndarray], eager: bool):
    """masked == pruned == narrow reference for one keep-set; cost; jit == eager."""
    from pruning import keep_to_masks, prune
    lib_keep = {m.matching.group_of_sym[sid]: kept for sid, kept in keep.items()}
    context = f"(keep {_show(keep)})"
    ok, pruned = c.attempt("prune", lambda: prune(m.fn, m.variables, *m.inputs,
                                                  keep=lib_keep, analysis=m.analysis))
    if not ok:
        return None
    ok_small, small = c.attempt("narrow", lambda: build.narrow(c.arch, m.variables, keep))
    out, ref = _pruned_and_narrow(c, m, pruned, small if ok_small else None)
    if out is None:
        return None
    masks = keep_to_masks(m.analysis.groups, lib_keep, _float(c.arch))
    ok, want = c.attempt("masked", lambda: m.masked(m.variables, masks, *m.inputs))
    if ok:
        c.expect("masked", out, want, m.reference, context=context)
    if ref is not None:
        c.expect("narrow", out, ref, m.reference, context=context)
        if not any(len(k) == 0 for k in keep.values()):
            cost(c, m, pruned, small, lib_keep, context)
    if eager:
        ok, slow = c.attempt("jit", lambda: pruned.fn(pruned.variables, *m.inputs))
        if ok:
            c.expect("jit", out, slow, m.reference, context=context + " jit vs eager")
    return pruned


def _pruned_and_narrow(c, m: Model, pruned, small):
    """Outputs of the pruned model and of the narrow reference, compiled together (one
    XLA compilation instead of two); evaluated apart, to name the culprit, on an error."""
    if small is not None:
        try:
            both = jax.jit(lambda pv, nv, *xs: (pruned.fn(pv, *xs), small[0](nv, *xs)))
            return both(pruned.variables, small[1], *m.inputs)
        except Exception:  # noqa: BLE001 - attributed below
            pass
    ok, out = c.attempt("prune", lambda: run(pruned.fn, pruned.variables, *m.inputs))
    ref = None
    if small is not None:
        ok_ref, ref = c.attempt("narrow", lambda: run(small[0], small[1], *m.inputs))
        ref = ref if ok_ref else None
    return (out if ok else None), ref


def _show(keep) -> str:
    return "{" + ", ".join(f"s{s}: {list(map(int, k))}" for s, k in sorted(keep.items())) + "}"


def cost(c, m: Model, pruned, small, lib_keep, context) -> None:
    """The differentiable cost at these sizes equals the exact cost of the pruned model
    and of the narrow reference."""
    from core.cost import CostModel, count
    sizes = {gid: float(len(k)) for gid, k in lib_keep.items()}
    if m.cost_model is None:
        ok, m.cost_model = c.attempt("cost", lambda: CostModel(m.analysis))
        if not ok:
            return
    ok, model = c.attempt("cost", lambda: m.cost_model(sizes))
    if not ok:
        return
    for label, (fn, variables) in (("pruned", (pruned.fn, pruned.variables)),
                                   ("narrow", small)):
        ok, exact = c.attempt("cost", lambda: count(fn, variables, *m.inputs))
        if not ok:
            continue
        # The narrow reference is plain jax.numpy: a linen model's norms compute with other
        # elementwise ops, and dot_product_attention with unequal narrow q/k and v head
        # dims is written out; then only matmul FLOPs and parameters are comparable.
        same_ops = label == "pruned" or (c.arch.backend == "jnp"
                                         and "attention:dpa" not in c.arch.tags)
        for field in ("flops", "matmul_flops", "params") if same_ops else ("matmul_flops",
                                                                          "params"):
            want, got = float(getattr(exact, field)), float(getattr(model, field))
            if abs(want - got) > 1e-6 * max(abs(want), 1.0):
                c.note("cost", "mismatch", f"{field}: CostModel {got:g} vs count of the "
                                           f"{label} model {want:g} {context}")
                return
    c.outcome.passed.append("cost")


def export(c, m: Model, pruned) -> bool:
    """The pruned model exports to ONNX and onnxruntime reproduces it."""
    from export import to_onnx
    rtol = 1e-4 if c.arch.dtype == "float32" else 3e-2
    ok, _ = c.attempt("export", lambda: to_onnx(pruned.fn, pruned.variables, *m.inputs,
                                                rtol=rtol))
    if ok:
        c.outcome.passed.append("export")
    return ok


def lowrank(c, m: Model) -> None:
    """Factorizing every dense / conv kernel at full rank gives the same function."""
    from core.trace import trace
    from lowrank import factorize, find_sites
    ok, sites = c.attempt("lowrank", lambda: find_sites(trace(m.fn, m.variables,
                                                              *m.inputs))[0])
    if not ok or not sites:
        return
    ranks = {s.path: s.geometry.full_rank * s.geometry.groups for s in sites}
    ok, out = c.attempt("lowrank", lambda: factorize(m.fn, m.variables, *m.inputs,
                                                     ranks=ranks, method="svd"))
    if not ok:
        return
    ok, got = c.attempt("lowrank", lambda: run(out.fn, out.variables, *m.inputs))
    if ok:
        from tests.fuzz.checks import LOWRANK_TOLERANCE
        c.expect("lowrank", got, m.reference, m.reference, LOWRANK_TOLERANCE[c.arch.dtype],
                 "(full rank)")


def quant(c, m: Model) -> None:
    """Fake-quant with 16-bit weights and activations stays close to float."""
    from quant import calibrate, load_profile, quantize
    from tests.fuzz.checks import QUANT_TOLERANCE
    profile = load_profile("ort_cpu_int8").with_weights(bits=16).with_activations(bits=16)
    ok, q = c.attempt("quant", lambda: quantize(m.fn, m.variables, *m.inputs,
                                                profile=profile))
    if not ok:
        return
    # calibrate() reads a batch as (input, label...) for one input, else as the inputs.
    batch = (m.inputs[0],) if len(m.inputs) == 1 else tuple(m.inputs)
    ok, qp = c.attempt("quant", lambda: calibrate(q, m.variables, [batch], method="minmax"))
    if not ok:
        return
    ok, got = c.attempt("quant", lambda: run(q.fn(qp), m.variables, *m.inputs))
    if ok:
        c.expect("quant", got, m.reference, m.reference, QUANT_TOLERANCE[c.arch.dtype],
                 "(16-bit fake-quant)")
