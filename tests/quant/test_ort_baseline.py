"""The quantize_static baseline gets its own preparation step (quant_pre_process) on every
model: on the ViT, whose broadcast shapes break onnxruntime's symbolic shape inference,
the tool's skip_symbolic_shape option is used and recorded, and the prepared model still
computes what the float export computes."""
import jax
import numpy as np

import export as export_lib
from export.parity import session
from models import zoo
from quant.comparison import ort_prepare


def test_vit_is_prepared_for_quantize_static_and_keeps_its_outputs(tmp_path):
    fn, variables, _ = zoo.instantiate("vit", batch=4)
    x = np.asarray(jax.random.normal(jax.random.key(0), (4, 12, 12, 1)), np.float32)
    path = str(tmp_path / "float.onnx")
    export_lib.to_onnx(fn, variables, x, path=path)
    prepared, how = ort_prepare(path, str(tmp_path / "ort"))
    assert how.startswith("quant_pre_process")
    got = session(prepared).run(None, {session(prepared).get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, np.asarray(fn(variables, x)), rtol=1e-4, atol=1e-5)
