"""Fake-quant as a jaxpr rewrite: quantizers where an integer runtime has integers.

``quantize(fn, variables, *inputs, profile=...)`` finds the quantization sites of ANY model
from its flat jaxpr (``quant.dataflow``) with a small rule table keyed by primitive:

- weights: the parameter-derived operand of ``conv_general_dilated`` / ``dot_general``,
  per output channel (the kernel's out-feature axis; a dot's free axes) or per tensor;
- activations: the activation operands of the primitives the profile lists in
  ``quantize_inputs_of``: conv/dot inputs, and where an integer runtime requantizes
  (residual adds of two activations, concatenations, pooling and reductions).

An activation site is a *tensor*: it is quantized once where it is made, and every
consumer sees the quantized value, exactly like a QuantizeLinear/DequantizeLinear pair on
that tensor in ONNX (``quant.qdq_export``). Weight sites are quantized at the operand.
The quantized model is ``QuantizedModel.apply(variables, qparams, *inputs)``, an ordinary
JAX function (jit, grad for QAT, export): ``qparams = {'scale': {site: array},
'zero_point': {site: array}}`` comes from calibration (``quant.calibration``) or training.
"""
import dataclasses
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from core import fast_depthwise, primitives as P, rewrite
from quant import dataflow
from quant.profile import Profile, QuantSpec, load_profile
from quant.quantizers import fake_quant, lsq_scale

WEIGHT_PRIMITIVES = P.LINEAR


@dataclasses.dataclass
class Site:
    """One quantizer: a weight operand of a conv/dot, or an activation tensor."""
    name: str
    kind: str                          # 'weight' or 'activation'
    var: Any                           # the jaxpr var quantized
    shape: Tuple[int, ...]
    spec: QuantSpec
    scale_shape: Tuple[int, ...]       # () per tensor; 1s except the channel axes
    consumers: List[Tuple[int, int]]   # (eqn index, operand index) that read it quantized
    source: str
    layer: str                         # the weight op this site feeds (for sensitivity)

    @property
    def channel_axes(self) -> Tuple[int, ...]:
        return tuple(a for a, n in enumerate(self.scale_shape) if n != 1) \
            if self.scale_shape else ()


def _conv_weight_axes(eqn, operand: int) -> Tuple[int, ...]:
    return (eqn.params["dimension_numbers"].rhs_spec[0],) if operand == 1 else ()


def _dot_weight_axes(eqn, operand: int) -> Tuple[int, ...]:
    (contracting, batch) = eqn.params["dimension_numbers"]
    used = set(contracting[operand]) | set(batch[operand])
    ndim = len(eqn.invars[operand].aval.shape)
    return tuple(a for a in range(ndim) if a not in used)


WEIGHT_CHANNEL_AXES = {P.conv_general_dilated_p: _conv_weight_axes,
                       P.dot_general_p: _dot_weight_axes}


def _weight_channel_axes(eqn, operand: int) -> Tuple[int, ...]:
    """Output-channel axes of a conv/dot weight operand (empty: no channel axis)."""
    return WEIGHT_CHANNEL_AXES[eqn.primitive](eqn, operand)


# Primitives that keep a tensor in the "layer domain" (what an integer runtime stores as
# int8 between layers) when their other operands are constants or literals.
DOMAIN_PRESERVING = P.LAYOUT | P.COPY | {
    P.max_p, P.min_p, P.clamp_p, P.mul_p, P.div_p, P.neg_p, P.convert_element_type_p,
    P.slice_p, P.dynamic_slice_p, P.pad_p, P.reduce_window_max_p, P.reduce_window_sum_p,
    P.select_n_p}
REDUCTIONS = frozenset({P.reduce_sum_p, P.reduce_max_p, P.reduce_min_p})
# Where an integer runtime requantizes the sum or the join of two activations.
JOINS = frozenset({P.add_p, P.sub_p, P.concatenate_p})


def _is_pooling(eqn) -> bool:
    """A reduction over leading (spatial / token) axes, not over the channel (last) axis
    as in LayerNorm statistics or a softmax."""
    ndim = len(eqn.invars[0].aval.shape)
    return eqn.primitive not in REDUCTIONS or (ndim - 1) not in eqn.params["axes"]


# Primitive -> (eqn, all activation operands in the domain, number of them) -> whether its
# output is in the layer domain; a primitive not in the table takes the output out of it.
DOMAIN_RULES = P.rule_table({
    WEIGHT_PRIMITIVES: lambda eqn, inside, n_acts: True,
    JOINS: lambda eqn, inside, n_acts: inside,
    REDUCTIONS: lambda eqn, inside, n_acts: inside and _is_pooling(eqn),
    DOMAIN_PRESERVING: lambda eqn, inside, n_acts: inside and n_acts == 1,
})


def layer_domain(flat, requantized: FrozenSet[str] = frozenset()) -> Dict[Any, bool]:
    """Activations an integer runtime holds as int8 between layers: model inputs, outputs
    of convs/dots (with their bias), and what adds, concatenations, pooling and
    elementwise ops with constants make of them. Normalization statistics, softmax and
    products of two activations are not in it, unless the profile requantizes that
    primitive (``requantized``, its ``quantize_inputs_of``: onnxruntime's QLinearMul and
    QLinearSigmoid write int8, so a hard-swish or squeeze-excitation product stays int8)."""
    domain = {v: True for v, is_param in zip(flat.jaxpr.invars, flat.traced.is_param)
              if not is_param}
    for eqn in flat.eqns:
        acts = [a for a in eqn.invars if not isinstance(a, jcore.Literal)
                and not flat.is_const(a)]
        if not acts:
            continue
        inside = all(domain.get(a, False) for a in acts)
        rule = DOMAIN_RULES.get(eqn.primitive)
        if eqn.primitive.name in requantized and (rule is None or
                                                  eqn.primitive in DOMAIN_PRESERVING):
            value = inside
        else:
            value = rule is not None and rule(eqn, inside, len(acts))
        for v in eqn.outvars:
            domain[v] = value
    return domain


def _activation_operands(flat, eqn, domain) -> List[int]:
    """Operands of a requantizing primitive that get an activation quantizer: activations
    in the layer domain; adds and subtractions only when both operands are such (an add
    of a constant is a bias, fused into the op before it)."""
    if eqn.primitive in REDUCTIONS and not _is_pooling(eqn):
        return []
    floats = [k for k, a in enumerate(eqn.invars)
              if not isinstance(a, jcore.Literal) and jnp.issubdtype(a.aval.dtype, jnp.floating)]
    activations = [k for k in floats if not flat.is_const(eqn.invars[k])]
    if not all(domain.get(eqn.invars[k], False) for k in activations):
        return []
    if eqn.primitive in (P.add_p, P.sub_p) and len(activations) != len(eqn.invars):
        return []
    return activations


def find_sites(flat: dataflow.FlatModel, profile: Profile) -> Dict[str, Site]:
    """Every quantizer the profile asks for, named by parameter path or position."""
    sites: Dict[str, Site] = {}
    act_by_var: Dict[Any, Site] = {}
    n_weights = 0
    domain = layer_domain(flat, profile.quantize_inputs_of)
    for i, eqn in enumerate(flat.eqns):
        name = eqn.primitive.name
        is_weight_op = eqn.primitive in WEIGHT_PRIMITIVES
        if not is_weight_op and name not in profile.quantize_inputs_of:
            continue
        layer = f"{name}#{i}"
        for k in (_weight_operands(flat, eqn) if is_weight_op else []):
            atom = eqn.invars[k]
            spec = profile.weights
            axes = _weight_channel_axes(eqn, k) if spec.per_channel else ()
            shape = tuple(atom.aval.shape)
            scale_shape = tuple(n if a in axes else 1 for a, n in enumerate(shape)) \
                if axes else ()
            root = flat.root_param(atom)
            site_name = root or f"weight/{n_weights}"
            n_weights += 1
            while site_name in sites:
                site_name += "'"
            layer = site_name
            sites[site_name] = Site(site_name, "weight", atom, shape, spec, scale_shape,
                                    [(i, k)], flat.source(i), layer)
        operands = [k for k in range(len(eqn.invars)) if not flat.is_const(eqn.invars[k])] \
            if is_weight_op else _activation_operands(flat, eqn, domain)
        for k in operands:
            atom = eqn.invars[k]
            if isinstance(atom, jcore.Literal) or not jnp.issubdtype(atom.aval.dtype,
                                                                      jnp.floating):
                continue
            if atom in act_by_var:
                act_by_var[atom].consumers.append((i, k))
                continue
            site_name = f"act/{len(act_by_var)}"
            producer = flat.producer.get(atom)
            source = flat.source(producer) if producer is not None else "model input"
            site = Site(site_name, "activation", atom, tuple(atom.aval.shape),
                        profile.activations, (), [(i, k)], source, layer)
            act_by_var[atom] = site
            sites[site_name] = site
    return sites


def _weight_operands(flat, eqn) -> List[int]:
    return [k for k, a in enumerate(eqn.invars)
            if not isinstance(a, jcore.Literal) and flat.is_const(a)
            and jnp.issubdtype(a.aval.dtype, jnp.floating) and len(a.aval.shape) >= 1]


@dataclasses.dataclass
class QuantizedModel:
    """A model with quantizers at its sites; ``apply`` is the fake-quant function."""
    flat: dataflow.FlatModel
    profile: Profile
    sites: Dict[str, Site]

    def float_fn(self, variables, *inputs):
        return self.apply(variables, None, *inputs, enabled=())

    def apply(self, variables, qparams, *inputs, enabled: Optional[Iterable[str]] = None,
              learnable: bool = False, observe: Optional[Callable] = None,
              observe_weight_op: Optional[Callable] = None):
        """Fake-quant forward. ``enabled``: names of the sites to quantize (default all),
        or ``{name: bool array}`` to switch sites on and off without re-tracing;
        ``learnable``: LSQ gradient scaling on the scales; ``observe(site, value)`` is
        called with each site's float value (calibration) before it is quantized;
        ``observe_weight_op(site, eqn, float_invals, quant_invals)`` at each weight op."""
        switches = enabled if isinstance(enabled, dict) else None
        on = set(self.sites) if enabled is None else set(enabled)
        if switches is not None:
            on = set(switches)
        weight_at = {}
        act_at = {}
        for site in self.sites.values():
            if site.kind == "weight":
                weight_at[site.consumers[0]] = site
            else:
                act_at[site.var] = site

        def quantize(site, value):
            if observe is not None:
                observe(site, value)
            if site.name not in on:
                return value
            scale = jnp.asarray(qparams["scale"][site.name])
            zero_point = jnp.asarray(qparams["zero_point"][site.name])
            if learnable:
                scale = lsq_scale(scale, int(np.prod(site.shape)), site.spec.qmax)
            quantized = fake_quant(value, scale, zero_point, site.spec.qmin, site.spec.qmax)
            if switches is not None:
                return jnp.where(switches[site.name], quantized, value)
            return quantized

        retraced = self.flat.at(*inputs)
        act_at_eqn = {retraced.var_map.get(v, v): site for v, site in act_at.items()}

        def hook(eqn, invals, path):
            index = retraced.analysed_index(path[0])
            touched = False
            float_invals, invals = invals, list(invals)
            for k in range(len(invals)):
                site = weight_at.get((index, k))
                if site is not None and len(path) == 1:
                    invals[k] = quantize(site, invals[k])
                    touched = True
                    if observe_weight_op is not None:
                        observe_weight_op(site, eqn, float_invals, invals)
            sites_out = [act_at_eqn.get(v) for v in eqn.outvars] if len(path) == 1 else []
            if not touched and not any(sites_out):
                return None
            outs = rewrite.bind_equation(eqn, invals)
            return [quantize(s, o) if s is not None else o for s, o in zip(sites_out, outs)] \
                if sites_out else outs

        args = jax.tree_util.tree_leaves((variables, *inputs))
        args = [quantize(act_at[v], a) if v in act_at else a
                for v, a in zip(self.flat.jaxpr.invars, args)]
        outs = rewrite.evaluate(retraced.closed, args, hook)
        return jax.tree_util.tree_unflatten(self.flat.traced.out_tree, outs)

    def fn(self, qparams, enabled=None) -> Callable:
        """``fn(variables, *inputs)`` with these qparams, for export and evaluation."""
        return lambda variables, *inputs: self.apply(variables, qparams, *inputs,
                                                     enabled=enabled)

    def collector(self, names: Optional[Iterable[str]] = None, enabled=(),
                  qparams=None) -> Callable:
        """A jitted ``(variables, *inputs) -> {site: float value}`` for the named sites
        (default all), with the ``enabled`` sites quantized upstream (default none)."""
        wanted = None if names is None else set(names)

        def run(variables, *inputs):
            found = {}

            def observe(site, value):
                if wanted is None or site.name in wanted:
                    found[site.name] = value
            self.apply(variables, qparams, *inputs, enabled=enabled, observe=observe)
            return found
        return jax.jit(fast_depthwise.on_cpu(run))

    def site_values(self, variables, *inputs, names=None) -> Dict[str, np.ndarray]:
        return jax.tree.map(np.asarray, self.collector(names)(variables, *inputs))

    def describe(self) -> str:
        lines = []
        for s in self.sites.values():
            gran = f"per-channel {s.channel_axes}" if s.channel_axes else "per-tensor"
            lines.append(f"{s.name:40s} {s.kind:10s} {str(s.shape):18s} int{s.spec.bits} "
                         f"{gran}  {s.source}")
        return "\n".join(lines)


def quantize(fn, variables, *inputs, profile="ort_cpu_int8") -> QuantizedModel:
    """Finds the quantization sites of ``fn(variables, *inputs)`` for an NPU profile."""
    profile = load_profile(profile)
    flat = dataflow.flatten(fn, variables, *inputs)
    return QuantizedModel(flat, profile, find_sites(flat, profile))
