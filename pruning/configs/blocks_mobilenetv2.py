"""Weighted block pruning of the MobileNetV2 teacher: a family of inverted-residual removals.

Run:  python run.py --exp=blocks_mobilenetv2
      python benchmarks/block_pruning.py --model=mobilenetv2
Needs the MobileNetV2 teacher (python run.py --exp=train_teacher_mobilenetv2, about an hour
on 2 CPU cores; cached and reused). Expected: about two hours on 2 CPU cores (10
inverted-residual blocks scored once, 6 members fine-tuned 1,458 steps each, as long as one
channel-pruned model trains).
"""
from pruning.configs import blocks_resnet20


def get_config():
    return blocks_resnet20.get_config("mobilenetv2")
