"""Learned-gate pruning of the MobileNetV2 teacher to 4x fewer FLOPs, fine-tuned, exported.

Run:  python run.py --exp=prune_mobilenetv2_4x
Needs the MobileNetV2 teacher (python run.py --exp=train_teacher_mobilenetv2, about 45 minutes on 2
CPU cores; cached and reused). Expected: about 40-60 minutes on 2 CPU cores (the model has
about 4x the FLOPs of ResNet-20). Same stages and outputs as prune_resnet20_2x.
"""
from pruning.configs import prune_mobilenetv2_2x


def get_config():
    config = prune_mobilenetv2_2x.get_config()
    config.gates.target_ratio = 0.25
    return config
