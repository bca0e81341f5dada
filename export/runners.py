"""Device runners: measure the latency of an ONNX model on a named device.

Configs name a device as a string (``device="ort-cpu-1t"``); ``get_runner`` turns it into a
runner. Every runner answers ``measure(model) -> Measurement`` with the median and p90 of
many timed runs after a warm-up, so the rest of the code never cares whether the device is
this CPU or a phone behind adb. Two kinds:

- ``OrtCpuRunner``: onnxruntime on this CPU with a fixed thread count, in process. Peak memory
  is the growth of the process's peak resident set (VmHWM, reset through
  /proc/self/clear_refs) while the session is built and run.
- ``CommandRunner``: a remote device driven by shell commands: one pushes the ONNX file, one
  runs it and prints latencies, parsed from stdout with a regular expression. Templates see
  ``{model}`` (local path), ``{name}`` (file name), ``{runs}``, ``{warmup}``, ``{threads}``
  and ``{batch}``. Register one with ``register_runner``.
"""
import dataclasses
import os
import re
import shlex
import subprocess
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import onnx

from export.parity import session


@dataclasses.dataclass
class Measurement:
    device: str
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    peak_memory_bytes: Optional[int] = None
    samples_ms: Optional[List[float]] = None

    def as_dict(self):
        d = dataclasses.asdict(self)
        d.pop("samples_ms")
        return d


def summarize(device: str, samples_ms: Sequence[float], peak=None) -> Measurement:
    samples = np.asarray(samples_ms, np.float64)
    return Measurement(device, float(np.median(samples)), float(np.percentile(samples, 90)),
                       float(samples.mean()), len(samples), peak, list(map(float, samples)))


def random_inputs(model: onnx.ModelProto, batch: int = 1, seed: int = 0,
                  int_high: int = 2) -> Dict[str, np.ndarray]:
    """Inputs matching the model's input signature; symbolic dims become ``batch``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, int_high, shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _as_model(model: Union[str, onnx.ModelProto]) -> onnx.ModelProto:
    return onnx.load(model) if isinstance(model, (str, os.PathLike)) else model


def simd_floats(cpuinfo_path: str = "/proc/cpuinfo") -> int:
    """Floats per SIMD register of this CPU: 16 with AVX-512, 8 with AVX2, else 4 (SSE,
    NEON). onnxruntime's NCHWc convolutions block channels by it: a conv whose channel
    counts are not multiples of it falls out of the blocked layout, and a pruned model can
    run slower than the unpruned one (benchmarks/results/width_rounding.md: unrounded widths
    0.76x the original's speed at 1.49x fewer FLOPs, multiples of 16 on AVX-512 1.19x)."""
    try:
        with open(cpuinfo_path) as f:
            flags = set(next((line.split(":", 1)[1].split() for line in f
                              if line.startswith("flags")), []))
    except OSError:
        return 4
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 4


class Runner:
    """Interface: a device name, ``measure`` and ``channel_multiple``, the channel-count
    step its kernels reward (pruning rounds kept widths to it when told to follow the
    device: ``gates.multiple = 0``)."""
    name: str = "abstract"
    warmup: int = 10
    runs: int = 50
    channel_multiple: int = 8
    model_format: str = "onnx"      # what ``measure`` takes (export.for_runner.EXPORTERS)

    def measure(self, model, batch: int = 1, inputs: Optional[Dict[str, np.ndarray]] = None,
                runs: Optional[int] = None, warmup: Optional[int] = None) -> Measurement:
        raise NotImplementedError


def measure_interleaved(runner: Runner, models: Sequence, batches: Sequence[int] = (1, 32),
                        runs: int = 50, rounds: int = 3) -> List[Dict[int, Measurement]]:
    """Side-by-side latency on a shared, noisy machine: ``rounds`` rounds, each timing every
    model at every batch, so load drift hits all models alike; per model and batch one
    Measurement over the pooled samples of all rounds."""
    samples = [{b: [] for b in batches} for _ in models]
    for _ in range(rounds):
        for per_batch, model in zip(samples, models):
            for b in batches:
                per_batch[b] += runner.measure(model, batch=b, runs=runs).samples_ms
    return [{b: summarize(runner.name, s[b]) for b in batches} for s in samples]


def _read_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class OrtCpuRunner(Runner):
    def __init__(self, threads: int = 1, warmup: int = 10, runs: int = 50,
                 min_time_s: float = 0.0, name: Optional[str] = None):
        self.threads, self.warmup, self.runs, self.min_time_s = threads, warmup, runs, min_time_s
        self.name = name or f"ort-cpu-{threads}t"
        self.channel_multiple = simd_floats()

    def measure(self, model, batch=1, inputs=None, runs=None, warmup=None) -> Measurement:
        proto = _as_model(model)
        feeds = inputs if inputs is not None else random_inputs(proto, batch)
        rss_before = _read_status_kb("VmRSS")
        can_track = _reset_peak_rss() and rss_before is not None
        sess = session(proto, threads=self.threads)
        for _ in range(self.warmup if warmup is None else warmup):
            sess.run(None, feeds)
        samples, start = [], time.perf_counter()
        n = self.runs if runs is None else runs
        while len(samples) < n or time.perf_counter() - start < self.min_time_s:
            t0 = time.perf_counter()
            sess.run(None, feeds)
            samples.append((time.perf_counter() - t0) * 1e3)
        peak = None
        if can_track:
            peak = max(0, (_read_status_kb("VmHWM") or 0) - rss_before) * 1024
        return summarize(self.name, samples, peak)


DEFAULT_LATENCY_PATTERN = r"latency[_ ]?(?:ms)?\s*[:=]\s*([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?\d+)?)"


class CommandRunner(Runner):
    """A device reached by commands (adb, ssh, a board's CLI).

    ``push`` copies the model to the device (optional); ``run`` runs it there and prints one
    latency per run, or a single summary latency, in milliseconds; every match of
    ``pattern`` (first group) in stdout is a sample. ``scale`` converts to ms (1e-3 for us).
    ``channel_multiple`` is the channel step the device's kernels reward (NPUs: 8-32).
    """

    def __init__(self, name: str, run: str, push: Optional[str] = None,
                 pattern: str = DEFAULT_LATENCY_PATTERN, scale: float = 1.0,
                 warmup: int = 10, runs: int = 50, threads: int = 1, timeout_s: float = 600,
                 channel_multiple: int = 8):
        self.name, self.run_template, self.push_template = name, run, push
        self.channel_multiple = channel_multiple
        self.pattern, self.scale = re.compile(pattern, re.IGNORECASE), scale
        self.warmup, self.runs, self.threads, self.timeout_s = warmup, runs, threads, timeout_s

    def _call(self, template: str, fields: dict) -> str:
        command = template.format(**{k: shlex.quote(str(v)) if isinstance(v, str) else v
                                     for k, v in fields.items()})
        done = subprocess.run(command, shell=True, capture_output=True, text=True,
                              timeout=self.timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"device {self.name}: `{command}` failed ({done.returncode}):\n"
                               f"{done.stderr.strip()[-2000:]}")
        return done.stdout

    def measure(self, model, batch=1, inputs=None, runs=None, warmup=None) -> Measurement:
        if inputs is not None:
            raise ValueError("CommandRunner generates inputs on the device; pass batch only")
        with tempfile.TemporaryDirectory() as tmp:
            if isinstance(model, onnx.ModelProto):
                path = os.path.join(tmp, "model.onnx")
                onnx.save(model, path)
            else:
                path = str(model)
            fields = dict(model=path, name=os.path.basename(path), batch=batch,
                          runs=self.runs if runs is None else runs, threads=self.threads,
                          warmup=self.warmup if warmup is None else warmup)
            if self.push_template:
                self._call(self.push_template, fields)
            stdout = self._call(self.run_template, fields)
        samples = [float(m.group(1)) * self.scale for m in self.pattern.finditer(stdout)]
        if not samples:
            raise RuntimeError(f"device {self.name}: no latency matching "
                               f"{self.pattern.pattern!r} in output:\n{stdout[-2000:]}")
        return summarize(self.name, samples)


RUNNERS: Dict[str, Callable[[], Runner]] = {}
_ORT_CPU = re.compile(r"^ort-cpu-(\d+)t$")


def register_runner(name: str, factory: Callable[[], Runner]):
    """Makes ``get_runner(name)`` return ``factory()``; e.g. a CommandRunner for a phone."""
    RUNNERS[name] = factory


def get_runner(name: str, **overrides) -> Runner:
    """The runner for a device name: ``ort-cpu-<N>t`` or one registered by name."""
    if name in RUNNERS:
        runner = RUNNERS[name]()
    elif _ORT_CPU.match(name):
        runner = OrtCpuRunner(int(_ORT_CPU.match(name).group(1)))
    else:
        raise KeyError(f"unknown device {name!r}; known: ort-cpu-<N>t, {sorted(RUNNERS)}")
    for key, value in overrides.items():
        setattr(runner, key, value)
    return runner
