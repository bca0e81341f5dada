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
