"""Export a model and measure it on a device runner: what every experiment reports.

One call gives the ONNX file (parity-checked against JAX), its median latency at each
batch size on the named runner, and the model's exact FLOPs and parameter count from the
jaxpr, so before/after tables of every compression method are made the same way.
``export_and_compare`` does it for several models and times them interleaved
(``runners.measure_interleaved``): on a shared machine, models timed one after the other
see different loads (a pruned selfie segmenter read 0.85x of the original that way, 1.0x
interleaved minutes later). ``export_tflite_and_compare`` does the same through
``export.to_tflite`` for the LiteRT runner, where TensorFlow (the converter) is installed.
"""
import os
from typing import Dict, Sequence, Tuple

import jax
import numpy as np

from core import cost
from export.onnx_export import to_onnx
from export.runners import get_runner, measure_interleaved


def _export(fn, variables, example_input, path: str, device: str,
            rtol: float = 1e-4) -> Dict:
    """ONNX file, exact FLOPs and parameters of ``fn`` at batch 1."""
    one = jax.tree_util.tree_map(lambda a: np.asarray(a)[:1], example_input)
    report = cost.count(fn, variables, one)
    result = to_onnx(fn, variables, one, path=path, rtol=rtol)
    return {"onnx": os.path.abspath(path), "device": device,
            "flops": int(report.flops), "matmul_flops": int(report.matmul_flops),
            "params": int(report.params),
            "parity_max_rel_error": (float(result.parity.max_relative_error)
                                     if result.parity else None)}


def _latency_fields(measurements) -> Dict:
    return {f"batch{b}_{stat}_ms": getattr(m, f"{stat}_ms")
            for b, m in measurements.items() for stat in ("median", "p90")}


def export_and_measure(fn, variables, example_input, path: str, device: str = "ort-cpu-1t",
                       batches: Sequence[int] = (1, 32), runs: int = 30) -> Dict:
    result = _export(fn, variables, example_input, path, device)
    runner = get_runner(device)
    return {**result, **_latency_fields(
        {b: runner.measure(path, batch=b, runs=runs) for b in batches})}


def export_and_compare(models: Dict[str, Tuple], example_input, directory: str,
                       device: str = "ort-cpu-1t", batches: Sequence[int] = (1, 32),
                       runs: int = 30, rounds: int = 3, rtol: float = 1e-4
                       ) -> Dict[str, Dict]:
    """``{name: (fn, variables)}`` -> ``{name: export_and_measure's fields}``, each model
    exported to ``directory/name.onnx`` (parity within ``rtol`` of the output scale) and
    all timed in interleaved rounds."""
    os.makedirs(directory, exist_ok=True)
    results = {name: _export(fn, variables, example_input,
                             os.path.join(directory, f"{name}.onnx"), device, rtol)
               for name, (fn, variables) in models.items()}
    return _timed_interleaved(results, "onnx", device, batches, runs, rounds)


def _timed_interleaved(results: Dict[str, Dict], file_key: str, device: str,
                       batches: Sequence[int], runs: int, rounds: int) -> Dict[str, Dict]:
    """``results`` with each model's latency fields added, every ``result[file_key]`` timed
    on ``device`` in the same interleaved rounds."""
    timed = measure_interleaved(get_runner(device), [r[file_key] for r in results.values()],
                                batches=tuple(batches), runs=runs, rounds=rounds)
    for result, measurements in zip(results.values(), timed):
        result.update(_latency_fields(measurements))
    return results


def export_tflite_and_compare(models: Dict[str, Tuple], example_input, directory: str,
                              device: str = "litert-cpu-1t", runs: int = 30,
                              rounds: int = 3) -> Dict[str, Dict]:
    """``{name: (fn, variables)}`` -> ``{name: {tflite, device, batch1_median_ms, ...}}``,
    each model converted to ``directory/name.tflite`` at batch 1 (parity-checked on
    ``example_input``) and all timed in interleaved rounds on ``device``. Raises ImportError
    naming requirements-tflite.txt when TensorFlow is missing."""
    from export.tflite_export import to_tflite
    os.makedirs(directory, exist_ok=True)
    one = jax.tree_util.tree_map(lambda a: np.asarray(a)[:1], example_input)
    results = {}
    for name, (fn, variables) in models.items():
        path = os.path.join(directory, f"{name}.tflite")
        converted = to_tflite(fn, variables, one, path=path)
        results[name] = {"tflite": os.path.abspath(path), "device": device,
                         "parity_max_rel_error": converted.parity.max_relative_error,
                         "op_counts": converted.op_counts}
    return _timed_interleaved(results, "tflite", device, (1,), runs, rounds)
