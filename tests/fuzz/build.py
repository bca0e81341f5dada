"""A generated architecture as data, and the JAX models made from it.

``Arch`` is a small program: inputs, nodes (an op from ``tests.fuzz.ops``, its operands,
attributes and parameter declarations) and outputs, with every channel axis named by a
``tests.fuzz.layouts`` layout. From it:

- ``model(arch)``: the model under test, ``fn(variables, *inputs)`` at full width: plain
  jax.numpy, or a Flax linen module whose layers are linen's own where ``ops.LINEN`` has one;
- ``init_variables`` / ``example_inputs``: random parameters (numpy, fan-in scaled) and inputs;
- ``narrow(arch, variables, keep)``: the independent reference for a keep-set: each parameter
  sliced by the fuzzer's own layouts (``layouts.kept_positions``), and the same architecture
  rebuilt in plain jax.numpy at the kept channel counts.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tests.fuzz import layouts as L
from tests.fuzz import ops

Ref = Tuple[int, int]                # (node index, output index); node -1 = model inputs


@dataclasses.dataclass
class Param:
    layouts: Tuple[L.Layout, ...]
    init: str = "kernel"             # kernel | bias | scale | var | table
    fan_in: int = 1
    collection: str = "params"


@dataclasses.dataclass
class Node:
    op: str
    ins: Tuple[Ref, ...]
    attrs: Dict[str, Any]
    params: Dict[str, Param]
    outs: Tuple[L.Layout, ...]        # channel (last) axis of each result
    linen: bool = False               # rendered by a linen layer in a linen model
    shared: Dict[str, str] = dataclasses.field(default_factory=dict)  # pname -> other path

    @property
    def name(self) -> str:
        return f"{self.op}{self.index}"

    index: int = -1


@dataclasses.dataclass
class Input:
    kind: str                        # image | seq | tokens
    shape: Tuple[int, ...]           # without the batch axis
    layout: L.Layout                 # channel axis (Const for images / sequences)
    vocab: int = 0


@dataclasses.dataclass
class Arch:
    inputs: List[Input]
    input_style: str                 # args | dict | tuple: how inputs are passed
    nodes: List[Node]
    outputs: Dict[str, Ref]          # name -> value; one entry: a single array
    output_style: str                # single | tuple | dict
    dtype: str                       # float32 | bfloat16
    backend: str                     # jnp | linen
    syms: List[L.Sym]
    batch: int = 2
    seed: int = 0
    tags: Tuple[str, ...] = ()       # features used (for reports and known-issue filters)

    def summary(self) -> str:
        lines = [f"Arch(dtype={self.dtype}, backend={self.backend}, inputs="
                 f"{[(i.kind, i.shape) for i in self.inputs]} as {self.input_style}, "
                 f"outputs as {self.output_style})"]
        for n in self.nodes:
            attrs = {k: v for k, v in n.attrs.items()}
            lines.append(f"  {n.index}: {n.op}{' [linen]' if n.linen else ''} ins={list(n.ins)} "
                         f"out={L.describe(n.outs)} {attrs}")
        lines.append(f"  outputs={self.outputs}")
        return "\n".join(lines)


# ----------------------------------------------------------------------- parameters
def param_paths(arch: Arch) -> Dict[str, Tuple[Node, str, Param]]:
    out = {}
    for node in arch.nodes:
        for pname, spec in node.params.items():
            out[f"{spec.collection}/{node.name}/{pname}"] = (node, pname, spec)
    return out


def _nest(flat: Dict[str, Any]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    return tree


def _draw(rng, spec: Param, shape):
    if spec.init == "kernel":
        return rng.normal(size=shape) / np.sqrt(max(spec.fan_in, 1))
    if spec.init == "bias":
        return 0.1 * rng.normal(size=shape)
    if spec.init == "scale":
        return 1.0 + 0.2 * rng.normal(size=shape)
    if spec.init == "var":
        return rng.uniform(0.5, 1.5, size=shape)
    if spec.init == "table":
        return rng.normal(size=shape)
    raise ValueError(spec.init)


def init_variables(arch: Arch, seed: Optional[int] = None) -> dict:
    rng = np.random.default_rng(arch.seed if seed is None else seed)
    flat = {}
    for path, (_, _, spec) in param_paths(arch).items():
        shape = tuple(L.size(t) for t in spec.layouts)
        flat[path] = jnp.asarray(_draw(rng, spec, shape), arch.dtype)
    return _nest(flat)


def flat_variables(variables) -> Dict[str, Any]:
    from core.trace import path_to_str
    return {path_to_str(p): leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def example_inputs(arch: Arch, seed: Optional[int] = None) -> list:
    """The model's positional inputs (a dict or tuple when ``input_style`` says so)."""
    rng = np.random.default_rng(1000 + (arch.seed if seed is None else seed))
    leaves = []
    for inp in arch.inputs:
        shape = (arch.batch,) + inp.shape
        if inp.kind == "tokens":
            leaves.append(jnp.asarray(rng.integers(0, inp.vocab, size=shape), jnp.int32))
        else:
            leaves.append(jnp.asarray(rng.normal(size=shape), arch.dtype))
    return pack_inputs(arch, leaves)


def pack_inputs(arch: Arch, leaves: list) -> list:
    if arch.input_style == "dict":
        return [{f"in{k}_{i.kind}": x for k, (i, x) in enumerate(zip(arch.inputs, leaves))}]
    if arch.input_style == "tuple":
        return [tuple(leaves)]
    return list(leaves)


def unpack_inputs(arch: Arch, inputs) -> list:
    if arch.input_style == "dict":
        d = inputs[0]
        return [d[f"in{k}_{i.kind}"] for k, i in enumerate(arch.inputs)]
    if arch.input_style == "tuple":
        return list(inputs[0])
    return list(inputs)


# -------------------------------------------------------------------------- running
def _node_params(flat: Dict[str, Any], node: Node) -> Dict[str, Any]:
    p = {pname: flat[f"{spec.collection}/{node.name}/{pname}"]
         for pname, spec in node.params.items()}
    p.update({pname: flat[path] for pname, path in node.shared.items()})
    return p


def _outputs(arch: Arch, values):
    outs = {name: values[ref] for name, ref in arch.outputs.items()}
    if arch.output_style == "single":
        return next(iter(outs.values()))
    if arch.output_style == "tuple":
        return tuple(outs.values())
    return outs


def _run(arch: Arch, flat: Dict[str, Any], inputs, S, render=None):
    values = {(-1, k): x for k, x in enumerate(unpack_inputs(arch, inputs))}
    for node in arch.nodes:
        ins = [values[r] for r in node.ins]
        outs = render(node, ins) if render is not None else None
        if outs is None:
            outs = ops.run_node(node, _node_params(flat, node), ins, S)
        for k, v in enumerate(outs):
            values[(node.index, k)] = v
    return _outputs(arch, values)


def plain_model(arch: Arch, sizes: Optional[L.Sizes] = None):
    """``fn(variables, *inputs)`` in plain jax.numpy at channel counts ``sizes``."""
    S = lambda layout: L.size(layout, sizes)

    def fn(variables, *inputs):
        return _run(arch, flat_variables(variables), inputs, S)
    return fn


class _Holder(nn.Module):
    """Declares one plain op's parameters inside a linen model (same paths as plain)."""
    specs: Tuple[Tuple[str, str, Tuple[int, ...]], ...]

    @nn.compact
    def __call__(self):
        out = {}
        for pname, collection, shape in self.specs:
            if collection == "params":
                out[pname] = self.param(pname, nn.initializers.zeros, shape)
            else:
                out[pname] = self.variable(collection, pname, jnp.zeros, shape).value
        return out


class LinenArch(nn.Module):
    arch: Any

    @nn.compact
    def __call__(self, *inputs):
        arch = self.arch
        S = lambda layout: L.size(layout)

        def render(node, ins):
            if node.linen and node.op in ops.LINEN:
                out = ops.LINEN[node.op](node, ins, S, node.name)
                if out is not None:
                    return out
            specs = tuple((pname.replace("/", "."), spec.collection,
                           tuple(L.size(t) for t in spec.layouts))
                          for pname, spec in node.params.items())
            held = _Holder(specs, name=node.name)() if specs else {}
            p = {k.replace(".", "/"): v for k, v in held.items()}
            return ops.run_node(node, p, ins, S)

        return _run(arch, {}, inputs, S, render)


def model(arch: Arch):
    """The model under test at full width."""
    if arch.backend == "jnp":
        return plain_model(arch)
    module = LinenArch(arch)
    return lambda variables, *inputs: module.apply(variables, *inputs)


# ------------------------------------------------------------------- narrow reference
def narrow(arch: Arch, variables, keep: Dict[int, np.ndarray]):
    """``(fn, variables)`` of the architecture rebuilt with symbol ``s`` keeping channels
    ``keep[s]`` (by the fuzzer's own layouts, not the library's groups)."""
    flat = flat_variables(variables)
    paths = param_paths(arch)
    small = {}
    for path, value in flat.items():
        _, _, spec = paths[path]
        arr = np.asarray(value)
        for axis, layout in enumerate(spec.layouts):
            arr = np.take(arr, L.kept_positions(layout, keep), axis=axis)
        small[path] = jnp.asarray(arr, value.dtype)
    sizes = {s.id: len(k) for s, k in ((s, keep[s.id]) for s in arch.syms if s.id in keep)}
    return plain_model(arch, sizes), _nest(small)
