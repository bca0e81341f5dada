"""Learned-gate pruning of the ViT teacher to 4x fewer FLOPs, fine-tuned, exported.

Run:  python run.py --exp=prune_vit_4x
Needs the ViT teacher (python run.py --exp=train_teacher_vit, about 45 minutes on 2
CPU cores; cached and reused). Expected: about 40-60 minutes on 2 CPU cores (the model has
about 4x the FLOPs of ResNet-20). Same stages and outputs as prune_resnet20_2x.
"""
from pruning.configs import prune_vit_2x


def get_config():
    config = prune_vit_2x.get_config()
    config.gates.target_ratio = 0.25
    return config
