"""int8 models are right on x86 CPUs with and without VNNI: the ort_cpu_int8 profile takes
7-bit weights where onnxruntime's u8s8 kernels saturate, the linter flags full-range weights
there, and the QDQ model run on an EMULATED AVX2 CPU (qemu-user, installed by
scripts/setup.sh) reproduces the fake-quant model up to rounding flips, while a full-range
one does not."""
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from data import fashion_mnist
from models import zoo
from quant import calibration, fakequant, qdq_export, target_cpu
from quant.batchnorm_folding import fold_batchnorm
from quant.lint import lint
from quant.profile import load_profile
from tests.quant import tiny_models

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU = shutil.which("qemu-x86_64")
AVX2_CPU = "Haswell-v4"      # AVX2 and FMA, no AVX-512, no VNNI

CPUINFO = {
    "x86_vnni": "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni\n",
    "x86_without_vnni": "flags\t\t: fpu sse2 avx avx2 fma\n",
}


@pytest.mark.parametrize("kind", sorted(CPUINFO))
def test_cpu_kind_from_cpuinfo_flags(kind):
    assert target_cpu.host_kind(CPUINFO[kind], machine="x86_64") == kind
    assert target_cpu.host_kind(CPUINFO[kind], machine="aarch64") == "not_x86"


def test_only_full_range_weights_on_x86_without_vnni_saturate():
    assert target_cpu.u8s8_saturates("x86_without_vnni", weight_bits=8)
    assert not target_cpu.u8s8_saturates("x86_without_vnni", weight_bits=7)
    assert not target_cpu.u8s8_saturates("x86_vnni", weight_bits=8)
    assert not target_cpu.u8s8_saturates("not_x86", weight_bits=8)
    # 2 * 255 * 64 = 32640 fits int16; 2 * 255 * 128 = 65280 does not.
    assert not target_cpu.u8s8_saturates("x86_without_vnni", 7, activation_bits=8)


def test_profile_is_adjusted_for_the_target_cpu_and_records_it(monkeypatch):
    without = load_profile("ort_cpu_int8", target_cpu="x86_without_vnni")
    assert (without.weights.bits, without.target_cpu) == (7, "x86_without_vnni")
    assert "saturating int16" in without.adjustment
    assert (without.weights.qmin, without.weights.qmax) == (-63, 63)
    with_vnni = load_profile("ort_cpu_int8", target_cpu="x86_vnni")
    assert with_vnni.weights.bits == 8 and with_vnni.adjustment == ""
    # An NPU profile does not depend on the host's CPU.
    assert load_profile("npu_int8_per_tensor", target_cpu="x86_without_vnni").weights.bits == 8
    monkeypatch.setenv(target_cpu.ENVIRONMENT_VARIABLE, "x86_without_vnni")
    assert load_profile("ort_cpu_int8").weights.bits == 7
    monkeypatch.setenv(target_cpu.ENVIRONMENT_VARIABLE, "pentium")
    with pytest.raises(ValueError, match="pentium"):
        load_profile("ort_cpu_int8")


def test_lint_flags_full_range_weights_for_a_cpu_without_vnni():
    v, x = tiny_models.cnn_variables(), tiny_models.images()
    full = load_profile("ort_cpu_int8", target_cpu="x86_without_vnni").with_weights(bits=8)
    findings = lint(tiny_models.cnn, v, x, profile=full).of_kind("int8_saturation")
    assert len(findings) == 1 and "without VNNI" in findings[0].message
    assert "7-bit" in findings[0].fix
    reduced = load_profile("ort_cpu_int8", target_cpu="x86_without_vnni")
    assert not lint(tiny_models.cnn, v, x, profile=reduced).of_kind("int8_saturation")


def _real_images(n, size):
    """Fashion-MNIST test images, centre-cropped to the model's input and normalised."""
    images = np.asarray(fashion_mnist.load_split("test")[0][:n], np.float32).reshape(n, 28, 28)
    start = (28 - size) // 2
    crop = images[:, start:start + size, start:start + size, None] / 255.0
    return ((crop - 0.286) / 0.353).astype(np.float32)


def _vit_quantized_for(kind, x, tmp_path):
    """The tiny ViT's QDQ model for a CPU kind (a file) and the outputs on x of its
    fake-quant twin (without the quantizers the export left out)."""
    fn, variables, _ = zoo.instantiate("vit", batch=4)
    folded, v2, _ = fold_batchnorm(fn, variables, x[:4])
    q = fakequant.quantize(folded, v2, x[:4], profile=load_profile("ort_cpu_int8", kind))
    qp = calibration.calibrate(q, v2, [x], method="minmax")
    path = str(tmp_path / f"vit_{kind}.onnx")
    exported = qdq_export.to_qdq_onnx(q, v2, qp, x[:4], path)
    enabled = qdq_export.enabled_sites(exported.model, q)
    return path, np.asarray(q.apply(v2, qp, x, enabled=enabled))


def _run_on_emulated_avx2(paths, x, tmp_path):
    np.savez(tmp_path / "in.npz", x=x)
    subprocess.run([QEMU, "-cpu", AVX2_CPU, sys.executable, os.path.join(HERE, "ort_child.py"),
                    str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), *paths],
                   check=True, timeout=600, capture_output=True)
    outputs = np.load(tmp_path / "out.npz")
    return [outputs[f"y{i}"] for i in range(len(paths))]


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-user is not installed (scripts/setup.sh "
                    "installs it): no way to emulate a CPU without VNNI here")
def test_int8_model_is_exact_on_an_emulated_cpu_without_vnni(tmp_path):
    x = _real_images(16, 12)
    reduced_path, reduced_want = _vit_quantized_for("x86_without_vnni", x, tmp_path)
    full_path, full_want = _vit_quantized_for("x86_vnni", x, tmp_path)
    reduced_got, full_got = _run_on_emulated_avx2([reduced_path, full_path], x, tmp_path)
    scale = float(np.abs(reduced_want).max())
    reduced_error = np.abs(reduced_got - reduced_want) / scale
    full_error = np.abs(full_got - full_want) / float(np.abs(full_want).max())
    # The AVX2 kernels requantize along another rounding path than the VNNI ones (and than
    # fake-quant): an activation on a rounding boundary can land one step apart and move
    # the logits of that image a little (measured: 6 of 160 logits, all of image 2, off
    # by at most 0.0074 of the output scale; natively on a VNNI CPU the same file matches
    # to 2e-7). Most logits are exact, none is off by more than a rounding flip explains.
    assert float(np.mean(reduced_error <= 1e-3)) >= 0.9, reduced_error.max(axis=1)
    assert float(reduced_error.max()) <= 0.02, reduced_error.max(axis=1)
    # The emulation does reproduce the failure it guards against: full-range weights
    # made for a VNNI CPU are far off on the AVX2 one.
    assert float(full_error.max()) > 0.05, full_error.max(axis=1)
    assert float(full_error.max()) > 5 * float(reduced_error.max())

