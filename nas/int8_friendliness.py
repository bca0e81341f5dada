"""Int8 friendliness as a search objective: the quantization linter run on every block option.

An architecture that an integer NPU cannot run (GELU, LayerNorm, softmax on some profiles) or
that quantizes badly (unbounded activations where a bounded one would serve, per-channel
weight ranges far apart under per-tensor quantization, activation outliers) costs accuracy
or a float fallback on the device. ``quant.lint`` finds these patterns on any JAX function,
so each block option (the teacher's block and every student) is linted once, on the
teacher's real input activations at its position, and an architecture's score is the sum of
its options' penalties: exact and additive, no predictor needed. Errors (will not run on the
profile) weigh ``error_weight`` times a warning (will lose accuracy).
"""
from typing import Dict, List

import jax.numpy as jnp
import numpy as np

from data import pipeline
from nas.search_space import Architecture


def position_inputs(library, images: np.ndarray) -> List[jnp.ndarray]:
    """The teacher's input activation at every searched position for a batch of images."""
    wanted = {index: p for p, index in enumerate(library.space.positions)}
    inputs: List[jnp.ndarray] = [None] * len(wanted)
    x = jnp.asarray(images)
    for i, block in enumerate(library.blocks):
        if i in wanted:
            inputs[wanted[i]] = x
        x = library._jitted_fixed(i)(block.variables, x)
    return inputs


def option_penalties(library, dataset, profile: str, images: int = 64,
                     error_weight: float = 10.0) -> List[np.ndarray]:
    """Per position, the lint penalty of each option (``[p][option]``), plus the findings'
    kinds for the report."""
    x = pipeline.normalize(dataset.validation[0][:images], dataset.mean, dataset.std)
    from quant.lint import lint
    penalties = []
    for p, x_p in enumerate(position_inputs(library, x)):
        row = []
        for option in library.options[p]:
            report = lint(option.fn, option.variables, x_p, profile=profile)
            errors = sum(f.severity == "error" for f in report.findings)
            row.append(error_weight * errors + len(report.findings) - errors)
        penalties.append(np.asarray(row, np.float64))
    return penalties


def architecture_penalty(penalties: List[np.ndarray], archs: List[Architecture]) -> np.ndarray:
    """Sum over positions of the chosen options' penalties, for a batch of architectures."""
    return np.array([sum(penalties[p][a[p]] for p in range(len(a))) for a in archs])


def int8_model(library, arch: Architecture, dataset, profile: str,
               calibration_images: int = 512, batch_size: int = 128):
    """``(fn, variables)``: the assembled architecture quantized on ``profile`` in
    fake-quant: BatchNorm folded, post-training quantization calibrated (MSE ranges) on the
    first ``calibration_images`` training images (``quant.comparison.ptq``)."""
    from nas.architecture import assemble
    from quant import batchnorm_folding, comparison
    fn, variables = assemble(library, arch)
    batches = comparison.calibration_batches(dataset, calibration_images, batch_size)
    fn_f, v_f, _ = batchnorm_folding.fold_batchnorm(fn, variables, batches[0])
    run = comparison.ptq(fn_f, v_f, profile, batches, dict(
        calibration="mse", percentile=99.99, weight_calibration="minmax", equalize=False,
        bias_correction=False))
    return run["model"].fn(run["qparams"]), run["variables"]


def int8_accuracy(library, arch: Architecture, dataset, profile: str, **kw) -> float:
    """Test accuracy of ``int8_model``: what an architecture chosen with or without the
    int8 objective keeps once quantized."""
    from quant import comparison
    return comparison.accuracy(*int8_model(library, arch, dataset, profile, **kw), dataset)


def describe(library, penalties: List[np.ndarray]) -> Dict[str, float]:
    """Penalty of every (position, option) by name, for results.json."""
    return {f"{p}:{option.choice.key}": float(penalties[p][o])
            for p in range(len(penalties)) for o, option in enumerate(library.options[p])}


__all__ = ["position_inputs", "option_penalties", "architecture_penalty", "int8_model",
           "int8_accuracy", "describe"]
