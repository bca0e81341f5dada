"""Learned-gate pruning of the ResNet-20 teacher to half its predicted batch-1 latency on
onnxruntime CPU (one thread), from the per-layer latency tables, fine-tuned, exported.

Run:  python run.py --exp=prune_resnet20_latency
Expected: about 20 minutes on 2 CPU cores when the teacher is cached; the first run also
measures the latency table of the device (cached in runs/latency_tables.json). Writes the
same before/after table as prune_resnet20_2x (accuracy, FLOPs, params, measured latency).
"""
from pruning.configs import prune_resnet20_2x


def get_config():
    config = prune_resnet20_2x.get_config()
    config.gates.target = "latency"
    config.gates.target_ratio = 0.5      # of the full model's predicted latency
    config.gates.target_ms = 0.0         # > 0: an absolute budget in milliseconds instead
    return config
