"""Helpers of the quantization study (``experiments/quantization.py``): calibration batches,
calibrated PTQ models (optionally equalized and bias-corrected), accuracy in JAX and in
onnxruntime, onnxruntime's own ``quantize_static`` on the same float ONNX model as the
baseline our QDQ export is compared with, and side-by-side latencies.
"""
import os
from typing import Dict

import numpy as np

from core import train as train_lib
from data import pipeline
from quant import bias_correction, calibration, equalization, fakequant, target_cpu


def calibration_batches(dataset, count: int, batch_size: int):
    """The first ``count`` training images (no augmentation), normalized, in batches."""
    images = pipeline.normalize(dataset.train[0][:count], dataset.mean, dataset.std)
    return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


def accuracy(apply_eval, variables, dataset, split="test") -> float:
    return float(train_lib.evaluate(apply_eval, variables, dataset, split)["accuracy"])


def onnx_accuracy(model, dataset, split="test", batch_size=500) -> float:
    from export.parity import session
    sess = session(model, threads=os.cpu_count() or 1)
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y, w in dataset.eval_batches(split, batch_size):
        pred = np.argmax(sess.run(None, {name: x.astype(np.float32)})[0], -1)
        correct += float(np.sum((pred == y) * w))
        total += float(np.sum(w))
    return correct / total


def ptq(fn, variables, profile, batches, config) -> Dict:
    """Calibrated fake-quant model (optionally equalized and bias-corrected)."""
    example = batches[0]
    if config["equalize"]:
        variables, pairs = equalization.equalize(fn, variables, example)
    model = fakequant.quantize(fn, variables, example, profile=profile)
    qparams = calibration.calibrate(model, variables, batches, method=config["calibration"],
                                    percentile=config["percentile"],
                                    weight_method=config["weight_calibration"])
    if config["bias_correction"]:
        variables, _ = bias_correction.bias_correction(model, variables, qparams, batches)
    return {"model": model, "variables": variables, "qparams": qparams}


def expand_scalar_gemm_bias(model):
    """A copy of ``model`` whose Gemm biases are vectors: jax2onnx writes a scalar 0 bias,
    on which onnxruntime's quantize_static fails (same function, per-output bias)."""
    import onnx
    from onnx import numpy_helper
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits \
                or node.input[1] not in inits:
            continue
        bias = numpy_helper.to_array(inits[node.input[2]])
        if bias.ndim:
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        w_shape = inits[node.input[1]].dims
        n = w_shape[0] if trans_b else w_shape[1]
        vector = numpy_helper.from_array(np.full(n, bias, bias.dtype), node.input[2] + "_vec")
        model.graph.initializer.append(vector)
        node.input[2] = vector.name
    return model


def ort_quantize_static(float_path: str, out_path: str, batches, per_channel=True,
                        reduce_range=None):
    """onnxruntime's own QDQ quantizer on the same float model and calibration images, at
    its recommended settings for the target CPU: ``reduce_range`` (7-bit weights) where its
    u8s8 kernels saturate (x86 without VNNI), full range elsewhere."""
    import onnx
    from onnxruntime import quantization as ortq
    fixed_path = out_path.replace(".onnx", "_input.onnx")
    onnx.save(expand_scalar_gemm_bias(onnx.load(float_path)), fixed_path)

    class Reader(ortq.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input_0": np.asarray(b, np.float32)} for b in batches])

        def get_next(self):
            return next(self.items, None)
    if reduce_range is None:
        reduce_range = target_cpu.u8s8_saturates(target_cpu.target_kind(), 8)
    ortq.quantize_static(fixed_path, out_path, Reader(), quant_format=ortq.QuantFormat.QDQ,
                         per_channel=per_channel, reduce_range=reduce_range, activation_type=ortq.QuantType.QUInt8,
                         weight_type=ortq.QuantType.QInt8,
                         calibrate_method=ortq.CalibrationMethod.MinMax)
    return onnx.load(out_path)


def latencies(models: Dict[str, object], batches=(1, 32), threads: int = 1,
              runs: int = 50) -> Dict:
    """Median onnxruntime latency of each model, measured side by side, per batch size."""
    from export.runners import OrtCpuRunner
    runner = OrtCpuRunner(threads=threads, warmup=10, runs=runs)
    out = {}
    for batch in batches:
        for name, model in models.items():
            m = runner.measure(model, batch=batch)
            out.setdefault(name, {})[f"batch{batch}_median_ms"] = m.median_ms
    return out
