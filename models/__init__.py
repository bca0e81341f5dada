"""Plain Flax models with no compression hooks; ``models.zoo`` lists them as data."""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)
