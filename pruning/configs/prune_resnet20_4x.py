"""Learned-gate pruning of the ResNet-20 teacher to 4x fewer FLOPs, fine-tuned, exported.

Run:  python run.py --exp=prune_resnet20_4x
Expected: about 15 minutes on 2 CPU cores when the teacher is cached.
"""
from pruning.configs import prune_resnet20_2x


def get_config():
    config = prune_resnet20_2x.get_config()
    config.gates.target_ratio = 0.25
    config.finetune.epochs = 3.0
    return config
