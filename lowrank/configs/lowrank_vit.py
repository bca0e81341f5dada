"""Low-rank ViT (6 blocks, width 192) on Fashion-MNIST: SVD vs data-aware vs learned on
attention and MLP projections; equal-rank errors, accuracy at 1.5x / 2x fewer FLOPs.

Run:  python run.py --exp=lowrank_vit
Trains (once, cached) a short ViT teacher: 3 epochs of AdamW, roughly an hour on 2 busy
CPU cores; then about 40-60 minutes for the study.
"""
from lowrank.configs import _base


def get_config():
    teacher = _base.teacher_config("vit", epochs=3.0, optimizer="adamw", learning_rate=1e-3,
                                   weight_decay=0.05, warmup_steps=200)
    return _base.get_config(teacher)
