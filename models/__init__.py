"""Plain Flax models with no compression hooks; ``models.zoo`` lists them as data."""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)


def from_tflite(path, outputs=None):
    """``(fn, variables, example_input)`` of a .tflite model (``models.tflite_import``)."""
    from models.tflite_import import from_tflite as _from_tflite
    return _from_tflite(path, outputs)
