"""The LiteRT device: latency of a .tflite model in ``ai-edge-litert``'s interpreter on this CPU.

Why a second runner: a compressed model ships to phones and boards as .tflite far more often
than as ONNX, and a latency gain measured in onnxruntime need not hold in LiteRT (other
kernels, other fusions, XNNPACK instead of MLAS). ``get_runner("litert-cpu-1t")`` answers
the same ``measure(model, batch, ...) -> Measurement`` as ``ort-cpu-1t``, so
``measure_interleaved``, the latency tables and the experiments use it unchanged.

The interpreter is LiteRT's default CPU path: its builtin kernels with the XNNPACK delegate
applied automatically (``OpResolverType.AUTO``), at a fixed thread count. A model is the
flatbuffer's bytes or a path. A timed run is what onnxruntime's ``session.run`` does: copy
the inputs in, invoke, copy every output out. Only ``ai-edge-litert`` is needed (no
TensorFlow): it is imported when a model is measured.
"""
import os
import pathlib
import time
from typing import List, Optional, Sequence, Union

import numpy as np

from export.runners import (Measurement, Runner, _read_status_kb, _reset_peak_rss,
                            register_runner, summarize)

TFLiteModel = Union[bytes, bytearray, str, os.PathLike]


def _model_bytes(model: TFLiteModel) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    return pathlib.Path(model).read_bytes()


def interpreter(model: TFLiteModel, threads: int = 1):
    """A LiteRT interpreter of ``model`` on the default CPU path (XNNPACK), tensors allocated."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError("the LiteRT runner needs the pinned ai-edge-litert package: run "
                          "`bash scripts/setup.sh`") from error
    runtime = Interpreter(model_content=_model_bytes(model), num_threads=threads)
    runtime.allocate_tensors()
    return runtime


def resize_batch(runtime, batch: int) -> None:
    """Sets axis 0 of every input to ``batch``. A model converted with a static batch can
    only be resized where none of its ops bakes that batch in (a reshape's target shape);
    otherwise this raises saying to export at that batch."""
    details = runtime.get_input_details()
    if all(d["shape"].size and d["shape"][0] == batch for d in details):
        return
    try:
        for d in details:
            if d["shape"].size:
                runtime.resize_tensor_input(d["index"], [batch, *d["shape"][1:]])
        runtime.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        stored = [tuple(d["shape_signature"]) for d in details]
        raise ValueError(f"this .tflite model (inputs {stored}) does not run at batch "
                         f"{batch}: export it with example inputs of batch {batch} "
                         f"(LiteRT: {error})") from error


def random_inputs(runtime, seed: int = 0, int_high: int = 2) -> List[np.ndarray]:
    """One array per input of ``runtime`` in its current shape and dtype."""
    rng = np.random.default_rng(seed)
    feeds = []
    for d in runtime.get_input_details():
        shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
        if dtype == np.bool_:
            feeds.append(rng.integers(0, 2, shape).astype(bool))
        elif np.issubdtype(dtype, np.integer):
            feeds.append(rng.integers(0, int_high, shape).astype(dtype))
        else:
            feeds.append(rng.standard_normal(shape).astype(dtype))
    return feeds


def run(runtime, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Copies ``inputs`` in (in input-detail order), invokes, returns copies of the outputs
    in output-detail order."""
    for d, x in zip(runtime.get_input_details(), inputs):
        runtime.set_tensor(d["index"], np.asarray(x, d["dtype"]))
    runtime.invoke()
    return [runtime.get_tensor(d["index"]) for d in runtime.get_output_details()]


class LiteRTCpuRunner(Runner):
    """LiteRT (XNNPACK) on this CPU with a fixed thread count, in process. Peak memory is the
    growth of the process's peak resident set while the interpreter is built and run, as
    for ``OrtCpuRunner``."""

    model_format = "tflite"

    def __init__(self, threads: int = 1, warmup: int = 10, runs: int = 50,
                 min_time_s: float = 0.0, name: Optional[str] = None):
        self.threads, self.warmup, self.runs, self.min_time_s = threads, warmup, runs, min_time_s
        self.name = name or f"litert-cpu-{threads}t"

    def measure(self, model, batch=1, inputs: Optional[Sequence[np.ndarray]] = None,
                runs=None, warmup=None) -> Measurement:
        """``inputs``: one array per model input (input-detail order), else random ones of
        the model's signature with axis 0 set to ``batch``."""
        rss_before = _read_status_kb("VmRSS")
        can_track = _reset_peak_rss() and rss_before is not None
        runtime = interpreter(model, self.threads)
        if inputs is None:
            resize_batch(runtime, batch)
            inputs = random_inputs(runtime)
        else:
            resize_batch(runtime, int(np.shape(inputs[0])[0]))
        for _ in range(self.warmup if warmup is None else warmup):
            run(runtime, inputs)
        samples, start = [], time.perf_counter()
        n = self.runs if runs is None else runs
        while len(samples) < n or time.perf_counter() - start < self.min_time_s:
            t0 = time.perf_counter()
            run(runtime, inputs)
            samples.append((time.perf_counter() - t0) * 1e3)
        peak = None
        if can_track:
            peak = max(0, (_read_status_kb("VmHWM") or 0) - rss_before) * 1024
        return summarize(self.name, samples, peak)


register_runner("litert-cpu-1t", lambda: LiteRTCpuRunner(threads=1))
