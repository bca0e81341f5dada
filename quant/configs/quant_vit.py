"""Quantize the ViT teacher (GELU, LayerNorm and softmax stay in float between int8 matmuls).

Run:  python run.py --exp=quant_vit
Expected: about 40-60 minutes on 2 CPU cores once the teacher is cached; training the
teacher first (python run.py --exp=train_teacher --exp.model=vit) takes hours.
Same stages and outputs as quant_resnet20.
"""
import importlib.util
import os


def get_config():
    path = os.path.join(os.path.dirname(__file__), "quant_resnet20.py")
    spec = importlib.util.spec_from_file_location("quant_resnet20_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("vit")
