"""Latency tables: single ops timed alone on a device, cached on disk.

Latency is a property of the device, not of FLOPs (a conv with 31 channels can be slower than
one with 32 here, because onnxruntime's blocked kernels want multiples of 8 or 16), so the
latency model reads measured op latencies instead of counting MACs. An op is described by an
``OpSignature`` (kind and shape parameters); ``ONNX_BUILDERS`` turns each kind into a one-op
ONNX graph in the NCHW form the exported models have after ``export.graph_passes`` (BatchNorm
folded into the Conv bias). ``LatencyTable`` measures missing signatures on its runner (with a
tqdm progress bar), and keeps results in a JSON file keyed by device name and signature, so a
table built for "ort-cpu-1t" is never read for another device.
"""
import dataclasses
import json
import os
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclasses.dataclass(frozen=True)
class OpSignature:
    """An op kind and its shape parameters, e.g. conv n=1 h=14 w=14 cin=16 cout=32 ..."""
    kind: str
    params: Tuple[Tuple[str, object], ...]

    @classmethod
    def make(cls, kind: str, **params) -> "OpSignature":
        return cls(kind, tuple(sorted((k, _plain(v)) for k, v in params.items())))

    def get(self, name):
        return dict(self.params)[name]

    def replace(self, **params) -> "OpSignature":
        return OpSignature.make(self.kind, **{**dict(self.params), **params})

    @property
    def key(self) -> str:
        return self.kind + "|" + "|".join(f"{k}={v}" for k, v in self.params)


def _plain(value):
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return int(value) if isinstance(value, (np.integer, bool)) else value


# ---------------------------------------------------------------- one-op ONNX graphs

def _weights(name, shape, seed=0):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((0.1 * rng.standard_normal(shape)).astype(np.float32), name)


def _model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "op", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def build_conv(sig: OpSignature) -> onnx.ModelProto:
    p = dict(sig.params)
    n, h, w, cin, cout, groups = p["n"], p["h"], p["w"], p["cin"], p["cout"], p["groups"]
    kh, kw = p["kernel"]
    pads = list(p["pads"])                      # (top, left, bottom, right), ONNX order
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=list(p["strides"]),
                            pads=pads, group=groups, dilations=list(p["dilations"]))
    ho = (h + pads[0] + pads[2] - p["dilations"][0] * (kh - 1) - 1) // p["strides"][0] + 1
    wo = (w + pads[1] + pads[3] - p["dilations"][1] * (kw - 1) - 1) // p["strides"][1] + 1
    return _model([node], [_value("x", (n, cin, h, w))], [_value("y", (n, cout, ho, wo))],
                  [_weights("w", (cout, cin // groups, kh, kw)), _weights("b", (cout,))])


def build_dense(sig: OpSignature) -> onnx.ModelProto:
    m, k, n = sig.get("m"), sig.get("k"), sig.get("n")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["y"])]
    return _model(nodes, [_value("x", (m, k))], [_value("y", (m, n))],
                  [_weights("w", (k, n)), _weights("b", (n,))])


def build_matmul(sig: OpSignature) -> onnx.ModelProto:
    b, m, k, n = sig.get("batch"), sig.get("m"), sig.get("k"), sig.get("n")
    node = helper.make_node("MatMul", ["a", "c"], ["y"])
    return _model([node], [_value("a", (b, m, k)), _value("c", (b, k, n))],
                  [_value("y", (b, m, n))], [])


def build_pool(sig: OpSignature) -> onnx.ModelProto:
    p = dict(sig.params)
    op = {"max": "MaxPool", "avg": "AveragePool"}[p["mode"]]
    pads = list(p["pads"])
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=list(p["kernel"]),
                            strides=list(p["strides"]), pads=pads)
    return _model([node], [_value("x", (p["n"], p["c"], p["h"], p["w"]))],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [])


def build_elementwise(sig: OpSignature) -> onnx.ModelProto:
    """A binary Add (arity 2) or a unary Relu over a (rows, ch) tensor."""
    shape, arity = (sig.get("rows"), sig.get("ch")), sig.get("arity")
    names = ["x0", "x1"] if arity >= 2 else ["x0"]
    node = helper.make_node("Add" if arity >= 2 else "Relu", names, ["y"])
    return _model([node], [_value(n, shape) for n in names], [_value("y", shape)], [])


def build_attention(sig: OpSignature) -> onnx.ModelProto:
    """softmax(q k^T / sqrt(d)) v for (batch*heads, tokens, head_dim) operands."""
    b, t, d = sig.get("batch"), sig.get("tokens"), sig.get("head_dim")
    scale = numpy_helper.from_array(np.array(d ** -0.5, np.float32), "scale")
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["a"], axis=-1),
             helper.make_node("MatMul", ["a", "v"], ["y"])]
    return _model(nodes, [_value(n, (b, t, d)) for n in "qkv"], [_value("y", (b, t, d))],
                  [scale])


ONNX_BUILDERS = {"conv": build_conv, "dense": build_dense, "matmul": build_matmul,
                 "pool": build_pool, "elementwise": build_elementwise,
                 "attention": build_attention}


def conv_signature(n, h, w, cin, cout, kernel=(3, 3), strides=(1, 1), pads=None, groups=1,
                   dilations=(1, 1)) -> OpSignature:
    if pads is None:  # SAME
        pads = []
        for size, k, s in zip((h, w), kernel, strides):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        pads = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    return OpSignature.make("conv", n=n, h=h, w=w, cin=cin, cout=cout, kernel=tuple(kernel),
                            strides=tuple(strides), pads=tuple(pads), groups=groups,
                            dilations=tuple(dilations))


# ---------------------------------------------------------------- the cached table

class LatencyTable:
    """Median op latencies (ms) of one device, measured on demand, cached in a JSON file.

    The file holds ``{"devices": {device: {signature key: entry}}}``; entries of other devices
    are kept but never read. ``measurements`` counts ops actually timed by this object.
    """

    def __init__(self, runner, path: Optional[str] = None, runs: int = 30, warmup: int = 5,
                 repeats: int = 3, progress: bool = True):
        self.runner, self.path = runner, path
        self.runs, self.warmup, self.repeats, self.progress = runs, warmup, repeats, progress
        self.measurements = 0
        self._all = {"devices": {}}
        if path and os.path.exists(path):
            with open(path) as f:
                self._all = json.load(f)
        self.entries: Dict[str, dict] = self._all["devices"].setdefault(self.device, {})

    @property
    def device(self) -> str:
        return self.runner.name

    def __contains__(self, sig: OpSignature) -> bool:
        return sig.key in self.entries

    def __len__(self):
        return len(self.entries)

    def lookup(self, sig: OpSignature, statistic: str = "median_ms") -> float:
        if sig not in self:
            self.build([sig])
        return self.entries[sig.key][statistic]

    def build(self, signatures: Iterable[OpSignature], desc: str = "latency table") -> int:
        """Measures every signature not yet in the table; returns how many were measured."""
        missing = list(dict.fromkeys(s for s in signatures if s not in self))
        if not missing:
            return 0
        from tqdm.auto import tqdm
        bar = tqdm(missing, desc=f"{desc} [{self.device}]", disable=not self.progress,
                   leave=False)
        for sig in bar:
            model = ONNX_BUILDERS[sig.kind](sig)
            # Repeated short measurements, median of medians: robust on a shared CPU.
            found = [self.runner.measure(model, runs=self.runs, warmup=self.warmup)
                     for _ in range(self.repeats)]
            self.entries[sig.key] = {
                "kind": sig.kind, "params": dict(sig.params),
                "median_ms": float(np.median([m.median_ms for m in found])),
                "p10_ms": float(np.median([np.percentile(m.samples_ms, 10) for m in found]))}
            self.measurements += 1
        self.save()
        return len(missing)

    def save(self):
        if not self.path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if os.path.exists(self.path):  # merge what other processes wrote meanwhile
            with open(self.path) as f:
                on_disk = json.load(f)
            for device, entries in on_disk.get("devices", {}).items():
                mine = self._all["devices"].setdefault(device, {})
                for key, entry in entries.items():
                    mine.setdefault(key, entry)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self._all, f, indent=1, sort_keys=True, default=list)
        os.replace(tmp, self.path)
