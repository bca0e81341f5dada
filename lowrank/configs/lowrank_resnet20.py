"""Low-rank ResNet-20 on Fashion-MNIST: SVD vs data-aware vs learned, at equal rank and at
1.5x / 2x fewer FLOPs, before and after a short distillation fine-tune, ORT latency.

Run:  python run.py --exp=lowrank_resnet20     (or python benchmarks/lowrank.py)
Needs the cached ResNet-20 teacher of `python run.py --exp=train_teacher` (about 55 min to
train if missing). Expected: about 40-60 minutes on 2 busy CPU cores (6 fine-tunes of
300 steps, 13 test-set evaluations, ONNX exports and latency runs).
"""
from core.configs import train_teacher
from lowrank.configs import _base


def get_config():
    return _base.get_config(train_teacher.get_config())
