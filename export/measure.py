"""Export a model and measure it on a device runner: what every experiment reports.

One call gives the ONNX file (parity-checked against JAX), its median latency at each
batch size on the named runner, and the model's exact FLOPs and parameter count from the
jaxpr, so before/after tables of every compression method are made the same way.
"""
import os
from typing import Dict, Sequence

import jax
import numpy as np

from core import cost
from export.onnx_export import to_onnx
from export.runners import get_runner


def export_and_measure(fn, variables, example_input, path: str, device: str = "ort-cpu-1t",
                       batches: Sequence[int] = (1, 32), runs: int = 30) -> Dict:
    one = jax.tree_util.tree_map(lambda a: np.asarray(a)[:1], example_input)
    report = cost.count(fn, variables, one)
    result = to_onnx(fn, variables, one, path=path)
    runner = get_runner(device)
    latency = {}
    for batch in batches:
        m = runner.measure(path, batch=batch, runs=runs)
        latency[f"batch{batch}_median_ms"] = m.median_ms
        latency[f"batch{batch}_p90_ms"] = m.p90_ms
    return {"onnx": os.path.abspath(path), "device": device,
            "flops": int(report.flops), "matmul_flops": int(report.matmul_flops),
            "params": int(report.params),
            "parity_max_rel_error": float(result.parity.max_relative_error) if result.parity else None,
            **latency}
