"""XLA flags that keep JAX numerically correct on CPU, set before JAX builds its backend.

Why: jaxlib 0.10.2's XLA:CPU fuses conv -> depthwise conv -> residual add with a channel
pad -> 2x2 max-pool through YNNPACK and computes it wrongly (``jax.jit(f)`` and eager ``f``
differ by 7.0; an imported face detector's scores were off by 24). Upstream also reports
crashes and hangs of that fusion in 0.10.x and 0.11.x. Turning the fusion off is exact and,
on AVX2-only machines, even faster (ResNet-20 training ran 1.6x faster).

Which fusion types stay on: ``individual_dot`` only (single dots through YNNPACK, nothing
fused). With the list empty, XLA:CPU's own dot emitter is left for every dot and cannot
compile a bfloat16 dot with several contracting dimensions ('UNIMPLEMENTED: Dot with
multiple contracting dimensions'; jax.nn.dot_product_attention with a head_dim of one, as
pruning makes). Measured on jaxlib 0.10.2 with the miscompiled graph of
tests/core/test_xla_workarounds.py: the types ``reduce`` and ``eltwise`` each reproduce the
wrong numbers on their own; ``individual_dot``, ``dot`` and ``individual_convolution`` do not.

XLA reads ``XLA_FLAGS`` once, when the first backend is created (the first computation or
``jax.devices()``), not at ``import jax``; so every package of the project imports this
module first, and any program that imports one of them before computing gets the fix.
A flag XLA does not know aborts the process, so each workaround names the jaxlib versions
that have it. A user who sets the flag themselves keeps their value, and
``COMPRESS_XLA_WORKAROUNDS=0`` leaves XLA's defaults alone (for measuring them only:
benchmarks/xla_ynn_fusion.py).
"""
import importlib.metadata
import os
import sys
import warnings
from typing import NamedTuple, Tuple


class Workaround(NamedTuple):
    flag: str             # "--name=value"
    jaxlib_versions: Tuple[Tuple[int, int], ...]   # (major, minor) releases that need it
    why: str


WORKAROUNDS = (
    Workaround(
        flag="--xla_cpu_experimental_ynn_fusion_type=individual_dot",
        jaxlib_versions=((0, 10), (0, 11)),
        why="XLA:CPU's YNNPACK fusion miscompiles conv/depthwise/pad/max-pool graphs"),
)


def _jaxlib_release() -> Tuple[int, int]:
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return (0, 0)
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _backend_already_built() -> bool:
    """True when this process has created a JAX backend, so XLA_FLAGS is read already."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:   # a future jax without this private name: assume not built
        return False


def flags_needed(release: Tuple[int, int] = None) -> Tuple[str, ...]:
    """The workaround flags for a jaxlib release (default: the installed one)."""
    release = release or _jaxlib_release()
    return tuple(w.flag for w in WORKAROUNDS if release in w.jaxlib_versions)


def apply() -> Tuple[str, ...]:
    """Appends the needed flags to XLA_FLAGS (unless the user set that flag); returns them."""
    if os.environ.get("COMPRESS_XLA_WORKAROUNDS", "1") == "0":
        return ()
    current = os.environ.get("XLA_FLAGS", "")
    added = tuple(flag for flag in flags_needed()
                  if flag.split("=")[0] + "=" not in current)
    if not added:
        return ()
    if _backend_already_built():
        warnings.warn(
            "JAX's CPU backend was created before the project was imported, so these XLA "
            f"workarounds are not active: {' '.join(added)}. Import the project (or set "
            "XLA_FLAGS) before the first JAX computation; results of jitted conv graphs "
            "may be wrong.", RuntimeWarning, stacklevel=2)
        return ()
    os.environ["XLA_FLAGS"] = " ".join(part for part in (current, *added) if part)
    return added


apply()
