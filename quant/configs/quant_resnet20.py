"""Quantize the ResNet-20 teacher: float, PTQ per-tensor / per-channel (+/- equalization), QAT, ONNX int8.

Run:  python run.py --exp=quant_resnet20
Expected: about 15-25 minutes on 2 CPU cores once the teacher is cached (runs/teachers/;
training it first takes about an hour: python run.py --exp=train_teacher). Writes
result.json with test accuracies (JAX fake-quant and onnxruntime), QDQ parity and
onnxruntime latency float vs int8. Tiny smoke run:
python run.py --exp=quant_resnet20 --exp.teacher.tiny=True --exp.teacher.data_limit=512
--exp.teacher.train.steps=20 --exp.qat.steps=5 --exp.calibration_images=128 --exp.eval_limit=256
"""
import ml_collections

from core.configs import train_teacher


def get_config(model: str = "resnet20"):
    config = ml_collections.ConfigDict()
    config.program = "experiments.quantization"
    config.teacher = train_teacher.get_config(model)
    config.profile = "ort_cpu_int8"          # quant/profiles/*.json; weights per-channel
    config.calibration = "mse"               # minmax | percentile | mse
    config.percentile = 99.99
    config.weight_calibration = "minmax"     # minmax | mse
    config.calibration_images = 1024
    config.batch_size = 128
    config.eval_limit = 0                    # > 0: evaluate on the first N test images
    config.sensitivity = True
    config.qat = ml_collections.ConfigDict(dict(steps=600, batch_size=128,
                                                learning_rate=0.002, log_every=50))
    config.latency_batches = (1, 32)
    config.latency_threads = 1
    config.latency_runs = 50
    return config
