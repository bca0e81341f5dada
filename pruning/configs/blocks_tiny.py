"""Weighted block pruning end to end on a tiny ResNet teacher and 512 images (smoke test).

Run:  python run.py --exp=blocks_tiny
Expected: one to two minutes on 2 CPU cores, most of it tracing, compiling and the first
ONNX export (accuracy is meaningless at this size). ``--exp.teacher.model=vit`` or
``mobilenetv2`` runs the same on those tiny models.
"""
from core.configs import train_teacher_tiny
from pruning.configs import blocks_resnet20


def get_config():
    config = blocks_resnet20.get_config()
    config.teacher = train_teacher_tiny.get_config()
    config.teacher.train.steps = 16
    config.measure_runs = 5
    config.family.members = 2
    config.family.rescore = True
    config.family.score_examples = 128
    config.family.latency_runs = 10
    config.finetune.steps = 4
    config.finetune.batch_size = 32
    config.finetune.log_every = 2
    config.finetune.checkpoint_every = 0
    return config
