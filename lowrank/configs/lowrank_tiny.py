"""Smoke run of the low-rank study on a tiny ResNet teacher (512 images): checks the whole
pipeline end to end; the numbers mean nothing.

Run:  python run.py --exp=lowrank_tiny
Expected: a few minutes on 2 busy CPU cores.
"""
from core.configs import train_teacher_tiny
from lowrank.configs import _base


def get_config():
    config = _base.get_config(train_teacher_tiny.get_config())
    config.calibration_batches = 2
    config.batch_size = 32
    config.error_batches = 1
    config.learn.steps = 10
    config.finetune.steps = 5
    config.finetune.batch_size = 32
    config.flops_reductions = (2.0,)       # one target: the smoke run checks the plumbing
    config.results_name = "lowrank_tiny"
    config.publish = False                 # a smoke run: results stay in its workdir
    return config
