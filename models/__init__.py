"""Plain Flax models with no compression hooks; ``models.zoo`` lists them as data."""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)


def from_tflite(path, outputs=None):
    """``(fn, variables, example_input)`` of a .tflite model (``models.tflite_import``)."""
    from models.tflite_import import from_tflite as _from_tflite
    return _from_tflite(path, outputs)


def from_onnx(path, input_shape=None, outputs=None):
    """``(fn, variables, example_input)`` of an .onnx model (``models.onnx_import``);
    ``input_shape`` is needed where the model's input has dynamic dimensions."""
    from models.onnx_import import from_onnx as _from_onnx
    return _from_onnx(path, input_shape, outputs)
