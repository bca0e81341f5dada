"""Low-rank ViT (6 blocks, width 192) on Fashion-MNIST: SVD vs data-aware vs learned on
attention and MLP projections; equal-rank errors, accuracy at 1.5x / 2x fewer FLOPs.

Run:  python run.py --exp=lowrank_vit
Trains (once, cached) a short ViT teacher: 3 epochs of AdamW, roughly an hour on 2 busy
CPU cores; then about 40-60 minutes for the study.
"""
from core.configs import train_teacher
from lowrank.configs import _base


def get_config():
    teacher = train_teacher.get_config("vit")
    return _base.get_config(teacher)
