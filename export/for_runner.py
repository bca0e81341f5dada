"""One exporter per model format, chosen by the runner that will time the model.

Why: the NAS (and any study that measures the same network on several devices) must hand
each runner the file it executes: ``ort-cpu-*`` times ONNX, ``litert-cpu-*`` times a .tflite
flatbuffer. A runner names its format (``Runner.model_format``); ``export_for`` looks the
exporter up in ``EXPORTERS`` instead of branching on device names, so a new runner with a
new format adds one row here and nothing in the callers.

Every exporter takes ``fn(variables, x)`` at a static batch and returns ``ExportedModel``:
the bytes or proto the runner measures, the op count and, with ``parity``, the largest
relative error against JAX on the example input (the exporters raise above their
tolerance).
"""
import dataclasses
from typing import Any, Callable, Dict, Optional

import numpy as np


@dataclasses.dataclass
class ExportedModel:
    model: Any                      # onnx.ModelProto or .tflite bytes: what the runner takes
    model_format: str               # "onnx" | "tflite"
    op_count: int
    parity_max_rel_error: Optional[float] = None

    def fields(self) -> Dict[str, Any]:
        """The record a result row keeps: the op count under its format's name, parity."""
        out: Dict[str, Any] = {f"{self.model_format}_ops": self.op_count}
        if self.parity_max_rel_error is not None:
            out["parity_max_rel_error"] = self.parity_max_rel_error
        return out


def _parity(result) -> Optional[float]:
    return None if result.parity is None else float(result.parity.max_relative_error)


def _onnx(fn, variables, x, path, parity) -> ExportedModel:
    from export.onnx_export import to_onnx
    result = to_onnx(fn, variables, x, path=path, dynamic_batch=False, parity=parity)
    return ExportedModel(result.model, "onnx", sum(result.op_counts.values()), _parity(result))


def _tflite(fn, variables, x, path, parity) -> ExportedModel:
    from export.tflite_export import to_tflite
    result = to_tflite(fn, variables, x, path=path, parity=parity)
    return ExportedModel(result.model, "tflite", sum(result.op_counts.values()),
                         _parity(result))


EXPORTERS: Dict[str, Callable[..., ExportedModel]] = {"onnx": _onnx, "tflite": _tflite}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}


def model_format(runner_or_format) -> str:
    """The format a runner measures (its ``model_format``), or the format string itself."""
    if isinstance(runner_or_format, str):
        return runner_or_format
    return getattr(runner_or_format, "model_format", "onnx")


def export_for(runner_or_format, fn, variables, x, path: Optional[str] = None,
               parity: bool = False) -> ExportedModel:
    """``fn(variables, x)`` exported at ``x``'s static shape in the format the runner times."""
    fmt = model_format(runner_or_format)
    if fmt not in EXPORTERS:
        raise ValueError(f"no exporter for model format {fmt!r} (runner "
                         f"{getattr(runner_or_format, 'name', runner_or_format)!r}); "
                         f"known: {sorted(EXPORTERS)}")
    return EXPORTERS[fmt](fn, variables, np.asarray(x), path, parity)


__all__ = ["ExportedModel", "EXPORTERS", "SUFFIX", "model_format", "export_for"]
