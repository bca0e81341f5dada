"""benchmarks package."""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)
