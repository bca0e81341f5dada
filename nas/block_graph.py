"""A block as a graph of ops, read from its jaxpr, as a jraph ``GraphsTuple``.

Predictors must compare blocks of any type (a ResNet block cut from the teacher, an inverted
residual, a mixer), so a block is described by what it computes, not by the name of its
builder: every equation that touches an activation is a node, data flow between them are
edges, and the block input is one more node. Parameter-only computations (BatchNorm's
``rsqrt(var + eps)``) are constants at inference and are not nodes. Activation functions
that JAX wraps in a named call (``relu``, ``relu6``, ``silu``, ``hard_silu``,
``hard_sigmoid``) are one node each; other calls are entered.

Node features: a one-hot of the op kind (``kind_of``, a table keyed by primitive), then
log2 of input and output channels, kernel size, stride, log2 of the output's spatial size
and a depthwise flag, all scaled to about [0, 1].

Graph-level features (``globals``, ``BLOCK_FEATURES``): the block's measured quality (its
distillation NSR) and its position in the network, scaled to [0, 1]. ``block_graph`` leaves
them zero; ``with_block_features`` sets them for a (position, option) of the search space.
Without them, an option's graph is the same at every position of equal shape and two options
of equal structure but unequal training look identical: the GNN could only learn a per-slot
identity, a one-hot model in disguise.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from jax.extend import core as jcore

from core import primitives as P, trace as trace_lib

NAMED_ACTIVATIONS = {"relu": "relu", "relu6": "relu6", "silu": "silu", "hard_silu": "hardswish",
                     "hard_swish": "hardswish", "hard_sigmoid": "sigmoid", "gelu": "gelu",
                     "sigmoid": "sigmoid"}
OP_KINDS = ("input", "conv", "dwconv", "dense", "matmul", "add", "mul", "sub", "div", "max",
            "min", "reduce", "pool", "layout", "concat", "relu", "relu6", "hardswish", "silu",
            "gelu", "sigmoid", "tanh", "norm", "other")


def _conv_kind(eqn) -> str:
    return "dwconv" if eqn.params.get("feature_group_count", 1) > 1 else "conv"


# Primitive (or category) -> op kind, or a function of the equation giving it. A dot is
# "dense", refined to "matmul" by the walk when both operands are activations.
KIND_OF_PRIMITIVE = P.rule_table({
    P.conv_general_dilated_p: _conv_kind, P.dot_general_p: "dense",
    frozenset({P.add_p, P.add_jaxvals_p}): "add", P.sub_p: "sub", P.div_p: "div",
    frozenset({P.mul_p, P.integer_pow_p, P.square_p}): "mul", P.max_p: "max", P.min_p: "min",
    frozenset({P.reduce_sum_p, P.reduce_max_p, P.reduce_min_p, P.argmax_p}): "reduce",
    frozenset({P.reduce_window_sum_p, P.reduce_window_max_p, P.reduce_window_p}): "pool",
    P.LAYOUT | {P.slice_p, P.dynamic_slice_p, P.pad_p, P.convert_element_type_p}: "layout",
    P.concatenate_p: "concat", P.logistic_p: "sigmoid", frozenset({P.tanh_p, P.erf_p}): "tanh",
    frozenset({P.rsqrt_p, P.sqrt_p}): "norm", P.clamp_p: "relu6", P.exp_p: "other",
})
NUM_NUMERIC = 6
NODE_FEATURES = len(OP_KINDS) + NUM_NUMERIC
BLOCK_FEATURES = ("nsr", "position")


def kind_of(eqn) -> str:
    kind = KIND_OF_PRIMITIVE.get(eqn.primitive, "other")
    return kind(eqn) if callable(kind) else kind


def _activation_name(eqn) -> Optional[str]:
    name = eqn.params.get("name")
    if eqn.primitive is P.jit_p and name in NAMED_ACTIVATIONS:
        return NAMED_ACTIVATIONS[name]
    sub = trace_lib.call_jaxpr(eqn)
    if eqn.primitive is P.custom_jvp_call_p and sub is not None and len(sub.jaxpr.eqns) == 1:
        return _activation_name(sub.jaxpr.eqns[0])
    return None


def _numeric(eqn, kind: str) -> List[float]:
    out_shape = trace_lib.shape_of(eqn.outvars[0]) if eqn.outvars else ()
    in_shape = trace_lib.shape_of(eqn.invars[0]) if eqn.invars else ()
    cin = in_shape[-1] if in_shape else 1
    cout = out_shape[-1] if out_shape else 1
    kernel, stride, depthwise = 1, 1, 0.0
    if eqn.primitive is P.conv_general_dilated_p:
        rhs = trace_lib.shape_of(eqn.invars[1])
        rhs_spec = eqn.params["dimension_numbers"][1]
        kernel = rhs[rhs_spec[2]]
        stride = eqn.params["window_strides"][0]
        depthwise = float(eqn.params.get("feature_group_count", 1) > 1)
    spatial = out_shape[1] * out_shape[2] if len(out_shape) == 4 else 1
    return [np.log2(1 + cin) / 10, np.log2(1 + cout) / 10, kernel / 7, stride / 2,
            np.log2(1 + spatial) / 12, depthwise]


class _GraphBuilder:
    def __init__(self):
        self.kinds: List[str] = []
        self.numeric: List[List[float]] = []
        self.senders: List[int] = []
        self.receivers: List[int] = []

    def node(self, kind, numeric, sources):
        index = len(self.kinds)
        self.kinds.append(kind)
        self.numeric.append(numeric)
        for s in dict.fromkeys(sources):
            self.senders.append(s)
            self.receivers.append(index)
        return index

    def walk(self, jaxpr: jcore.Jaxpr, in_nodes: Sequence[Optional[int]]):
        env: Dict[jcore.Var, int] = {v: n for v, n in zip(jaxpr.invars, in_nodes)
                                     if n is not None}
        for eqn in jaxpr.eqns:
            sources = [env[v] for v in eqn.invars if isinstance(v, jcore.Var) and v in env]
            if not sources:
                continue                          # parameter-only: a constant at inference
            activation = _activation_name(eqn)
            sub = trace_lib.call_jaxpr(eqn)
            if activation is None and sub is not None:
                inner = [env.get(v) if isinstance(v, jcore.Var) else None for v in eqn.invars]
                outs = self.walk(sub.jaxpr, inner)
                for v, n in zip(eqn.outvars, outs):
                    if n is not None:
                        env[v] = n
                continue
            kind = activation or kind_of(eqn)
            if kind == "dense" and len(sources) == 2:
                kind = "matmul"
            n = self.node(kind, _numeric(eqn, kind), sources)
            for v in eqn.outvars:
                env[v] = n
        return [env.get(v) if isinstance(v, jcore.Var) else None for v in jaxpr.outvars]


def block_graph(fn, variables, x) -> jraph.GraphsTuple:
    """The op graph of ``fn(variables, x)`` (one input activation) as a GraphsTuple."""
    traced = trace_lib.trace(fn, variables, x)
    builder = _GraphBuilder()
    x_shape = tuple(np.shape(x))
    inputs = [builder.node("input", [0, np.log2(1 + x_shape[-1]) / 10, 0, 0,
                                     np.log2(1 + (x_shape[1] * x_shape[2] if len(x_shape) == 4
                                                  else 1)) / 12, 0], [])
              if not p else None for p in traced.is_param]
    builder.walk(traced.jaxpr, inputs)
    onehot = np.zeros((len(builder.kinds), len(OP_KINDS)), np.float32)
    onehot[np.arange(len(builder.kinds)), [OP_KINDS.index(k) for k in builder.kinds]] = 1
    nodes = np.concatenate([onehot, np.asarray(builder.numeric, np.float32)], 1)
    return jraph.GraphsTuple(
        nodes=nodes, edges=np.ones((len(builder.senders), 1), np.float32),
        senders=np.asarray(builder.senders, np.int32),
        receivers=np.asarray(builder.receivers, np.int32),
        n_node=np.asarray([len(builder.kinds)], np.int32),
        n_edge=np.asarray([len(builder.senders)], np.int32),
        globals=np.zeros((1, len(BLOCK_FEATURES)), np.float32))


def with_block_features(graph: jraph.GraphsTuple, nsr: float, position: int,
                        n_positions: int) -> jraph.GraphsTuple:
    """``graph`` (one block) with its measured NSR and its position (0 first, 1 last) as the
    graph-level features the GNN reads beside the pooled node states."""
    place = position / max(1, n_positions - 1)
    return graph._replace(globals=np.asarray([[nsr, place]], np.float32))


def node_kinds(graph: jraph.GraphsTuple) -> List[str]:
    return [OP_KINDS[i] for i in np.argmax(np.asarray(graph.nodes)[:, :len(OP_KINDS)], 1)]


def batch_graphs(graphs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """One GraphsTuple holding all graphs (numpy, so the batch is built once)."""
    return jax.tree.map(np.asarray, jraph.batch_np(list(graphs)))


__all__ = ["block_graph", "batch_graphs", "node_kinds", "kind_of", "with_block_features",
           "OP_KINDS", "NODE_FEATURES", "BLOCK_FEATURES"]
