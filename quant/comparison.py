"""Helpers of the quantization study (``experiments/quantization.py``): calibration batches,
calibrated PTQ models (optionally equalized and bias-corrected), accuracy in JAX and in
onnxruntime, onnxruntime's own ``quantize_static`` on the same float ONNX model as the
baseline our QDQ export is compared with, and side-by-side latencies.
"""
import os
from typing import Callable, Dict, Sequence, Tuple

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


# onnxruntime's calibration methods: name -> (CalibrationMethod, quantize_static
# extra_options). Its Percentile defaults to a SYMMETRIC range (half the uint8 codes unused
# after a ReLU), so asymmetric percentiles are offered too. Its Entropy, as quantize_static
# runs it (128 histogram bins and 128 quantized bins; no option passes other counts), has
# one candidate threshold, the full range: it gives exactly the MinMax model. Every
# comparison quantizes with each and keeps the best on validation, as ours picks its variant.
ORT_METHODS: Dict[str, Tuple[str, Dict]] = {
    "MinMax": ("MinMax", {}),
    "Entropy": ("Entropy", {}),
    "Percentile": ("Percentile", {}),
    "Percentile_99.99_asymmetric": ("Percentile", {"CalibPercentile": 99.99,
                                                   "CalibTensorRangeSymmetric": False}),
    "Percentile_99.999_asymmetric": ("Percentile", {"CalibPercentile": 99.999,
                                                    "CalibTensorRangeSymmetric": False}),
}
# onnxruntime's histogram calibrators keep every intermediate tensor of every calibration
# batch until the end; flushing into the histograms every few batches bounds the memory.
ORT_FLUSH_EVERY = 4


def choose_best(scores: Dict[str, float]) -> str:
    """The best-scoring variant; ties go to the first listed (the simplest)."""
    return max(scores, key=lambda name: (scores[name], -list(scores).index(name)))


def ort_prepare(float_path: str, out_dir: str) -> Tuple[str, str]:
    """The float model as quantize_static wants it: vector Gemm biases, then onnxruntime's
    ``quant_pre_process`` (shape inference and graph optimisation, the step its quantization
    guide asks for first). Returns the prepared file's path and how it was prepared: its
    symbolic shape inference fails on the ViT's broadcast shapes (a TypeError inside
    onnxruntime 1.32), and then the tool's own ``skip_symbolic_shape=True`` (ONNX shape
    inference only) is used."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    os.makedirs(out_dir, exist_ok=True)
    fixed = os.path.join(out_dir, "ort_input.onnx")
    onnx.save(expand_scalar_gemm_bias(onnx.load(float_path)), fixed)
    prepared = os.path.join(out_dir, "ort_preprocessed.onnx")
    try:
        quant_pre_process(fixed, prepared)
        return prepared, "quant_pre_process"
    except Exception as error:    # onnxruntime's symbolic shape inference, not the model
        print(f"quant_pre_process: symbolic shape inference failed ({type(error).__name__}: "
              f"{error}); again with skip_symbolic_shape=True")
        quant_pre_process(fixed, prepared, skip_symbolic_shape=True)
        return prepared, (f"quant_pre_process(skip_symbolic_shape=True): symbolic shape "
                          f"inference failed ({type(error).__name__}: {error})")[:300]


def ort_quantize(prepared_path: str, out_path: str, batches: Sequence[np.ndarray],
                 method: str = "MinMax", options: Dict = None, reduce_range: bool = None):
    """onnxruntime's own QDQ quantizer (per-channel int8 weights, uint8 activations) on a
    prepared float model and calibration batches, at its recommended settings for the
    target CPU: ``reduce_range`` (7-bit weights) where its u8s8 kernels saturate (x86
    without VNNI), full range elsewhere."""
    import onnx
    from onnxruntime import quantization as ortq
    input_name = onnx.load(prepared_path).graph.input[0].name

    class Reader(ortq.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: np.asarray(b, np.float32)} for b in batches])

        def get_next(self):
            return next(self.items, None)
    if reduce_range is None:
        reduce_range = target_cpu.u8s8_saturates(target_cpu.target_kind(), 8)
    extra = dict(options or {})
    if method != "MinMax":
        extra["CalibMaxIntermediateOutputs"] = ORT_FLUSH_EVERY
    ortq.quantize_static(prepared_path, out_path, Reader(), quant_format=ortq.QuantFormat.QDQ,
                         per_channel=True, reduce_range=reduce_range,
                         activation_type=ortq.QuantType.QUInt8,
                         weight_type=ortq.QuantType.QInt8,
                         calibrate_method=getattr(ortq.CalibrationMethod, method),
                         extra_options=extra)
    return out_path


def best_ort_quantize(float_path: str, out_dir: str, batches, score_fn: Callable[[str], float],
                      methods: Dict[str, Tuple[str, Dict]] = None) -> Dict:
    """quantize_static with each calibration method of ``methods`` (default ORT_METHODS),
    each scored by ``score_fn(path)`` on VALIDATION data; the best is chosen. Returns
    ``{"chosen", "path", "scores", "failures", "reduce_range"}``; a method onnxruntime
    cannot run is recorded, not fatal, unless all fail."""
    methods = ORT_METHODS if methods is None else methods
    prepared, pre_process = ort_prepare(float_path, out_dir)
    reduce_range = target_cpu.u8s8_saturates(target_cpu.target_kind(), 8)
    scores, failures = {}, {}
    for name, (method, options) in methods.items():
        path = os.path.join(out_dir, f"ort_{name}.onnx")
        try:
            ort_quantize(prepared, path, batches, method, options, reduce_range)
        except Exception as error:      # recorded in the result, shown, and skipped
            failures[name] = f"{type(error).__name__}: {error}"[:300]
            print(f"quantize_static {name}: failed ({failures[name]})")
            continue
        scores[name] = float(score_fn(path))
        print(f"quantize_static {name}: validation score {scores[name]:.4f}", flush=True)
    if not scores:
        raise RuntimeError(f"every quantize_static method failed: {failures}")
    chosen = choose_best(scores)
    return {"chosen": chosen, "path": os.path.join(out_dir, f"ort_{chosen}.onnx"),
            "scores": scores, "failures": failures, "reduce_range": reduce_range,
            "pre_process": pre_process}


def latencies(models: Dict[str, object], batches=(1, 32), threads: int = 1,
              runs: int = 50, rounds: int = 3) -> Dict:
    """Median onnxruntime latency of each model per batch size, over ``runs`` timings
    spread across ``rounds`` interleaved rounds (load drift hits every model alike)."""
    from export.runners import OrtCpuRunner, measure_interleaved
    runner = OrtCpuRunner(threads=threads, warmup=10, runs=runs)
    measured = measure_interleaved(runner, list(models.values()), tuple(batches),
                                   max(runs // rounds, 1), rounds)
    return {name: {f"batch{b}_median_ms": m.median_ms for b, m in per_batch.items()}
            for name, per_batch in zip(models, measured)}
