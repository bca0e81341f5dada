"""QAT: a few steps of distillation through the fake-quant model (4-bit weights) bring it
closer to the float teacher."""
import numpy as np

from core import losses
from data import pipeline
from quant import calibration, fakequant, qat
from quant.batchnorm_folding import fold_batchnorm
from tests.quant import tiny_models


def _dataset(n=256, size=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    # class-dependent blobs so there is something to learn
    images = rng.integers(0, 60, (n, size, size, 1))
    for c in range(10):
        images[labels == c, c % size, :, 0] += 150
    images = images.astype(np.uint8)
    split = (images, labels)
    return pipeline.ImageDataset(split, split, split, float(images.mean() / 255),
                                 float(images.std() / 255), 10, "blobs")


def test_qat_lowers_distillation_loss(tmp_path):
    data = _dataset()
    v = tiny_models.cnn_variables()
    x = pipeline.normalize(data.train[0][:32], data.mean, data.std)
    fn2, v2, _ = fold_batchnorm(tiny_models.cnn, v, x)
    q = fakequant.quantize(fn2, v2, x, profile="npu_w4a8")
    qp = calibration.calibrate(q, v2, [x], method="minmax")
    teacher = fn2

    def loss(variables, qparams):
        logits = q.apply(variables, qparams, x)
        return float(losses.kd_logits_loss(logits, teacher(v2, x)))
    before = loss(v2, qp)
    cfg = qat.default_config(batch_size=32, steps=30, learning_rate=0.02, log_every=10)
    v3, qp3, result = qat.qat(q, v2, qp, data, cfg, str(tmp_path), teacher, v2, alpha=1.0)
    after = loss(v3, qp3)
    assert after < 0.7 * before
    assert set(qp3["scale"]) == set(qp["scale"])
    assert any(not np.allclose(qp3["scale"][n], qp["scale"][n]) for n in qp["scale"])
    assert 0.0 <= result["test"]["accuracy"] <= 1.0
