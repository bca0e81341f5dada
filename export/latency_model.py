"""Predicted device latency of any JAX model: a sum of table latencies over its jaxpr's ops.

Walking the jaxpr (a rule table keyed by primitive) yields the ops the device will run:
``conv_general_dilated`` and ``dot_general`` with a parameter operand are convs and dense
layers; ``dot_general`` of two activations is a batched matmul (attention); ``reduce_window``
is pooling; other arithmetic on activations is elementwise, except when it only applies
parameters to the output of a linear op (BatchNorm, bias, activation), which the exporter
folds into the conv or the runtime fuses, so it costs nothing. Computations on parameters
alone are constant-folded at export and also cost nothing.

Each op's latency comes from a ``LatencyTable``: in ``exact`` mode by its own signature
(measured on demand, a lookup table), in ``grid`` mode by bilinear interpolation in the
channel counts between points of ``channel_grid`` (the only mode that is a smooth function of
channel counts). Ops timed alone carry per-run overhead and layout conversions that a whole
model shares, so the sum is corrected by a small linear ``Calibration`` fitted per device on a
few measured models: ``latency = c0 + c1 * sum(linear ops) + c2 * sum(other ops) + c3 * n_ops``.

``LatencyModel.differentiable`` gives the latency as a JAX function of the kept channel
count of each prunable group (``core.cost`` says which groups sit on each conv/dense
equation's input and output channel axes), for a pruning loss; at integer sizes it equals
``grid``-mode prediction of the physically pruned model. Its gradient is the slope of a
coarser interpolation (the grid's ends and middle), because measured latencies are
staircases in channel counts and a fine grid's slope is zero on every flat step.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax.extend import core as jcore
from jax.extend.core import Primitive

from core import primitives as P
from core.rewritten import flatten
from core.trace import activations, call_jaxpr
from export.latency_table import LatencyTable, OpSignature, conv_signature

LINEAR_KINDS = ("conv", "dense", "matmul", "attention")
# Ops a runtime does not run: reshapes without a transpose, casts, copies, annotations.
FREE = P.RESHAPES | P.CASTS | P.COPY | P.ANNOTATIONS
ELEMENTWISE = P.ELEMENTWISE - FREE
POOL_MODE = {P.reduce_window_max_p: "max"}      # any other window reduction: "avg"
CONST, ACT, EPILOGUE = "const", "act", "epilogue"


@dataclasses.dataclass
class OpRecord:
    """One op the device runs; ``channel_axes`` names the signature parameters that are
    channel counts (varied by pruning and interpolated in grid mode)."""
    sig: OpSignature
    primitive: Primitive
    channel_axes: Tuple[str, ...] = ()

    @property
    def linear(self) -> bool:
        return self.sig.kind in LINEAR_KINDS


# ---------------------------------------------------------------- jaxpr -> ops

def _size(aval) -> int:
    return int(np.prod(aval.shape, dtype=np.int64))


def _conv_op(eqn, states):
    p = eqn.params
    lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec = dn.lhs_spec, dn.rhs_spec
    n, cin = lhs.shape[lhs_spec[0]], lhs.shape[lhs_spec[1]]
    spatial = [lhs.shape[a] for a in lhs_spec[2:]]
    kernel = [rhs.shape[a] for a in rhs_spec[2:]]
    cout = rhs.shape[rhs_spec[0]]
    dilation = list(p.get("lhs_dilation") or [1] * len(spatial))
    spatial = [(s - 1) * d + 1 for s, d in zip(spatial, dilation)]  # transposed conv
    while len(spatial) < 2:
        spatial, kernel = spatial + [1], kernel + [1]
    pads = [tuple(pp) for pp in p["padding"]] + [(0, 0)] * (2 - len(p["padding"]))
    strides = list(p["window_strides"]) + [1] * (2 - len(p["window_strides"]))
    rhs_dil = list(p.get("rhs_dilation") or [1, 1]) + [1] * (2 - len(p.get("rhs_dilation") or [1, 1]))
    groups = p["feature_group_count"]
    sig = conv_signature(n, spatial[0], spatial[1], cin, cout, tuple(kernel[:2]),
                         tuple(strides[:2]),
                         (pads[0][0], pads[1][0], pads[0][1], pads[1][1]), groups,
                         tuple(rhs_dil[:2]))
    depthwise = groups == cin and groups > 1
    return [OpRecord(sig, eqn.primitive, ("cin", "cout") if not depthwise else
                     ("cin", "cout", "groups"))], EPILOGUE


def _dot_op(eqn, states):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    a, b = eqn.invars[0].aval, eqn.invars[1].aval
    prod = lambda shape, axes: int(np.prod([shape[i] for i in axes], dtype=np.int64))
    rest = lambda shape, skip: [i for i in range(len(shape)) if i not in skip]
    k = prod(a.shape, lc)
    if CONST in (states[0], states[1]):
        act, weight, act_c, w_c, w_b = (a, b, lc, rc, rb) if states[1] == CONST else \
            (b, a, rc, lc, lb)
        m = prod(act.shape, rest(act.shape, act_c))
        n = prod(weight.shape, rest(weight.shape, list(w_c) + list(w_b)))
        return [OpRecord(OpSignature.make("dense", m=m, k=k, n=n), eqn.primitive,
                         ("k", "n"))], EPILOGUE
    batch = prod(a.shape, lb)
    m = prod(a.shape, rest(a.shape, list(lc) + list(lb)))
    n = prod(b.shape, rest(b.shape, list(rc) + list(rb)))
    return [OpRecord(OpSignature.make("matmul", batch=batch, m=m, k=k, n=n),
                     eqn.primitive, ())], ACT


def _pool_op(eqn, states):
    p = eqn.params
    x = eqn.invars[0].aval
    windowed = [i for i, w in enumerate(p["window_dimensions"]) if w > 1 or
                p["window_strides"][i] > 1]
    if len(windowed) > 2 or not windowed:
        return _elementwise_op(eqn, states)
    axes = (windowed + [windowed[-1]])[:2]
    channels = x.shape[-1] if len(x.shape) > 2 and len(x.shape) - 1 not in windowed else 1
    n = _size(x) // int(np.prod([x.shape[a] for a in set(axes)])) // channels
    pads = p["padding"]
    h, w = x.shape[axes[0]], (x.shape[axes[1]] if axes[1] != axes[0] else 1)
    k = (p["window_dimensions"][axes[0]], p["window_dimensions"][axes[1]] if axes[1] != axes[0]
         else 1)
    s = (p["window_strides"][axes[0]], p["window_strides"][axes[1]] if axes[1] != axes[0]
         else 1)
    pad = (pads[axes[0]][0], pads[axes[1]][0] if axes[1] != axes[0] else 0,
           pads[axes[0]][1], pads[axes[1]][1] if axes[1] != axes[0] else 0)
    mode = POOL_MODE.get(eqn.primitive, "avg")
    sig = OpSignature.make("pool", mode=mode, n=n, c=channels, h=h, w=w, kernel=k, strides=s,
                           pads=pad)
    return [OpRecord(sig, eqn.primitive, ("c",))], ACT


def _elementwise_op(eqn, states):
    live = [v for v, s in zip(eqn.invars, states) if s != CONST]
    shapes = [v.aval.shape for v in live] + [v.aval.shape for v in eqn.outvars]
    largest = max(shapes, key=lambda s: int(np.prod(s, dtype=np.int64)))
    ch = largest[-1] if largest else 1
    rows = int(np.prod(largest, dtype=np.int64)) // max(ch, 1)
    sig = OpSignature.make("elementwise", rows=rows, ch=ch, arity=min(len(live), 2))
    return [OpRecord(sig, eqn.primitive, ("ch",))], ACT


def _arithmetic(eqn, states):
    live = [s for s in states if s != CONST]
    same_shape = all(tuple(v.aval.shape) == tuple(eqn.outvars[0].aval.shape)
                     for v, s in zip(eqn.invars, states) if s != CONST)
    if len(live) == 1 and live[0] == EPILOGUE and same_shape:
        return [], EPILOGUE          # bias, BatchNorm, activation after a conv: folded/fused
    return _elementwise_op(eqn, states)


OP_RULES = P.rule_table({P.conv_general_dilated_p: _conv_op, P.dot_general_p: _dot_op,
                         P.POOLING: _pool_op, ELEMENTWISE: _arithmetic})


def _scan_body(eqn):
    return eqn.params["jaxpr"].jaxpr


# Equations whose body the device runs as ops of its own: calls (the model is flattened,
# but a loop body is not) and a scan's body, counted once (as ``core.cost`` lists its
# matmuls); ``cond`` and ``while`` are one elementwise op each.
CALLS = P.CALLS
BODIES = P.rule_table({CALLS: lambda eqn: call_jaxpr(eqn).jaxpr, P.scan_p: _scan_body})


def _walk(jaxpr, in_states, ops: List[OpRecord]):
    """Appends the ops of ``jaxpr`` given its inputs' states (CONST, ACT, EPILOGUE) and
    returns its outputs' states. What is not computed from an activation
    (``core.trace.activations``; an equation with a body counts as one op) is CONST:
    constant-folded at export. EPILOGUE marks the activations a linear op's epilogue
    (bias, BatchNorm, activation function) may still fuse into."""
    acts = activations(jaxpr, [v for v, s in zip(jaxpr.invars, in_states) if s != CONST])
    epilogue = {v for v, s in zip(jaxpr.invars, in_states) if s == EPILOGUE}

    def read(v):
        if not isinstance(v, jcore.Var) or v not in acts:
            return CONST
        return EPILOGUE if v in epilogue else ACT

    for eqn in jaxpr.eqns:
        states = [read(v) for v in eqn.invars]
        if all(s == CONST for s in states):
            continue
        body = BODIES[eqn.primitive](eqn) if eqn.primitive in BODIES else None
        if body is not None and len(body.invars) == len(states):
            outs = _walk(body, states, ops)
        elif eqn.primitive in FREE:
            outs = [EPILOGUE if EPILOGUE in states else ACT] * len(eqn.outvars)
        else:
            rule = OP_RULES.get(eqn.primitive, _elementwise_op)
            new_ops, out_state = rule(eqn, states)
            ops.extend(new_ops)
            outs = [out_state] * len(eqn.outvars)
        epilogue.update(v for v, s in zip(eqn.outvars, outs) if s == EPILOGUE)
    return [read(v) for v in jaxpr.outvars]


def extract_ops(fn, variables, *inputs) -> List[OpRecord]:
    """The ops of ``fn(variables, *inputs)`` in program order (at the inputs' batch size)."""
    traced = flatten(fn, variables, *inputs)
    ops: List[OpRecord] = []
    _walk(traced.jaxpr, [CONST if p else ACT for p in traced.is_param], ops)
    return ops


# ---------------------------------------------------------------- grid interpolation

def channel_grid(limit: int, include_limit: bool = False) -> List[int]:
    """Channel counts measured for interpolation: 1, every multiple of 8 up to 64, then
    multiples of 16 up to 128, 32 up to 256, 64 beyond, up to the first point >= ``limit``
    (or, with ``include_limit``, the points below ``limit`` and ``limit`` itself: the full
    width of a layer is then exact)."""
    points, c = [1], 8
    while points[-1] < limit:
        points.append(c)
        c += 8 if c < 64 else 16 if c < 128 else 32 if c < 256 else 64
    if include_limit:
        points = [p for p in points if p < limit] + [int(limit)]
    return points


def _bracket(grid: Sequence[int], value: float):
    grid = np.asarray(grid, np.float64)
    if len(grid) == 1:
        return 0, 0, 0.0
    i = int(np.clip(np.searchsorted(grid, value, side="right") - 1, 0, len(grid) - 2))
    t = (value - grid[i]) / (grid[i + 1] - grid[i])
    return i, i + 1, float(t)


def with_channels(op: OpRecord, values: Dict[str, int]) -> OpSignature:
    """``op``'s signature with the channel counts in ``values`` (a depthwise conv keeps
    cin = cout = groups)."""
    params = dict(values)
    if "groups" in op.channel_axes:
        params["groups"] = params["cin"] = params["cout"] = values.get("cin", values.get(
            "cout"))
    return op.sig.replace(**params)


def independent_channel_axes(op: OpRecord) -> List[str]:
    """Independent channel axes (a depthwise conv has one: cin = cout = groups)."""
    return ["cin"] if "groups" in op.channel_axes else list(op.channel_axes)


# ---------------------------------------------------------------- calibration and model

@dataclasses.dataclass
class Calibration:
    """``latency = c0 + c1 * sum(linear) + c2 * sum(other) + c3 * n_ops`` (ms)."""
    coef: Tuple[float, float, float, float] = (0.0, 1.0, 1.0, 0.0)

    def __call__(self, features):
        c = self.coef
        return c[0] + c[1] * features[0] + c[2] * features[1] + c[3] * features[2]

    @classmethod
    def fit(cls, features: np.ndarray, measured_ms: np.ndarray) -> "Calibration":
        """Least squares in relative error (each model weighs the same, small or large)."""
        X = np.column_stack([np.ones(len(features)), np.asarray(features, np.float64)])
        y = np.asarray(measured_ms, np.float64)
        w = 1.0 / y
        coef, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
        return cls(tuple(float(c) for c in coef))


class LatencyModel:
    def __init__(self, table: LatencyTable, calibration: Optional[Calibration] = None,
                 mode: str = "exact", statistic: str = "median_ms"):
        if mode not in ("exact", "grid"):
            raise ValueError(f"mode must be 'exact' or 'grid', not {mode!r}")
        self.table, self.mode, self.statistic = table, mode, statistic
        self.calibration = calibration or Calibration()

    # -- per op
    def op_latency(self, op: OpRecord) -> float:
        if self.mode == "exact" or not op.channel_axes:
            return self.table.lookup(op.sig, self.statistic)
        axes = independent_channel_axes(op)
        current = {a: op.sig.get(a) for a in axes}
        brackets = []
        for a in axes:
            grid = channel_grid(max(current[a], 1))
            lo, hi, t = _bracket(grid, current[a])
            brackets.append((grid[lo], grid[hi], t))
        total = 0.0
        for corner in np.ndindex(*([2] * len(axes))):
            weight, values = 1.0, {}
            for a, (lo, hi, t), bit in zip(axes, brackets, corner):
                weight *= t if bit else 1 - t
                values[a] = hi if bit else lo
            if weight:
                total += weight * self.table.lookup(with_channels(op, values), self.statistic)
        return total

    def features(self, ops: Sequence[OpRecord]) -> np.ndarray:
        self.table.build([op.sig for op in ops if self.mode == "exact" or not op.channel_axes])
        lat = np.array([self.op_latency(op) for op in ops])
        linear = np.array([op.linear for op in ops], bool)
        return np.array([lat[linear].sum(), lat[~linear].sum(), len(ops)])

    def predict_ops(self, ops: Sequence[OpRecord]) -> float:
        return float(self.calibration(self.features(ops)))

    def predict(self, fn, variables, *inputs) -> float:
        """Predicted latency (ms) of ``fn(variables, *inputs)`` on the table's device."""
        return self.predict_ops(extract_ops(fn, variables, *inputs))

    # -- differentiable in kept channels per group
    def differentiable(self, fn, variables, *inputs):
        """``latency(sizes)``: a JAX function of kept channels per group (array over
        ``core.cost`` groups, or a dict ``{group_id: size}``; missing groups stay full).
        Returns ``(latency_fn, cost_model)``; grid points are measured now."""
        from core import cost as cost_lib
        report = cost_lib.count(fn, variables, *inputs)
        model = report.cost_model()
        full = np.array([g.size for g in model.groups], np.float64)
        ops = extract_ops(fn, variables, *inputs)
        matmuls = report.matmuls()
        linear_ops = [op for op in ops if op.primitive in P.LINEAR]
        if len(matmuls) != len(linear_ops):
            raise ValueError(f"{len(matmuls)} matmul equations in core.cost but "
                             f"{len(linear_ops)} linear ops found")
        groups_of = {id(op): (m.in_groups, m.out_groups) for op, m in zip(linear_ops, matmuls)}
        terms, fixed_linear, fixed_other = [], 0.0, 0.0
        for op in ops:
            in_g, out_g = groups_of.get(id(op), ((), ()))
            axes = independent_channel_axes(op) if op.channel_axes else []
            slots = {"cin": in_g, "k": in_g, "cout": out_g, "n": out_g}
            axis_groups = [(a, slots.get(a, ())) for a in axes]
            axis_groups = [(a, g) for a, g in axis_groups if g]
            if not axis_groups:
                lat = self.table.lookup(op.sig, self.statistic)
                fixed_linear += lat if op.linear else 0.0
                fixed_other += 0.0 if op.linear else lat
                continue
            terms.append(self._grid_term(op, axis_groups, full))
        c = self.calibration.coef
        n_ops = len(ops)

        def latency(sizes):
            s = model.sizes_array(sizes)
            linear = fixed_linear + sum(term(s) for term in terms)
            return c[0] + c[1] * linear + c[2] * fixed_other + c[3] * n_ops

        return latency, model

    def _grid_term(self, op: OpRecord, axis_groups, full):
        """Bilinear (or linear) interpolation of one op's latency over its channel grid."""
        axes = [a for a, _ in axis_groups]
        grids = [channel_grid(op.sig.get(a), include_limit=True) for a in axes]
        values = np.zeros([len(g) for g in grids])
        for index in np.ndindex(*values.shape):
            channels = {a: grid[i] for a, grid, i in zip(axes, grids, index)}
            values[index] = self.table.lookup(with_channels(op, channels), self.statistic)
        # The value interpolates the fine grid; the gradient comes from a coarse grid (the
        # ends and the middle point): measured latencies are often flat between neighbouring
        # points near full width (kernels work in channel blocks), and a zero slope there
        # would never push a gate although halving the layer does save time.
        coarse = [sorted({0, len(g) // 2, len(g) - 1}) for g in grids]
        coarse_values = jnp.asarray(values[np.ix_(*coarse)], jnp.float32)
        coarse_grids = [np.asarray(g)[c] for g, c in zip(grids, coarse)]
        values = jnp.asarray(values, jnp.float32)
        offsets = [op.sig.get(a) - sum(full[g] for g in gs) for a, gs in axis_groups]
        group_ids = [list(gs) for _, gs in axis_groups]

        def interpolate(table, grid_list, s):
            for grid, gids, offset in zip(grid_list, group_ids, offsets):
                count = offset + sum(s[g] for g in gids)
                table = _interp_axis(table, jnp.asarray(grid, jnp.float32), count, 0)
            return table

        def term(s):
            slope_source = interpolate(coarse_values, coarse_grids, s)
            exact = interpolate(values, grids, s)
            return slope_source + jax.lax.stop_gradient(exact - slope_source)
        return term


def _interp_axis(table, grid, x, dim):
    """Linear interpolation of ``table`` along axis ``dim`` at ``x`` (clamped to the grid);
    the axis is contracted away."""
    if grid.shape[0] == 1:
        return jnp.take(table, 0, axis=dim)
    x = jnp.clip(x, grid[0], grid[-1])
    i = jnp.clip(jnp.searchsorted(grid, x, side="right") - 1, 0, grid.shape[0] - 2)
    t = (x - grid[i]) / (grid[i + 1] - grid[i])
    lo, hi = jnp.take(table, i, axis=dim), jnp.take(table, i + 1, axis=dim)
    return lo * (1 - t) + hi * t
