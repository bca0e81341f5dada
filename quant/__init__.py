"""Quantization for integer NPUs, on any JAX model, from its jaxpr.

    fn2, v2, _ = quant.fold_batchnorm(fn, variables, x)          # BN into conv/dense
    v2, _ = quant.equalize(fn2, v2, x)                           # cross-layer equalization
    q = quant.quantize(fn2, v2, x, profile="ort_cpu_int8")       # fake-quant sites
    qp = quant.calibrate(q, v2, batches, method="mse")           # PTQ ranges
    logits = q.apply(v2, qp, x)                                  # fake-quant forward
    quant.to_qdq_onnx(q, v2, qp, x, path="model_int8.onnx")      # int8 QDQ ONNX
    print(quant.lint(fn, variables, x, profile="npu_int8_per_tensor"))

QAT: ``quant.qat.qat``; bias correction: ``quant.bias_correction.bias_correction``.
Profiles (what a target supports and how it quantizes) are data: quant/profiles/*.json.
"""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)
from quant.batchnorm_folding import fold_batchnorm
from quant.calibration import calibrate, update_weight_qparams
from quant.equalization import equalize
from quant.fakequant import QuantizedModel, Site, quantize
from quant.lint import LintReport, lint
from quant.profile import Profile, QuantSpec, available_profiles, load_profile
from quant.qdq_export import check as check_qdq, to_qdq_onnx
from quant.sensitivity import layer_sensitivity
