"""Learned-gate pruning of the MobileNetV2 teacher to 2x fewer FLOPs, fine-tuned, exported.

Run:  python run.py --exp=prune_mobilenetv2_2x
Needs the MobileNetV2 teacher (python run.py --exp=train_teacher_mobilenetv2, about 45 minutes on 2
CPU cores; cached and reused). Expected: about 40-60 minutes on 2 CPU cores (the model has
about 4x the FLOPs of ResNet-20). Same stages and outputs as prune_resnet20_2x.
"""
from core.configs import train_teacher
from pruning.configs import prune_resnet20_2x


def get_config():
    config = prune_resnet20_2x.get_config()
    config.teacher = train_teacher.get_config("mobilenetv2")
    config.gates.target_ratio = 0.5
    return config
