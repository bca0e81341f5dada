"""Prune, then quantize: the 2x-pruned, fine-tuned ResNet-20 of prune_resnet20_2x through
float, PTQ per-tensor / per-channel (+/- equalization), QAT and ONNX int8.

Run:  python run.py --exp=quant_pruned_resnet20
Needs the finished pruning run (python run.py --exp=prune_resnet20_2x, about 15 minutes;
it saves keep.json and pruned_variables/ in runs/prune_resnet20_2x). Expected: about 10-20
minutes on 2 CPU cores. Writes result.json like quant_resnet20.
"""
from quant.configs import quant_resnet20


def get_config():
    config = quant_resnet20.get_config("resnet20")
    config.pruned_experiment = "prune_resnet20_2x"
    config.pruned_workdir = ""              # default runs/prune_resnet20_2x
    return config
