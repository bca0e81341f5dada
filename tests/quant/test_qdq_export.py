"""int8 QDQ ONNX export: onnxruntime runs it with integer kernels and agrees with the JAX
fake-quant model (top-1 agreement and max error are printed for the issue notes)."""
import numpy as np
import onnx
import pytest

from quant import calibration, fakequant, qdq_export
from quant.batchnorm_folding import fold_batchnorm
from tests.quant import tiny_models


@pytest.fixture(scope="module")
def exported():
    v = tiny_models.cnn_variables(width=16)
    x = tiny_models.images(32, 12)
    fn2, v2, _ = fold_batchnorm(tiny_models.cnn, v, x)
    q = fakequant.quantize(fn2, v2, x, profile="ort_cpu_int8")
    qp = calibration.calibrate(q, v2, [x], method="mse")
    result = qdq_export.to_qdq_onnx(q, v2, qp, x)
    return q, v2, qp, x, result


def test_qdq_graph_holds_int8_weights_and_our_scales(exported):
    q, v2, qp, x, result = exported
    ops = [n.op_type for n in result.model.graph.node]
    n_acts = sum(s.kind == "activation" for s in q.sites.values())
    assert ops.count("QuantizeLinear") >= n_acts
    assert set(result.weight_initializers) == {"c1/kernel", "c2/kernel", "c3/kernel",
                                               "head/kernel"}
    assert not result.float_weights
    inits = {i.name: i for i in result.model.graph.initializer}
    int8 = [i for i in inits.values() if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= 4 and not any(
        i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4 for i in inits.values())
    scales = {float(np.asarray(s)) for s in qp["scale"].values() if np.ndim(s) == 0}
    stored = {float(onnx.numpy_helper.to_array(i)) for i in inits.values()
              if i.data_type == onnx.TensorProto.FLOAT and not i.dims}
    assert scales <= stored


def test_onnxruntime_runs_integer_kernels_and_agrees_with_jax(exported):
    q, v2, qp, x, result = exported
    check = qdq_export.check(result.model, q, v2, qp, np.asarray(x))
    print(f"\nQDQ parity: top-1 agreement {check.top1_agreement:.3f}, max |ort - jax| "
          f"{check.max_abs_error:.3g} (output scale {check.output_scale:.3g}); "
          f"integer ops {check.integer_ops}, float ops {check.float_ops}")
    assert check.integer_ops.get("QLinearConv", 0) == 3
    assert not check.float_ops.get("Conv") and not check.float_ops.get("FusedConv")
    assert check.top1_agreement >= 0.95
    # one int8 step of the output is the tolerance: rounding ties may differ by one step
    assert check.max_abs_error <= 0.05 * check.output_scale
