"""export.for_runner: the exporter is chosen by the format the runner measures."""
import jax.numpy as jnp
import numpy as np
import pytest

from export import for_runner
from export.runners import get_runner


def test_runners_name_their_format_and_unknown_formats_are_named():
    assert for_runner.model_format(get_runner("ort-cpu-1t")) == "onnx"
    assert for_runner.model_format(get_runner("litert-cpu-1t")) == "tflite"
    with pytest.raises(ValueError, match="'coreml'.*known: \\['onnx', 'tflite'\\]"):
        for_runner.export_for("coreml", lambda v, x: x, {}, np.zeros((1, 2), np.float32))


def test_onnx_export_through_the_table_keeps_parity_and_counts_ops():
    w = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
    exported = for_runner.export_for(get_runner("ort-cpu-1t"), lambda v, x: jnp.tanh(x @ v),
                                     w, np.ones((1, 4), np.float32), parity=True)
    assert exported.model_format == "onnx"
    assert exported.fields()["onnx_ops"] == len(exported.model.graph.node) >= 2
    assert exported.fields()["parity_max_rel_error"] < 1e-5
