"""int8 for a real (pruned) model, ours and onnxruntime's ``quantize_static`` side by side.

The real-model showcase (``experiments/real_model_pruning.py``) ends with a float model;
``int8_stage`` makes two int8 ONNX models of it from ONE float ONNX export and the SAME
calibration images, so that the comparison is about the quantizer and nothing else:

- ours: post-training fake-quant (``quant.comparison.ptq``: ``quant.fakequant`` sites for
  the ``ort_cpu_int8`` profile, ranges from ``quant.calibration``, optionally cross-layer
  equalization + bias correction) written as QDQ ONNX by ``quant.qdq_export``;
- the peer: onnxruntime's ``quantize_static`` (QDQ, per-channel int8 weights, uint8
  activations) after its recommended ``quant_pre_process``.

Each side tries its own calibration variants (``OUR_VARIANTS``; ``ORT_METHODS``) and keeps
the one whose onnxruntime outputs are closest to the float model's on the VALIDATION images
(``fidelity_fn`` against the float ONNX model's outputs). The eval images are used only for
the final figures: fidelity of each ONNX model's onnxruntime outputs against the ORIGINAL
model's outputs (``reference``), and one-thread batch-1 latency measured in interleaved
rounds (``export.runners.measure_interleaved``), so load drift on a shared machine hits all
three models alike.

Both sides are made for the CPU the int8 models run on (``quant.target_cpu``): on x86
without VNNI, onnxruntime's u8s8 kernels add pairs of products in a saturating int16, so
the profile uses 7-bit weights and ``quantize_static`` gets ``reduce_range``; with VNNI
(or on ARM) both keep full 8-bit weights. ``QUANT_TARGET_CPU`` builds for another CPU.

Measured on MediaPipe selfie segmentation, unpruned, 256x256 (64 calibration and 32
validation images of the calibration split, 64 held-out eval images; x86 without VNNI,
7-bit weights; 2 shared cores under load ~5, medians of 3 interleaved rounds of 50):
mask IoU vs the original / batch-1 ms: float 1.0000 / 11.47; ours 0.8054 / 13.78
(percentile_99.99); quantize_static 0.7864 / 12.34 (asymmetric percentile 99.999).
Neither int8 model is faster than float on this CPU; ours keeps float islands (hard-swish
products, sigmoids, float adds) between QuantizeLinear / DequantizeLinear pairs where
quantize_static quantizes every op.
"""
import os
import shutil
import time
from typing import Callable, Dict, Tuple

import numpy as np

from core import primitives as P
from quant.comparison import ORT_METHODS, best_ort_quantize, choose_best

# Our PTQ variants (``quant.comparison.ptq`` settings). Percentiles clip rare outliers;
# ``mse`` searches the clipping that minimises the quantization error of each tensor;
# ``cle_bc`` equalizes consecutive layers' channel ranges and corrects the output bias.
_BASE = dict(calibration="minmax", percentile=99.99, weight_calibration="minmax",
             equalize=False, bias_correction=False)
OUR_VARIANTS: Dict[str, Dict] = {
    "minmax": {},
    "percentile_99.9": dict(calibration="percentile", percentile=99.9),
    "percentile_99.99": dict(calibration="percentile", percentile=99.99),
    "mse": dict(calibration="mse"),
    "mse_weights_mse": dict(calibration="mse", weight_calibration="mse"),
    "percentile_99.99_cle_bc": dict(calibration="percentile", equalize=True,
                                    bias_correction=True),
    "mse_cle_bc": dict(calibration="mse", equalize=True, bias_correction=True),
}
PROFILE = "ort_cpu_int8"
# Requantized here too: onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into
# QLinearConv only when the conv's output is quantized; in a MobileNetV3-style model a conv
# feeds hard-swish (a product of two activations) or a sigmoid gate, outside the profile's
# layer domain, and stayed a float Conv after dequantized weights: the int8 selfie model
# measured 0.68x the float speed. With products and sigmoids requantized (what
# quantize_static does: QLinearMul, QLinearSigmoid) every conv becomes QLinearConv.
ELEMENTWISE_REQUANTIZED = (P.mul_p.name, P.logistic_p.name)   # profile names

# ------------------------------------------------------------ helpers
def _slash_free(fn, variables):
    """``(fn', variables')`` with no '/' in any key: imported models name weights like
    'conv2d_1/Kernel', which the parameter paths of equalization split into two keys."""
    def rename(tree):
        return {k.replace("/", "|"): rename(v) for k, v in tree.items()} \
            if isinstance(tree, dict) else tree

    def restore(tree):
        return {k.replace("|", "/"): restore(v) for k, v in tree.items()} \
            if isinstance(tree, dict) else tree
    return (lambda v, x: fn(restore(v), x)), rename(variables)


def _batches(inputs, batch_size: int):
    return [np.asarray(inputs[i:i + batch_size], np.float32)
            for i in range(0, len(inputs), batch_size)]


def onnx_outputs(model, inputs, batch_size: int = 16) -> np.ndarray:
    """The model's first output on ``inputs``, run by onnxruntime in batches."""
    from export.parity import session
    sess = session(model, threads=os.cpu_count() or 1)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: b})[0]
                           for b in _batches(inputs, batch_size)])


def _written_as_conv_transpose(model, site) -> bool:
    """A conv whose input is dilated (a transposed conv) exports as ONNX ConvTranspose
    with a spatially flipped kernel, which ``quant.qdq_export`` (matching weights up to an
    axis permutation) cannot place: its weight stays float (the op runs in float)."""
    index, _ = site.consumers[0]
    eqn = model.flat.eqns[index]
    return any(d != 1 for d in eqn.params.get("lhs_dilation", ()) or ())


# Weight sites left in float: reason (recorded in the result) -> test(model, site).
FLOAT_WEIGHT_RULES = {"transposed_conv": _written_as_conv_transpose}


def ptq_exportable(fn, variables, profile, batches, settings) -> Dict:
    """``quant.comparison.ptq`` with the weight sites of ``FLOAT_WEIGHT_RULES`` removed
    before calibration, so the fake-quant model is exactly what the QDQ export writes."""
    from quant import bias_correction, calibration, equalization, fakequant
    example = batches[0]
    if settings["equalize"]:
        variables, _ = equalization.equalize(fn, variables, example)
    model = fakequant.quantize(fn, variables, example, profile=profile)
    kept, left_float = {}, {}
    for name, site in model.sites.items():
        rule = next((r for r, test in FLOAT_WEIGHT_RULES.items()
                     if site.kind == "weight" and test(model, site)), None)
        (left_float if rule else kept)[name] = rule or site
    model = fakequant.QuantizedModel(model.flat, model.profile, kept)
    qparams = calibration.calibrate(model, variables, batches,
                                    method=settings["calibration"],
                                    percentile=settings["percentile"],
                                    weight_method=settings["weight_calibration"])
    if settings["bias_correction"]:
        variables, _ = bias_correction.bias_correction(model, variables, qparams, batches)
    return {"model": model, "variables": variables, "qparams": qparams,
            "float_weights": left_float}


# ------------------------------------------------------------ ours
def _ours(fn, variables, calibration, validation, float_onnx, float_on_validation,
          fidelity_fn, onnx_dir, variants, batch_size):
    """Every PTQ variant exported as QDQ and scored in onnxruntime on the validation
    images; returns (chosen name, its run, its QdqExport, scores, failures)."""
    from quant import qdq_export
    from quant.profile import load_profile
    import dataclasses
    base = load_profile(PROFILE)
    profile = dataclasses.replace(base, quantize_inputs_of=base.quantize_inputs_of
                                  | frozenset(ELEMENTWISE_REQUANTIZED))
    batches = _batches(calibration, batch_size)
    example = np.asarray(validation[:8], np.float32)
    scores, runs, failures = {}, {}, {}
    for name, changes in variants.items():
        try:
            run = ptq_exportable(fn, variables, profile, batches, {**_BASE, **changes})
            # Equalization changes the variables: the float export is then made again.
            same = run["variables"] is variables
            qdq = qdq_export.to_qdq_onnx(
                run["model"], run["variables"], run["qparams"], example,
                os.path.join(onnx_dir, "candidates", f"ours_{name}.onnx"),
                float_onnx=float_onnx if same else None)
        except Exception as error:   # a variant that cannot apply (no CLE pairs, ...)
            failures[name] = f"{type(error).__name__}: {error}"[:300]
            print(f"ours {name}: failed ({failures[name]})")
            continue
        scores[name] = float(fidelity_fn(onnx_outputs(qdq.model, validation, batch_size),
                                         float_on_validation))
        runs[name] = (run, qdq)
        print(f"ours {name}: validation fidelity {scores[name]:.4f}", flush=True)
    if not scores:
        raise RuntimeError(f"every PTQ variant failed: {failures}")
    chosen = choose_best(scores)
    run, qdq = runs[chosen]
    return chosen, run, qdq, scores, failures, profile


def kernels(model) -> Dict[str, Dict[str, int]]:
    """The ops of onnxruntime's optimized graph of ``model`` (what actually runs): the
    integer kernels (QLinearConv, ...) and the float convs / matmuls left."""
    import collections
    import tempfile
    import onnx
    import onnxruntime as ort
    from quant.qdq_export import INTEGER_OPS
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                             options, providers=["CPUExecutionProvider"])
        counts = collections.Counter(n.op_type for n in
                                     onnx.load(options.optimized_model_filepath).graph.node)
    return {"integer": {k: v for k, v in counts.items() if k in INTEGER_OPS},
            "float": {k: v for k, v in counts.items()
                      if k in ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv",
                               "FusedMatMul", "Einsum")}}


def _parity(qdq, run, validation, fidelity_fn, batch_size) -> Dict:
    """Our QDQ model in onnxruntime vs the JAX fake-quant model it was written from, on
    the validation images (the quantizers the export left out left out here too)."""
    import jax
    from quant import qdq_export
    model, qparams = run["model"], run["qparams"]
    enabled = qdq_export.enabled_sites(qdq.model, model)
    apply = jax.jit(lambda v, x: model.apply(v, qparams, x, enabled=enabled))
    fake = np.concatenate([np.asarray(apply(run["variables"], b))
                           for b in _batches(validation, batch_size)])
    onnx_int8 = onnx_outputs(qdq.model, validation, batch_size)
    error = np.abs(onnx_int8.astype(np.float64) - fake)
    return dict(max_abs_error=float(error.max()), mean_abs_error=float(error.mean()),
                output_scale=float(np.max(np.abs(fake))),
                fidelity_to_fakequant=float(fidelity_fn(onnx_int8, fake)),
                float_weights=list(qdq.float_weights),
                weights_left_float=dict(run["float_weights"]))


# ------------------------------------------------------------ the stage
def int8_stage(fn: Callable, variables, calibration_inputs, validation_inputs, eval_inputs,
               reference, fidelity_fn: Callable, workdir: str, device: str = "ort-cpu-1t",
               variants: Dict[str, Dict] = None,
               ort_methods: Dict[str, Tuple[str, Dict]] = None,
               batch_size: int = 16, latency_runs: int = 50, latency_rounds: int = 3
               ) -> Dict:
    """Float, ours and quantize_static int8 of ``fn(variables, x)``: fidelity on the eval
    images (onnxruntime outputs vs ``reference``, the original model's outputs), batch-1
    latency medians and speed-ups over float, each side's validation scores and choice,
    and the parity of our QDQ model with its fake-quant model. ONNX files in
    ``workdir/onnx`` (float.onnx, int8_ours.onnx, int8_ort.onnx)."""
    import export as export_lib
    from export.runners import get_runner, measure_interleaved
    start = time.time()
    variants = OUR_VARIANTS if variants is None else variants
    ort_methods = ORT_METHODS if ort_methods is None else ort_methods
    fn, variables = _slash_free(fn, variables)
    onnx_dir = os.path.join(workdir, "onnx")
    os.makedirs(onnx_dir, exist_ok=True)
    paths = {"float": os.path.join(onnx_dir, "float.onnx"),
             "ours": os.path.join(onnx_dir, "int8_ours.onnx"),
             "ort_quantize_static": os.path.join(onnx_dir, "int8_ort.onnx")}
    # A real image drives the export's parity check (zeros can pass by accident).
    float_onnx = export_lib.to_onnx(fn, variables, np.asarray(validation_inputs[:1],
                                                              np.float32),
                                    path=paths["float"]).model
    float_on_validation = onnx_outputs(float_onnx, validation_inputs, batch_size)

    chosen, run, qdq, our_scores, our_failures, profile = _ours(
        fn, variables, calibration_inputs, validation_inputs, float_onnx,
        float_on_validation, fidelity_fn, onnx_dir, variants, batch_size)
    shutil.copyfile(qdq.path, paths["ours"])
    parity = _parity(qdq, run, validation_inputs, fidelity_fn, batch_size)
    peer = best_ort_quantize(
        paths["float"], os.path.join(onnx_dir, "candidates"),
        _batches(calibration_inputs, batch_size),
        lambda path: fidelity_fn(onnx_outputs(path, validation_inputs, batch_size),
                                 float_on_validation), ort_methods)
    ort_chosen, ort_scores, ort_failures = peer["chosen"], peer["scores"], peer["failures"]
    reduce_range = peer["reduce_range"]
    shutil.copyfile(peer["path"], paths["ort_quantize_static"])

    names = list(paths)
    measured = measure_interleaved(get_runner(device), [paths[n] for n in names],
                                   batches=(1,), runs=latency_runs, rounds=latency_rounds)
    choices = {"float": None, "ours": chosen, "ort_quantize_static": ort_chosen}
    rows = {}
    for name, latency in zip(names, measured):
        outputs = onnx_outputs(paths[name], eval_inputs, batch_size)
        rows[name] = dict(fidelity=float(fidelity_fn(outputs, reference)),
                          batch1_median_ms=latency[1].median_ms,
                          batch1_p90_ms=latency[1].p90_ms, choice=choices[name],
                          onnx=os.path.abspath(paths[name]), kernels=kernels(paths[name]))
    for row in rows.values():
        row["speedup_vs_float"] = rows["float"]["batch1_median_ms"] / row["batch1_median_ms"]
    result = {
        "rows": rows, "device": device,
        "validation_scores": {"ours": our_scores, "ort_quantize_static": ort_scores},
        "failed_variants": {"ours": our_failures, "ort_quantize_static": ort_failures},
        "parity": parity,
        "target_cpu": profile.target_cpu, "weight_bits": profile.weights.bits,
        "profile_adjustment": profile.adjustment, "ort_reduce_range": bool(reduce_range),
        "images": {"calibration": len(calibration_inputs),
                   "validation": len(validation_inputs), "eval": len(eval_inputs)},
        "seconds": time.time() - start,
    }
    print(table(result))
    return result


def table(result: Dict) -> str:
    """The three rows as a markdown table."""
    lines = ["| model | fidelity vs original | ORT b1 median (ms) | speed-up | choice |",
             "|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['fidelity']:.4f} | {r['batch1_median_ms']:.2f} | "
                     f"{r['speedup_vs_float']:.2f}x | {r['choice'] or '-'} |")
    return "\n".join(lines)
