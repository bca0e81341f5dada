"""The quantization experiments: a trained model through every PTQ/QAT configuration.

``main(config, workdir)`` (``python run.py --exp=quant_resnet20`` and the other
``quant/configs``) takes the cached teacher (``experiments.preamble``), folds BatchNorm and
measures test accuracy of: float; PTQ per-tensor and per-channel int8, each with and without
cross-layer equalization (+ bias correction); QAT from the per-channel PTQ variant with the
better validation accuracy. It exports
the float model and our QDQ int8 model to ONNX, runs onnxruntime's own ``quantize_static``
(after ``quant_pre_process``, with the calibration method of best validation accuracy)
(QDQ, per-channel, same calibration images) on the same float ONNX, and reports the test
accuracy of both int8 models *in onnxruntime* and latencies (float vs int8, batch 1 and
32, medians). Results: ``workdir/result.json``.

With ``config.pruned_experiment`` set (e.g. ``prune_resnet20_2x``) the float model is that
finished pruning run's fine-tuned pruned model instead of the teacher: prune, then quantize.
"""
import os
import time

import experiments
from data import pipeline
from experiments import learned_pruning, preamble, registry
from quant import qat, qdq_export, sensitivity
from quant.batchnorm_folding import fold_batchnorm
from quant.comparison import (accuracy, best_ort_quantize, calibration_batches, choose_best,
                              latencies, onnx_accuracy, ptq)
from quant.profile import load_profile


def float_model(config):
    """``(fn, variables, summary, dataset)``: the cached teacher, or the pruned model of the
    finished pruning experiment ``config.pruned_experiment`` (in ``config.pruned_workdir``,
    default runs/<name>)."""
    name = config.get("pruned_experiment", "")
    if name:
        workdir = config.get("pruned_workdir", "") or os.path.join("runs", name)
        return learned_pruning.load_pruned(registry.load(name), os.path.abspath(workdir))
    teacher = preamble.prepare(config.teacher, show_progress=False)
    return teacher.fn, teacher.variables, teacher.summary, teacher.dataset


def _eval_data(config, dataset):
    limit = config.get("eval_limit", 0)
    return dataset if not limit else pipeline.ImageDataset(
        dataset.train, dataset.validation, (dataset.test[0][:limit], dataset.test[1][:limit]),
        dataset.mean, dataset.std, dataset.num_classes, dataset.name)


def _ptq_variants(config, fn_f, v_f, batches, eval_data, result):
    """Every PTQ variant, calibrated and evaluated; returns {name: run}."""
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
            result["accuracy"][name] = accuracy(run["model"].fn(run["qparams"]),
                                                run["variables"], eval_data)
            print(f"{name}: {result['accuracy'][name]:.4f}")
    return runs


def _sensitivity_and_qat(config, chosen, batches, dataset, eval_data, fn_f, v_f, workdir,
                         result):
    """Per-layer sensitivity of the chosen PTQ model and QAT from it (when configured)."""
    if config.sensitivity:
        ranked = sensitivity.layer_sensitivity(chosen["model"], chosen["variables"],
                                               chosen["qparams"], batches[:2])
        result["sensitivity_top5"] = [dict(layer=r.layer, kl=r.kl, agreement=r.agreement,
                                           source=r.source) for r in ranked[:5]]
    if not config.qat.steps:
        return None
    cfg = qat.default_config(**config.qat.to_dict())
    v_q, qp_q, _ = qat.qat(chosen["model"], chosen["variables"], chosen["qparams"],
                           dataset, cfg, os.path.join(workdir, "qat"), fn_f, v_f)
    result["accuracy"]["qat"] = accuracy(chosen["model"].fn(qp_q), v_q, eval_data)
    result["qat_steps"] = cfg.steps
    print(f"qat: {result['accuracy']['qat']:.4f}")
    return {"model": chosen["model"], "variables": v_q, "qparams": qp_q}


def _parity(check, qdq) -> dict:
    return dict(top1_agreement=check.top1_agreement, decided_agreement=check.decided_agreement,
                decided_rows=check.decided_rows, max_abs_error=check.max_abs_error,
                output_scale=check.output_scale, integer_ops=check.integer_ops,
                float_ops=check.float_ops, float_weights=qdq.float_weights,
                sites_left_float=len(qdq.unpaid_sites))


def _graph_ops(model) -> dict:
    """Node counts of an ONNX model: all nodes and the quantize/dequantize ones."""
    types = [node.op_type for node in model.graph.node]
    return dict(nodes=len(types), QuantizeLinear=types.count("QuantizeLinear"),
                DequantizeLinear=types.count("DequantizeLinear"))


def _onnx_comparison(config, runs, names, fn_f, v_f, batches, eval_data, workdir, result):
    """ONNX: float, ours (best PTQ, QAT), onnxruntime's quantize_static; accuracy in
    onnxruntime, parity of ours against the fake-quant model, latencies."""
    import onnx
    import export as export_lib
    example = batches[0]
    onnx_dir = os.path.join(workdir, "onnx")
    os.makedirs(onnx_dir, exist_ok=True)
    float_path = os.path.join(onnx_dir, "float.onnx")
    float_onnx = export_lib.to_onnx(fn_f, v_f, example[:8], path=float_path).model
    onnx_models, parity = {"float": float_onnx}, {}
    for name in names:
        run = runs[name]
        float_for_run = float_onnx if run["variables"] is v_f else None
        qdq = qdq_export.to_qdq_onnx(run["model"], run["variables"], run["qparams"],
                                     example[:64], os.path.join(onnx_dir, f"{name}.onnx"),
                                     float_onnx=float_for_run)
        check = qdq_export.check(qdq.model, run["model"], run["variables"], run["qparams"],
                                 example[:64])
        parity[name] = _parity(check, qdq)
        onnx_models[f"ours_{name}"] = qdq.model
    peer = best_ort_quantize(
        float_path, os.path.join(onnx_dir, "ort_candidates"), batches,
        lambda path: onnx_accuracy(onnx.load(path), eval_data, "validation"))
    onnx_models["ort_quantize_static"] = onnx.load(peer["path"])
    result["ort_calibration"] = {k: peer[k] for k in ("chosen", "scores", "failures",
                                                      "pre_process")}
    result["parity"] = parity
    result["graph_ops"] = {name: _graph_ops(m) for name, m in onnx_models.items()}
    result["onnx_accuracy"] = {name: onnx_accuracy(m, eval_data)
                               for name, m in onnx_models.items()}
    print("onnxruntime accuracy:", result["onnx_accuracy"])
    result["latency_ms"] = latencies(onnx_models, tuple(config.latency_batches),
                                     config.latency_threads, config.latency_runs)


def main(config, workdir):
    start = time.time()
    fn, variables, summary, dataset = float_model(config)
    batches = calibration_batches(dataset, config.calibration_images, config.batch_size)
    fn_f, v_f, folded = fold_batchnorm(fn, variables, batches[0])
    result = {"model": summary.get("model", config.teacher.model), "teacher": summary,
              "folded_ops": len(folded), "calibration": config.calibration,
              "calibration_images": config.calibration_images, "accuracy": {}}
    eval_data = _eval_data(config, dataset)
    result["accuracy"]["float"] = accuracy(fn_f, v_f, eval_data)
    print(f"float: {result['accuracy']['float']:.4f}")
    runs = _ptq_variants(config, fn_f, v_f, batches, eval_data, result)
    # Chosen on the validation split; test accuracy is only reported.
    result["validation_accuracy"] = {
        name: accuracy(runs[name]["model"].fn(runs[name]["qparams"]), runs[name]["variables"],
                       eval_data, "validation")
        for name in ("ptq_per_channel", "ptq_per_channel_cle_bc")}
    best = choose_best(result["validation_accuracy"])
    result["best_ptq"] = best
    tuned = _sensitivity_and_qat(config, runs[best], batches, dataset, eval_data, fn_f, v_f,
                                 workdir, result)
    if tuned is not None:
        runs["qat"] = tuned
    _onnx_comparison(config, runs, [best] + (["qat"] if tuned is not None else []), fn_f, v_f,
                     batches, eval_data, workdir, result)
    result["seconds"] = time.time() - start
    experiments.write_result(workdir, result)
    return result
