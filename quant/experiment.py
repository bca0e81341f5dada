"""The quantization experiment: a trained teacher through every PTQ/QAT configuration.

``main(config, workdir)`` (run by ``python run.py --exp=quant_resnet20`` and the other
``quant/configs``) takes the cached teacher (``core.teacher``), folds BatchNorm and measures
test accuracy of: float; PTQ per-tensor and per-channel int8, each with and without
cross-layer equalization (+ bias correction); QAT from the best per-channel PTQ. It exports
the float model and our QDQ int8 model to ONNX, runs onnxruntime's own ``quantize_static``
(QDQ, per-channel, same calibration images) on the same float ONNX, and reports the test
accuracy of both int8 models *in onnxruntime* and latencies (float vs int8, batch 1 and
32, medians). Results: ``workdir/result.json``.

With ``config.pruned_experiment`` set (e.g. ``prune_resnet20_2x``) the float model is that
finished pruning run's fine-tuned pruned model instead of the teacher: prune, then quantize.
"""
import json
import os
import time
from typing import Dict

import numpy as np

from core import teacher as teacher_lib, train as train_lib
from data import pipeline
from quant import bias_correction, calibration, equalization, fakequant, qat, qdq_export
from quant import sensitivity, target_cpu
from quant.batchnorm_folding import fold_batchnorm
from quant.profile import load_profile


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
    for x, y, w in pipeline.eval_batches(dataset, split, batch_size):
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


def float_model(config):
    """``(fn, variables, summary, dataset)``: the cached teacher, or the pruned model of the
    finished pruning experiment ``config.pruned_experiment`` (in ``config.pruned_workdir``,
    default runs/<name>)."""
    name = config.get("pruned_experiment", "")
    if name:
        from core import config as config_lib
        from pruning import learned_pruning
        workdir = config.get("pruned_workdir", "") or os.path.join("runs", name)
        return learned_pruning.load_pruned(config_lib.load(name), os.path.abspath(workdir))
    module, variables, summary = teacher_lib.get_teacher(config.teacher, show_progress=False)
    fn = lambda v, x: module.apply(v, x, train=False)          # noqa: E731
    return fn, variables, summary, teacher_lib.load_data(config.teacher)


def main(config, workdir):
    import export as export_lib
    start = time.time()
    fn, variables, summary, dataset = float_model(config)
    batches = calibration_batches(dataset, config.calibration_images, config.batch_size)
    example = batches[0]
    fn_f, v_f, folded = fold_batchnorm(fn, variables, example)
    result = {"model": summary.get("model", config.teacher.model), "teacher": summary,
              "folded_ops": len(folded), "calibration": config.calibration,
              "calibration_images": config.calibration_images, "accuracy": {}}
    acc = result["accuracy"]
    limit = config.get("eval_limit", 0)
    eval_data = dataset if not limit else pipeline.ImageDataset(
        dataset.train, dataset.validation, (dataset.test[0][:limit], dataset.test[1][:limit]),
        dataset.mean, dataset.std, dataset.num_classes, dataset.name)
    acc["float"] = accuracy(fn_f, v_f, eval_data)
    print(f"float: {acc['float']:.4f}")

    base = load_profile(config.profile)
    result["profile"] = dict(name=base.name, target_cpu=base.target_cpu,
                             adjustment=base.adjustment, weight_bits=base.weights.bits)
    if base.adjustment:
        print(f"profile {base.name} adjusted for this CPU: {base.adjustment}")
    profiles = {"per_tensor": base.with_weights(per_channel=False),
                "per_channel": base.with_weights(per_channel=True)}
    runs = {}
    for granularity, profile in profiles.items():
        for eq in (False, True):
            name = f"ptq_{granularity}" + ("_cle_bc" if eq else "")
            settings = dict(calibration=config.calibration, percentile=config.percentile,
                            weight_calibration=config.weight_calibration, equalize=eq,
                            bias_correction=eq)
            run = ptq(fn_f, v_f, profile, batches, settings)
            runs[name] = run
            acc[name] = accuracy(run["model"].fn(run["qparams"]), run["variables"], eval_data)
            print(f"{name}: {acc[name]:.4f}")
    best = max(("ptq_per_channel", "ptq_per_channel_cle_bc"), key=lambda n: acc[n])
    result["best_ptq"] = best
    chosen = runs[best]
    if config.sensitivity:
        ranked = sensitivity.layer_sensitivity(chosen["model"], chosen["variables"],
                                               chosen["qparams"], batches[:2])
        result["sensitivity_top5"] = [dict(layer=r.layer, kl=r.kl, agreement=r.agreement,
                                           source=r.source) for r in ranked[:5]]
    if config.qat.steps:
        cfg = qat.default_config(**config.qat.to_dict())
        v_q, qp_q, qat_result = qat.qat(chosen["model"], chosen["variables"], chosen["qparams"],
                                        dataset, cfg, os.path.join(workdir, "qat"), fn_f, v_f)
        acc["qat"] = accuracy(chosen["model"].fn(qp_q), v_q, eval_data)
        result["qat_steps"] = cfg.steps
        print(f"qat: {acc['qat']:.4f}")
        runs["qat"] = {"model": chosen["model"], "variables": v_q, "qparams": qp_q}

    # ONNX: float, ours (best PTQ, QAT), onnxruntime's quantize_static.
    onnx_dir = os.path.join(workdir, "onnx")
    os.makedirs(onnx_dir, exist_ok=True)
    float_path = os.path.join(onnx_dir, "float.onnx")
    float_onnx = export_lib.to_onnx(fn_f, v_f, example[:8], path=float_path).model
    onnx_models = {"float": float_onnx}
    parity = {}
    for name in [best] + (["qat"] if "qat" in runs else []):
        run = runs[name]
        float_for_run = float_onnx if run["variables"] is v_f else None
        qdq = qdq_export.to_qdq_onnx(run["model"], run["variables"], run["qparams"],
                                     example[:64], os.path.join(onnx_dir, f"{name}.onnx"),
                                     float_onnx=float_for_run)
        check = qdq_export.check(qdq.model, run["model"], run["variables"], run["qparams"],
                                 example[:64])
        parity[name] = dict(top1_agreement=check.top1_agreement,
                            decided_agreement=check.decided_agreement,
                            decided_rows=check.decided_rows,
                            max_abs_error=check.max_abs_error, output_scale=check.output_scale,
                            integer_ops=check.integer_ops, float_ops=check.float_ops,
                            float_weights=qdq.float_weights)
        onnx_models[f"ours_{name}"] = qdq.model
    ort_model = ort_quantize_static(float_path, os.path.join(onnx_dir, "ort_static.onnx"),
                                    batches)
    onnx_models["ort_quantize_static"] = ort_model
    result["parity"] = parity
    result["onnx_accuracy"] = {name: onnx_accuracy(m, eval_data)
                               for name, m in onnx_models.items()}
    print("onnxruntime accuracy:", result["onnx_accuracy"])
    result["latency_ms"] = latencies(onnx_models, tuple(config.latency_batches),
                                     config.latency_threads, config.latency_runs)
    result["seconds"] = time.time() - start
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    return result
