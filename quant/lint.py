"""The NPU linter: will this model run, and quantize well, on a given integer target?

``lint(fn, variables, *inputs, profile=...)`` works on any model, trained or not, from its
jaxpr (after folding BatchNorm, as a deployment would) and one forward pass on ``inputs``.
Each finding names the model line it comes from and suggests a fix:

- ``unsupported_op``: a primitive on activations the profile does not list (GELU's erf or
  tanh, LayerNorm's rsqrt, softmax's exp and division...);
- ``constraint``: a conv the target cannot run (kernel too large, grouped conv, too many
  channels), from the profile's ``constraints``;
- ``weight_range_spread``: under per-tensor weights, output channels whose weight ranges
  differ by orders of magnitude (the small channels round to zero);
- ``activation_channel_spread``: a per-tensor activation whose channels have very
  different ranges;
- ``activation_outliers`` / ``unbounded_activation``: a tensor whose maximum is far beyond
  its 99.9th percentile (the grid is wasted on rare values), the latter when an unbounded
  activation (ReLU, GELU, identity) made it and a bounded one (ReLU6) would serve;
- ``concat_range_mismatch``: a concatenation of tensors whose ranges differ a lot (they
  share one scale after it);
- ``int8_saturation``: full-range int8 weights with uint8 activations for onnxruntime on an
  x86 CPU without VNNI, whose u8s8 kernels saturate (quant/target_cpu.py): the int8 model
  would be silently wrong there.
"""
import dataclasses
from typing import Dict, List, Optional

import numpy as np
from jax.extend import core as jcore

from core import primitives as P
from quant import dataflow
from quant.batchnorm_folding import fold_batchnorm
from quant.fakequant import WEIGHT_PRIMITIVES, _weight_channel_axes, find_sites
from quant import target_cpu
from quant.profile import load_profile

# What an unsupported primitive usually is in a model, and what to do about it (keyed by
# primitive; the profile lists the supported ones by name, as data).
UNSUPPORTED_HINTS = {
    P.erf_p: ("GELU (exact, erf)", "replace GELU by ReLU / ReLU6 or hard-swish and fine-tune "
              "(QAT), or run it on the host"),
    P.erfc_p: ("GELU (exact, erfc)", "replace GELU by ReLU / ReLU6 or hard-swish and fine-tune "
               "(QAT), or run it on the host"),
    P.tanh_p: ("tanh (GELU's tanh approximation?)", "replace GELU by ReLU / ReLU6 or "
               "hard-swish and fine-tune, or use a lookup-table activation if the NPU has one"),
    P.integer_pow_p: ("x**n on activations (GELU's tanh approximation computes x**3)",
                      "replace the activation by ReLU / hard-swish"),
    P.rsqrt_p: ("normalization computed at run time (LayerNorm / RMSNorm / GroupNorm)",
                "use BatchNorm (folded into the conv at export), or run the norm on the host"),
    P.sqrt_p: ("normalization computed at run time", "use BatchNorm, foldable at export"),
    P.square_p: ("a variance computed at run time (LayerNorm / RMSNorm)",
                 "use BatchNorm (folded at export), or run the norm on the host"),
    P.exp_p: ("softmax or an exponential activation", "run softmax on the host / DSP; for "
              "SiLU/swish use hard-swish"),
    P.logistic_p: ("sigmoid / SiLU", "use hard-sigmoid / hard-swish"),
    P.div_p: ("division by an activation (softmax or normalization)", "run the normalization "
              "on the host, or use BatchNorm"),
    P.mul_p: ("a product of two activations (gating, SE, normalization)", "check the NPU "
              "multiplies two int8 tensors; else use additive / hard gates"),
    P.reduce_max_p: ("a max over channels (softmax stabilization)", "run softmax on the host"),
}
DEFAULT_HINT = ("an op without an integer kernel on this target",
                "run it on the host, or rewrite it with supported ops")

# Activation functions with no upper bound: their outputs reach whatever the data gives.
UNBOUNDED = frozenset({P.max_p, P.tanh_p, P.erf_p, P.integer_pow_p, P.mul_p, P.add_p})

THRESHOLDS = dict(weight_spread=20.0, channel_spread=20.0, outlier_ratio=8.0,
                  concat_ratio=10.0, min_values=1000)


@dataclasses.dataclass
class Finding:
    kind: str
    severity: str            # 'error' (will not run) or 'warning' (will lose accuracy)
    message: str
    source: str
    fix: str
    value: Optional[float] = None

    def __str__(self):
        return f"[{self.severity}] {self.kind} at {self.source}: {self.message}\n    fix: {self.fix}"


@dataclasses.dataclass
class LintReport:
    profile: str
    findings: List[Finding]

    def kinds(self) -> set:
        return {f.kind for f in self.findings}

    def of_kind(self, kind: str) -> List[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def ok(self) -> bool:
        return not self.findings

    def __str__(self):
        if not self.findings:
            return f"quant.lint ({self.profile}): no findings"
        return f"quant.lint ({self.profile}): {len(self.findings)} findings\n" + "\n".join(
            str(f) for f in self.findings)


def _unsupported_ops(flat, profile) -> List[Finding]:
    found: Dict[tuple, Finding] = {}
    for i, eqn in enumerate(flat.eqns):
        acts = [a for a in eqn.invars if not isinstance(a, jcore.Literal)
                and not flat.is_const(a)]
        if not acts:
            continue
        name = eqn.primitive.name
        if profile.supports(name, has_activation_operands_only=len(acts) == len(eqn.invars)):
            continue
        what, fix = UNSUPPORTED_HINTS.get(eqn.primitive, DEFAULT_HINT)
        key = (name, flat.source(i))
        if key not in found:
            found[key] = Finding("unsupported_op", "error",
                                 f"`{name}` ({what}) is not supported by {profile.name}",
                                 key[1], fix)
    return list(found.values())


def _constraints(flat, profile) -> List[Finding]:
    limits = profile.constraints
    out = []
    for i, eqn in enumerate(flat.eqns):
        if eqn.primitive is not P.conv_general_dilated_p:
            continue
        dims = eqn.params["dimension_numbers"]
        kernel_shape = eqn.invars[1].aval.shape
        window = [kernel_shape[a] for a in dims.rhs_spec[2:]]
        groups = eqn.params["feature_group_count"]
        in_channels = eqn.invars[0].aval.shape[dims.lhs_spec[1]]
        out_channels = kernel_shape[dims.rhs_spec[0]]
        if "max_kernel_size" in limits and max(window) > limits["max_kernel_size"]:
            out.append(Finding("constraint", "error", f"kernel {window} exceeds the "
                               f"{limits['max_kernel_size']}x{limits['max_kernel_size']} limit",
                               flat.source(i), "split it into stacked smaller kernels"))
        if limits.get("grouped_conv") is False and 1 < groups < in_channels:
            out.append(Finding("constraint", "error", f"grouped conv ({groups} groups) is "
                               "not supported", flat.source(i),
                               "use a dense or a depthwise conv"))
        if "max_channels" in limits and max(in_channels, out_channels) > limits["max_channels"]:
            out.append(Finding("constraint", "error", f"{max(in_channels, out_channels)} "
                               f"channels exceed {limits['max_channels']}", flat.source(i),
                               "split the layer along channels"))
    return out


def _spread(ranges: np.ndarray) -> float:
    ranges = np.asarray(ranges, np.float64)
    median = float(np.median(ranges))
    return float(ranges.max() / max(median, 1e-12))


# Per range warning: the THRESHOLDS entry its ratio must exceed, and the fix it suggests.
_CALIBRATE = "calibrate with 'percentile' or 'mse' ranges"
RANGE_WARNINGS = {
    "weight_range_spread": ("weight_spread", "apply cross-layer equalization "
                            "(quant.equalization.equalize) after folding BatchNorm, or use "
                            "per-channel weights"),
    "activation_outliers": ("outlier_ratio", _CALIBRATE),
    "unbounded_activation": ("outlier_ratio", "use a bounded activation (ReLU6 / clipped "
                             "ReLU) here, " + _CALIBRATE),
    "activation_channel_spread": ("channel_spread", "equalize the producing and consuming "
                                  "layers (cross-layer equalization), or rescale the channels "
                                  "(SmoothQuant-style)"),
    "concat_range_mismatch": ("concat_ratio", "normalize the branches before concatenating "
                              "(BatchNorm), or requantize each input to its own scale"),
}


def _warning_above(kind: str, ratio: float, message: str, source: str) -> List[Finding]:
    """The end of every range check: one warning carrying ``ratio`` when it exceeds the
    kind's threshold (``RANGE_WARNINGS``), none otherwise."""
    threshold, fix = RANGE_WARNINGS[kind]
    if ratio > THRESHOLDS[threshold]:
        return [Finding(kind, "warning", message, source, fix, ratio)]
    return []


def _weight_spread(flat, profile) -> List[Finding]:
    if profile.weights.per_channel:
        return []
    out = []
    for i, eqn in enumerate(flat.eqns):
        if eqn.primitive not in WEIGHT_PRIMITIVES:
            continue
        for k, atom in enumerate(eqn.invars):
            if isinstance(atom, jcore.Literal) or not flat.is_const(atom):
                continue
            axes = _weight_channel_axes(eqn, k)
            w = np.abs(flat.value(atom))
            if not axes or w.ndim < 2:
                continue
            per_channel = np.moveaxis(w, axes, tuple(range(len(axes)))).reshape(
                int(np.prod([w.shape[a] for a in axes])), -1).max(axis=1)
            if per_channel.size < 2:
                continue
            ratio = _spread(per_channel)
            out += _warning_above("weight_range_spread", ratio, (
                f"output-channel weight ranges differ {ratio:.0f}x (max / median) under "
                f"per-tensor {profile.weights.bits}-bit weights"), flat.source(i))
    return out


def _producer_chain_unbounded(flat, var) -> bool:
    index = flat.producer.get(var)
    if index is None:
        return False
    eqn = flat.eqns[index]
    if eqn.primitive in (P.min_p, P.clamp_p):
        return False
    return eqn.primitive in UNBOUNDED or eqn.primitive in WEIGHT_PRIMITIVES


def _activation_findings(flat, sites, values, profile) -> List[Finding]:
    out = []
    for site in sites.values():
        if site.kind != "activation" or site.var not in values:
            continue
        x = np.asarray(values[site.var], np.float64)
        source = site.source
        if x.size >= THRESHOLDS["min_values"]:
            a = np.abs(x).reshape(-1)
            p999 = float(np.percentile(a, 99.9))
            ratio = float(a.max() / max(p999, 1e-12))
            unbounded = (ratio > THRESHOLDS["outlier_ratio"]
                         and _producer_chain_unbounded(flat, site.var))
            out += _warning_above(
                "unbounded_activation" if unbounded else "activation_outliers", ratio, (
                    f"max |x| = {a.max():.3g} is {ratio:.0f}x the 99.9th percentile "
                    f"({p999:.3g}): min-max ranges waste the int{site.spec.bits} grid"), source)
        if x.ndim >= 2 and x.shape[-1] >= 4:
            per_channel = np.abs(x).reshape(-1, x.shape[-1]).max(axis=0)
            ratio = _spread(per_channel)
            out += _warning_above("activation_channel_spread", ratio, (
                f"channel ranges of this per-tensor activation differ {ratio:.0f}x "
                "(max / median)"), source)
    return out


def _concat_findings(flat, values) -> List[Finding]:
    out = []
    for i, eqn in enumerate(flat.eqns):
        if eqn.primitive is not P.concatenate_p:
            continue
        ranges = [float(np.max(np.abs(values[a]))) for a in eqn.invars
                  if not isinstance(a, jcore.Literal) and a in values and np.size(values[a])]
        if len(ranges) < 2:
            continue
        ratio = max(ranges) / max(min(ranges), 1e-12)
        out += _warning_above("concat_range_mismatch", ratio, (
            f"concatenated tensors have ranges {', '.join(f'{r:.3g}' for r in ranges)} "
            f"({ratio:.0f}x apart) and share one scale after the concat"), flat.source(i))
    return out


def _saturation_findings(profile) -> List[Finding]:
    """The profile's weight range against the CPUs it is meant for and this host."""
    if not profile.cpu_dependent:
        return []
    kinds = {profile.target_cpu, target_cpu.host_kind()} - {None}
    bad = sorted(k for k in kinds if target_cpu.u8s8_saturates(
        k, profile.weights.bits, not profile.weights.unsigned, profile.activations.unsigned,
        profile.activations.bits))
    if not bad:
        return []
    return [Finding(
        "int8_saturation", "error",
        f"{profile.weights.bits}-bit signed weights with {profile.activations.bits}-bit "
        f"unsigned activations overflow the int16 pair sums of {profile.name}'s u8s8 kernels "
        f"on {', '.join(target_cpu.KINDS[k] for k in bad)}: int8 outputs will be wrong there",
        profile.name, "load the profile for that CPU (quant.load_profile(name, "
        "target_cpu='x86_without_vnni') gives 7-bit weights), or run on a VNNI CPU",
        float(profile.weights.bits))]


def lint(fn, variables, *inputs, profile="npu_int8_per_tensor", fold: bool = True
         ) -> LintReport:
    """Lints ``fn(variables, *inputs)`` for an NPU profile; ``inputs`` drive one forward
    pass for the activation checks (real data gives the most faithful ranges)."""
    profile = load_profile(profile)
    if fold:
        fn, variables, _ = fold_batchnorm(fn, variables, *inputs)
    flat = dataflow.flatten(fn, variables, *inputs)
    sites = find_sites(flat, profile)
    wanted = [s.var for s in sites.values() if s.kind == "activation"]
    for eqn in flat.eqns:
        if eqn.primitive is P.concatenate_p:
            wanted += [a for a in eqn.invars if not isinstance(a, jcore.Literal)
                       and not flat.is_const(a)]
    values = dataflow.record_values(flat, variables, *inputs, wanted=wanted)
    findings = (_unsupported_ops(flat, profile) + _constraints(flat, profile)
                + _weight_spread(flat, profile)
                + _activation_findings(flat, sites, values, profile)
                + _concat_findings(flat, values) + _saturation_findings(profile))
    return LintReport(profile.name, findings)
