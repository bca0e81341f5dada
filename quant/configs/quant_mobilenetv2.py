"""Quantize the MobileNetV2 teacher (depthwise convs: the per-tensor failure case).

Run:  python run.py --exp=quant_mobilenetv2
Expected: about 40-60 minutes on 2 CPU cores once the teacher is cached; training the
teacher first (python run.py --exp=train_teacher_mobilenetv2) takes about 45 minutes.
Same stages and outputs as quant_resnet20.
"""
from quant.configs import quant_resnet20


def get_config():
    return quant_resnet20.get_config("mobilenetv2")
