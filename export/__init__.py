"""ONNX export with parity checks, device runners, latency tables and a latency model.

``to_onnx`` exports any ``fn(variables, *inputs)`` (``to_tflite`` to .tflite, with TensorFlow
installed); ``get_runner("ort-cpu-1t")`` (or ``"litert-cpu-1t"``) measures an
ONNX model on a device; ``LatencyTable`` and ``LatencyModel`` predict latency from a jaxpr.
"""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)
from export.onnx_export import ExportResult, to_onnx, trace
from export.preflight import HardCodedBatchError, SymbolicBatchError, UnsupportedPrimitiveError
from export.parity import ExportParityError, ParityReport, check_parity, compare
from export.latency_model import Calibration, LatencyModel, extract_ops
from export.latency_table import LatencyTable, OpSignature
from export.runners import CommandRunner, Measurement, OrtCpuRunner, get_runner, register_runner
from export.litert_runner import LiteRTCpuRunner      # registers the device "litert-cpu-1t"
from export.tflite_export import TFLiteExportResult, to_tflite
