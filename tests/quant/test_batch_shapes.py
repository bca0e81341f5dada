"""Prepared and fake-quant models work at any batch size, also for models whose program
has the batch in its shapes (a ViT reshapes to (batch, tokens, dim))."""
import jax
import numpy as np

from models import zoo
from quant import calibration, fakequant, qdq_export
from quant.batchnorm_folding import fold_batchnorm


def test_folded_and_fake_quant_vit_at_another_batch_size():
    fn, variables, _ = zoo.instantiate("vit", batch=4)
    x4 = np.asarray(jax.random.normal(jax.random.key(0), (4, 12, 12, 1)))
    x7 = np.asarray(jax.random.normal(jax.random.key(1), (7, 12, 12, 1)))
    folded, v2, _ = fold_batchnorm(fn, variables, x4)
    np.testing.assert_allclose(folded(v2, x7), fn(variables, x7), rtol=1e-4, atol=1e-5)

    q = fakequant.quantize(folded, v2, x4)
    qp = calibration.calibrate(q, v2, [x4], method="minmax")
    at_7 = jax.jit(q.fn(qp))(v2, x7)
    # The same sites and scales, analysed at batch 7 from the start: the same outputs.
    q7 = fakequant.quantize(folded, v2, x7)
    assert list(q7.sites) == list(q.sites)
    np.testing.assert_allclose(at_7, q7.fn(qp)(v2, x7), rtol=1e-5, atol=1e-5)
    assert not np.allclose(at_7, folded(v2, x7), atol=1e-6)          # it does quantize
    # Rows do not interact: batch 7's first 4 rows equal batch 4's outputs on them.
    x74 = np.concatenate([x4, x7[:3]])
    np.testing.assert_allclose(q.fn(qp)(v2, x74)[:4], q.fn(qp)(v2, x4), rtol=1e-5, atol=1e-5)


def test_vit_exports_to_qdq_onnx_with_a_symbolic_batch(tmp_path):
    """Export traces at a symbolic batch, which adds shape computations to the program;
    the QDQ model still agrees with the fake-quant model at another batch size."""
    fn, variables, _ = zoo.instantiate("vit", batch=4)
    x4 = np.asarray(jax.random.normal(jax.random.key(0), (4, 12, 12, 1)))
    folded, v2, _ = fold_batchnorm(fn, variables, x4)
    q = fakequant.quantize(folded, v2, x4)
    qp = calibration.calibrate(q, v2, [x4], method="minmax")
    out = qdq_export.to_qdq_onnx(q, v2, qp, x4, str(tmp_path / "vit.onnx"))
    check = qdq_export.check(out.model, q, v2, qp, x4[:3])
    assert check.top1_agreement == 1.0
    assert check.max_abs_error < 0.05 * check.output_scale
