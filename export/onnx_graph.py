"""A mutable view of an ONNX graph for the clean-up passes: nodes in a list, constants as
numpy arrays, the rank of every value (from onnx shape inference where it succeeds), and the
edits the passes share (fresh names, rewiring uses, dead-node removal, topological order).

A node with subgraphs (If branches, Loop / Scan bodies) also reads, by name, the outer values
its subgraphs use without defining them; ``reads`` counts those as its inputs, so dead-code
removal keeps them and the topological order puts their producers first.
"""
from typing import Dict, List

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference


def _subgraphs(node) -> List[onnx.GraphProto]:
    return [g for a in node.attribute
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def outer_reads(node) -> List[str]:
    """Names the subgraphs of ``node`` read from the enclosing scope."""
    names: List[str] = []
    for g in _subgraphs(node):
        defined = ({i.name for i in g.input} | {i.name for i in g.initializer}
                   | {o for n in g.node for o in n.output})
        names += [name for n in g.node for name in reads(n) if name and name not in defined]
        names += [o.name for o in g.output if o.name not in defined]
    return names


def reads(node) -> List[str]:
    """The values ``node`` reads: its inputs and its subgraphs' outer-scope reads."""
    return list(node.input) + outer_reads(node)


def _rename_in_subgraphs(node, old: str, new: str):
    for g in _subgraphs(node):
        defined = {i.name for i in g.input} | {i.name for i in g.initializer}
        if old in defined or any(old in n.output for n in g.node):
            continue                  # shadowed inside: not the outer value
        for inner in g.node:
            for i, name in enumerate(inner.input):
                if name == old:
                    inner.input[i] = new
            _rename_in_subgraphs(inner, old, new)
        for out in g.output:          # subgraph outputs are positional: rename freely
            if out.name == old:
                out.name = new


class Graph:
    """A mutable view of an ONNX graph: node list, constants as numpy, ranks of values."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.nodes: List[onnx.NodeProto] = list(graph.node)
        self.consts: Dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.outputs = [o.name for o in graph.output]
        self.ranks: Dict[str, int] = {}
        try:
            inferred = shape_inference.infer_shapes(model).graph
            values = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
        except Exception:  # shape inference is a help, not a requirement
            values = list(graph.value_info) + list(graph.input) + list(graph.output)
        for value in values:
            if value.type.tensor_type.HasField("shape"):
                self.ranks[value.name] = len(value.type.tensor_type.shape.dim)
        for name, array in self.consts.items():
            self.ranks[name] = array.ndim
        self._counter = 0

    def fresh(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}__opt{self._counter}"

    def add_const(self, stem: str, array: np.ndarray) -> str:
        name = self.fresh(stem)
        self.consts[name] = np.asarray(array)
        self.ranks[name] = np.ndim(array)
        return name

    def consumers(self) -> Dict[str, List[onnx.NodeProto]]:
        uses: Dict[str, List[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in reads(node):
                uses.setdefault(name, []).append(node)
        return uses

    def producer(self) -> Dict[str, onnx.NodeProto]:
        return {out: node for node in self.nodes for out in node.output}

    def rename_uses(self, old: str, new: str):
        """Make every consumer of ``old`` read ``new``; graph outputs keep their name."""
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            _rename_in_subgraphs(node, old, new)
        if old in self.outputs:
            self.nodes.append(helper.make_node("Identity", [new], [old]))

    def remove_dead(self):
        while True:
            used = set(self.outputs)
            for node in self.nodes:
                used.update(reads(node))
            alive = [n for n in self.nodes if any(o in used for o in n.output)]
            if len(alive) == len(self.nodes):
                break
            self.nodes = alive
        self.consts = {k: v for k, v in self.consts.items() if k in used}

    def toposort(self):
        known = set(self.consts) | {i.name for i in self.model.graph.input} | {""}
        ordered, pending = [], list(self.nodes)
        while pending:
            ready = [n for n in pending if all(i in known for i in reads(n))]
            if not ready:
                raise ValueError("graph has a cycle or an undefined input")
            for node in ready:
                known.update(node.output)
            ordered.extend(ready)
            ready_ids = {id(n) for n in ready}
            pending = [n for n in pending if id(n) not in ready_ids]
        self.nodes = ordered

    def to_model(self) -> onnx.ModelProto:
        self.remove_dead()
        self.toposort()
        graph = self.model.graph
        new_graph = helper.make_graph(
            self.nodes, graph.name, list(graph.input), list(graph.output),
            [numpy_helper.from_array(np.asarray(v), k) for k, v in self.consts.items()])
        model = helper.make_model(new_graph, opset_imports=list(self.model.opset_import),
                                  producer_name=self.model.producer_name)
        model.ir_version = self.model.ir_version
        return model


def attr(node, name, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def set_attr(node, name, value):
    for i, attribute in enumerate(node.attribute):
        if attribute.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))
