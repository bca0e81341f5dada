"""A device-specific search: one set of distilled students and one accuracy predictor, a
latency constraint per device, and the proof that the choice depends on the device.

Why: DONNA's point is that the best architecture for a phone's NPU is not the best for its
CPU; a search that ranks by FLOPs, or by one runner's latency, hands every device the same
model. Here each device (a runner name: ``ort-cpu-1t`` times ONNX in onnxruntime,
``litert-cpu-1t`` a .tflite flatbuffer in LiteRT/XNNPACK) gets its own latency predictor,
fitted on that device's own measurements, and its own NSGA-II front. The comparison is made
at equal accuracy: the accuracy target is the highest predicted accuracy that every
device's front reaches, and each device takes the fastest architecture of its own front
that reaches it (``equal_accuracy_choice``). Every device's choice (and the teacher) is
then exported in each device's format and timed on each device in one set of interleaved
rounds, and ``verdict`` says, per device, whether its own choice is the fastest there (no
verdict where the devices chose the same architecture).

The experiment (``experiments/nas_devices.py``) measures and caches; this module holds the
choice and the comparison, so they are tested without a device.
"""
from typing import Callable, Dict, List, Sequence

import numpy as np

from nas import architecture
from nas.search_space import Architecture


def accuracy_target(fronts: Dict[str, Sequence[Architecture]], predict_accuracy: Callable,
                    tolerance: float = 0.0) -> float:
    """The highest predicted accuracy every device's front reaches (less ``tolerance``):
    the level at which the devices' choices are compared."""
    return min(float(np.max(predict_accuracy(list(front)))) for front in fronts.values()) \
        - tolerance


def equal_accuracy_choice(front: Sequence[Architecture], predict_accuracy: Callable,
                          predict_latency: Callable, target: float) -> Architecture:
    """The architecture of ``front`` with the lowest predicted latency on its device among
    those predicted at least ``target`` accurate (the most accurate one if none is)."""
    archs = list(front)
    accuracy = np.asarray(predict_accuracy(archs), np.float64)
    latency = np.asarray(predict_latency(archs), np.float64)
    eligible = np.flatnonzero(accuracy >= target - 1e-12)
    if not len(eligible):
        return tuple(archs[int(np.argmax(accuracy))])
    return tuple(archs[int(eligible[np.argmin(latency[eligible])])])


def cross_latencies(library, archs: Sequence[Architecture], runners: Dict[str, object],
                    input_shape, rounds: int, runs: int, seed: int = 0
                    ) -> Dict[str, List[dict]]:
    """``{device: [latency fields per arch]}``: every architecture exported in each
    device's format and timed on that device in one set of interleaved rounds, twice
    (``architecture.measure_latencies``)."""
    out = {}
    for device, runner in runners.items():
        models = [architecture.export_model(library, arch, input_shape, runner=runner)[0]
                  for arch in archs]
        out[device] = architecture.measure_latencies(runner, models, rounds, runs, seed)
    return out


def verdict(choices: Dict[str, dict], devices: Sequence[str]) -> Dict[str, dict]:
    """Per device: its own choice's latency there, the other devices' (different) choices'
    latencies there, and whether its own is the fastest (the device-specific claim; None
    when every device chose the same architecture), with the test accuracy gap to the
    others (own minus other, points) so that "at equal accuracy" is checked, not assumed.
    ``choices[d]`` holds ``arch``, ``latency_ms`` per device and ``test_accuracy``."""
    out = {}
    for device in devices:
        own = choices[device]
        others = {d: c for d, c in choices.items()
                  if d != device and list(c["arch"]) != list(own["arch"])}
        out[device] = {
            "own_latency_ms": own["latency_ms"][device],
            "other_latency_ms": {d: c["latency_ms"][device] for d, c in others.items()},
            "own_is_fastest": (all(own["latency_ms"][device] < c["latency_ms"][device]
                                   for c in others.values()) if others else None),
            "speedup_vs_other": {d: c["latency_ms"][device] / own["latency_ms"][device]
                                 for d, c in others.items()},
            "accuracy_gap_pt": {d: 100.0 * (own["test_accuracy"] - c["test_accuracy"])
                                for d, c in others.items()},
        }
    return out


def markdown(study: dict) -> str:
    """The device table: one row per device's choice, its test accuracy and its latency on
    every device (the choice's own device in bold)."""
    devices = study["devices"]
    lines = ["| chosen for | test accuracy | " + " | ".join(f"{d} ms" for d in devices)
             + " | blocks |", "|---" * (len(devices) + 3) + "|"]
    for device in devices:
        c = study["choices"][device]
        cells = [f"**{c['latency_ms'][d]:.3f}**" if d == device else f"{c['latency_ms'][d]:.3f}"
                 for d in devices]
        lines.append(f"| {device} | {c['test_accuracy']:.4f} | " + " | ".join(cells)
                     + f" | {' / '.join(c['choices'])} |")
    t = study["teacher"]
    lines.append("| (teacher) | " + f"{t['test_accuracy']:.4f} | "
                 + " | ".join(f"{t['latency_ms'][d]:.3f}" for d in devices) + " | |")
    return "\n".join(lines) + "\n"


__all__ = ["accuracy_target", "equal_accuracy_choice", "cross_latencies", "verdict",
           "markdown"]
