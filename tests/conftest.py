"""Shared test setup: the repository root on sys.path, CPU everywhere, and the project's XLA
workarounds in place before any test builds a JAX backend."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from core import xla_workarounds  # noqa: E402,F401  (XLA flags before any backend exists)
