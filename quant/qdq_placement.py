"""Quantization points only where the runner has an integer kernel to use them.

Why: a QuantizeLinear/DequantizeLinear pair pays only when the runtime fuses it into an
integer kernel (onnxruntime: QLinearConv, QLinearMatMul, MatMulIntegerToFloat, QLinearAdd,
...). Around an op that runs in float anyway (an Einsum, LayerNorm's reductions, GELU,
softmax) it is two extra passes over the tensor and a rounding error for nothing. In the
Fashion-MNIST ViT of the zoo, 62 of the 145 QuantizeLinear nodes written fed only float
ops, and int8 ran at 0.57x of float at batch 1 (benchmarks/results/quant.md, before).

The profile of the runner names, per ONNX op type, when that op runs an integer kernel
(``integer_kernels`` in quant/profiles/*.json), as one of the ``RULES`` below. A pair is
kept when at least one reader of its dequantized tensor is such an op with its pattern
complete; otherwise the pair is removed and its readers read the float tensor. Removing a
pair can break the pattern of the op that produced it (an Add whose output is no longer
requantized runs in float), so the removal repeats until nothing changes. Weights stay
int8 initializers behind DequantizeLinear (onnxruntime folds those).
"""
import collections
from typing import Callable, Dict, List, Tuple

import onnx


class _View:
    """Producers and readers of every tensor of ``graph``, for the rules; ``absorbed``:
    the op types the runner folds into the QuantizeLinear after them."""

    def __init__(self, graph, absorbed=frozenset()):
        self.absorbed = absorbed
        self.readers = collections.defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.readers[name].append(node)
        self.producer = {out: node for node in graph.node for out in node.output}
        self.outputs = {o.name for o in graph.output}

    def dequantized(self, tensor: str) -> bool:
        node = self.producer.get(tensor)
        return node is not None and node.op_type == "DequantizeLinear"

    def requantized(self, tensor: str) -> bool:
        """Every reader quantizes ``tensor``, directly or through an absorbed op (a Relu
        between a Conv and its QuantizeLinear still makes a QLinearConv)."""
        readers = self.readers[tensor]
        return bool(readers) and tensor not in self.outputs and all(
            r.op_type == "QuantizeLinear" or
            (r.op_type in self.absorbed and self.requantized(r.output[0])) for r in readers)

    def computed_by(self, tensor: str):
        """The node that computes ``tensor``, looking back through absorbed ops."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in self.absorbed:
            node = self.producer.get(node.input[0])
        return node


def _inputs_dequantized(node, view: _View) -> bool:
    """MatMul / Gemm: an integer kernel whenever both operands are dequantized; the output
    may stay float (MatMulIntegerToFloat) or be requantized (QLinearMatMul, QGemm)."""
    return all(view.dequantized(name) for name in node.input[:2])


def _wrapped(node, view: _View) -> bool:
    """Conv, Add, Mul, Concat, pooling...: every data input dequantized and the output
    requantized (QLinearConv, QLinearAdd, ...)."""
    data = [name for name in node.input if name and not _is_parameter(name, view)]
    return all(view.dequantized(name) for name in data) and view.requantized(node.output[0])


def _moved_in_integer(node, view: _View) -> bool:
    """Transpose, Reshape, ...: onnxruntime drops the pair around them and moves the int8
    tensor when both sides are quantized."""
    return view.dequantized(node.input[0]) and view.requantized(node.output[0])


def _is_parameter(name: str, view: _View) -> bool:
    """A Conv/Gemm weight or bias read through DequantizeLinear of an initializer counts as
    dequantized; one without a producer (a plain initializer) is not data."""
    return name not in view.producer


def _inputs_then_output(node, view: _View) -> bool:
    """Conv: as ``wrapped`` (QLinearConv needs its output requantized), and the pair on its
    output is kept whenever its inputs are dequantized, even if no integer kernel reads
    it: a float Conv costs more than the QuantizeLinear/DequantizeLinear that spares it
    (``KEEPS_OUTPUT_PAIR``)."""
    return _wrapped(node, view)


def _absorbed_by_quantize(node, view: _View) -> bool:
    """Relu, Clip: onnxruntime removes them when a QuantizeLinear follows (its range
    already clips), so they never need a pair of their own."""
    return False


RULES: Dict[str, Callable] = {
    "inputs_dequantized": _inputs_dequantized,
    "wrapped": _wrapped,
    "inputs_then_output": _inputs_then_output,
    "moved_in_integer": _moved_in_integer,
    "absorbed_by_quantize": _absorbed_by_quantize,
}
KEEPS_OUTPUT_PAIR = {"inputs_then_output"}
ABSORBED = "absorbed_by_quantize"


def _pays(node, kernels: Dict[str, str], view: _View) -> bool:
    rule = kernels.get(node.op_type)
    return rule is not None and RULES[rule](node, view)


def drop_unpaid(model: onnx.ModelProto, kernels: Dict[str, str]
                ) -> Tuple[onnx.ModelProto, List[str]]:
    """``model`` (modified in place) without the activation QuantizeLinear/DequantizeLinear
    pairs no integer kernel reads, and the tensors whose pairs were removed.

    ``kernels``: ONNX op type -> a rule name of ``RULES`` (the profile's
    ``integer_kernels``). Raises on an unknown rule name."""
    unknown = sorted(set(kernels.values()) - set(RULES))
    if unknown:
        raise ValueError(f"integer_kernels names unknown rules {unknown}; known: "
                         f"{sorted(RULES)}")
    graph = model.graph
    removed: List[str] = []
    absorbed = frozenset(op for op, rule in kernels.items() if rule == ABSORBED)
    while True:
        view = _View(graph, absorbed)
        dropped = _unpaid_pairs(graph, view, kernels)
        if not dropped:
            return model, removed
        for quantize, dequantizes in dropped:
            source = quantize.input[0]
            for dq in dequantizes:
                for reader in view.readers[dq.output[0]]:
                    for k, name in enumerate(reader.input):
                        if name == dq.output[0]:
                            reader.input[k] = source
                graph.node.remove(dq)
            graph.node.remove(quantize)
            removed.append(source)


def _unpaid_pairs(graph, view: _View, kernels) -> List[Tuple]:
    """Every (QuantizeLinear, its DequantizeLinears) whose dequantized tensors feed no
    integer kernel and no graph output."""
    found: List[Tuple] = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        dequantizes = view.readers[node.output[0]]
        if not dequantizes or any(d.op_type != "DequantizeLinear" for d in dequantizes):
            continue
        if any(d.output[0] in view.outputs for d in dequantizes):
            continue
        if any(_pays(reader, kernels, view)
               for d in dequantizes for reader in view.readers[d.output[0]]):
            continue
        producer = view.computed_by(node.input[0])
        if producer is not None and kernels.get(producer.op_type) in KEEPS_OUTPUT_PAIR and \
                all(view.dequantized(n) for n in producer.input if n in view.producer):
            continue
        found.append((node, dequantizes))
    return found
