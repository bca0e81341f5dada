"""Quantize the MobileNetV2 teacher (depthwise convs: the per-tensor failure case).

Run:  python run.py --exp=quant_mobilenetv2
Expected: about 40-60 minutes on 2 CPU cores once the teacher is cached; training the
teacher first (python run.py --exp=train_teacher --exp.model=mobilenetv2) takes hours.
Same stages and outputs as quant_resnet20.
"""
from quant.configs import quant_resnet20


def get_config():
    return quant_resnet20.get_config("mobilenetv2")
