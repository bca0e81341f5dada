"""The machine a benchmark or an experiment ran on, written next to every result.

These machines are shared and noisy: the CPU model, core count, library versions and the
load average at the start say how far a table's absolute times can be trusted.
"""
import os
import platform
from importlib import metadata


def describe(*packages: str) -> dict:
    """CPU, cores, platform, Python, load average and the versions of ``packages``
    (jax and onnxruntime always)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    for name in ("jax", "onnxruntime") + packages:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    return info


def line(info: dict, *packages: str) -> str:
    """The machine in one phrase for a result's markdown ("AMD EPYC, 2 cores (shared; load
    average 1.4 at start), jax 0.10.2"): what ``describe`` recorded, ``packages`` in order."""
    start, end = (_one_minute(info.get(k)) for k in ("load_average_at_start",
                                                      "load_average_at_end"))
    text = f"{info['cpu']}, {info['cores']} cores (shared; load average "
    text += "unknown" if start is None else f"{start:.1f}"
    text += " at start" + ("" if end is None else f", {end:.1f} at end")
    return text + ")" + "".join(f", {name} {info.get(name)}" for name in packages)


def _one_minute(load):
    """The 1-minute load average; result files of different ages stored a triple, one
    number, or nothing."""
    return load[0] if isinstance(load, (list, tuple)) else load
