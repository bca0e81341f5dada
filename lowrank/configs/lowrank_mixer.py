"""Low-rank MLP-Mixer (6 blocks, width 128) on Fashion-MNIST: SVD vs data-aware vs learned
on token- and channel-mixing MLPs; equal-rank errors, accuracy at 1.5x / 2x fewer FLOPs.

Run:  python run.py --exp=lowrank_mixer
Trains (once, cached) a short Mixer teacher: 3 epochs of AdamW, under an hour on 2 busy
CPU cores; then about 30-50 minutes for the study.
"""
from core.configs import train_teacher
from lowrank.configs import _base


def get_config():
    teacher = train_teacher.get_config("mixer")
    return _base.get_config(teacher)
