"""Which int8 dot product the runner's CPU has, and what a profile must change to stay exact.

Why: on x86 without VNNI, onnxruntime's u8s8 kernels (QLinearConv, QGemm, MatMulInteger)
multiply with VPMADDUBSW, which adds two uint8 x int8 products into a SATURATING int16:
255 * 127 * 2 = 64770 > 32767, so a full-range int8 model is silently wrong there
(measured under an emulated AVX2 CPU: error 0.96 on ViT outputs of scale 1.92; top-1
agreement 0.69-0.78 on ResNet-20s). With 7-bit weights (|w| <= 63) the pair sum stays
below 32767: onnxruntime calls this ``reduce_range``. VNNI (VPDPBUSD) and AMX accumulate
in int32, and the ARM kernels widen first, so they keep full 8-bit weights.

A profile lists, per CPU kind, what changes (``host_cpu_adjustments`` in its JSON); the
kind is that of the machine the int8 model runs on: this host by default, or the
``QUANT_TARGET_CPU`` environment variable / ``load_profile(..., target_cpu=...)`` for a
model built here and deployed elsewhere.
"""
import os
import platform
from typing import Iterable, Optional

# CPU kind -> how to recognise it from /proc/cpuinfo flags (x86 only; order matters).
X86_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})
KINDS = {
    "x86_vnni": "x86 with VNNI/AMX: int8 dot products accumulate in int32",
    "x86_without_vnni": "x86 without VNNI (AVX2/AVX-512F only): onnxruntime's u8s8 kernels "
                        "add pairs of products in a saturating int16",
    "not_x86": "not x86 (ARM and others): onnxruntime widens before accumulating",
}
ENVIRONMENT_VARIABLE = "QUANT_TARGET_CPU"


def _cpu_flags(cpuinfo_text: Optional[str]) -> set:
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            return set()
    for line in cpuinfo_text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def kind_from_flags(flags: Iterable[str], machine: str) -> str:
    if machine.lower() not in ("x86_64", "amd64", "i686", "i386", "x86"):
        return "not_x86"
    return "x86_vnni" if X86_VNNI_FLAGS & set(flags) else "x86_without_vnni"


def host_kind(cpuinfo_text: Optional[str] = None, machine: Optional[str] = None) -> str:
    """This machine's kind (one of ``KINDS``), from /proc/cpuinfo and the architecture."""
    return kind_from_flags(_cpu_flags(cpuinfo_text), machine or platform.machine())


def target_kind(requested: Optional[str] = None) -> str:
    """The kind int8 models are made for: ``requested``, else $QUANT_TARGET_CPU, else the
    host's own kind."""
    kind = requested or os.environ.get(ENVIRONMENT_VARIABLE) or host_kind()
    if kind not in KINDS:
        raise ValueError(f"unknown target CPU kind {kind!r} (from "
                         f"{'the argument' if requested else ENVIRONMENT_VARIABLE}); "
                         f"use one of {sorted(KINDS)}")
    return kind


def u8s8_saturates(kind: str, weight_bits: int, weights_signed: bool = True,
                   activations_unsigned: bool = True, activation_bits: int = 8) -> bool:
    """Whether a uint8 x int8 pair sum can overflow int16 on a CPU of this kind."""
    if kind != "x86_without_vnni" or not (weights_signed and activations_unsigned):
        return False
    largest_pair = 2 * (2 ** activation_bits - 1) * 2 ** (weight_bits - 1)
    return largest_pair > 2 ** 15 - 1
