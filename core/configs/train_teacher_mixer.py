"""Train the MLP-Mixer teacher on Fashion-MNIST with its recipe (train_teacher.RECIPES).

Run:  python run.py --exp=train_teacher_mixer
Expected: about 15 minutes on 2 idle CPU cores; cached under runs/teachers/ and reused by
every experiment on this model (pruning, low-rank, quantization, block pruning).
"""
from core.configs import train_teacher


def get_config():
    return train_teacher.get_config("mixer")
