"""Quantize the ViT teacher (GELU, LayerNorm and softmax stay in float between int8 matmuls).

Run:  python run.py --exp=quant_vit
Expected: about 40-60 minutes on 2 CPU cores once the teacher is cached; training the
teacher first (python run.py --exp=train_teacher_vit) takes about 45 minutes.
Same stages and outputs as quant_resnet20.
"""
from quant.configs import quant_resnet20


def get_config():
    return quant_resnet20.get_config("vit")
