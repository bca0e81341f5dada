"""Weighted block pruning of the ResNet-20 teacher: a family of 6 models, each one residual
block smaller, chosen by quality lost against latency saved on onnxruntime (1 thread).

Run:  python run.py --exp=blocks_resnet20
      python benchmarks/block_pruning.py --model=resnet20     (table + plot vs channel pruning)
Expected: about an hour on 2 shared CPU cores with the cached teacher (train_teacher):
about 15 blocks scored once (validation KD loss + measured latency), then each member
fine-tuned by distillation for as many steps as one channel-pruned model trains
(``channel_pruning_steps``: its 600 gate steps and 2 fine-tune epochs, 1,458 steps; equal
budgets, issue 21), exported and measured. ``--exp.family.rescore=true``
re-scores after each removal (about 6 x longer scoring).
"""
import importlib

import ml_collections

from core import train as train_lib
from core.configs import train_teacher
from data import pipeline
from pruning.configs import prune_resnet20_2x

# The channel-pruning experiment each family is compared with (benchmarks/block_pruning.py).
CHANNEL_PRUNED = {"resnet20": "prune_resnet20_2x", "mobilenetv2": "prune_mobilenetv2_2x",
                  "vit": "prune_vit_2x"}


def channel_pruning_steps(model: str) -> int:
    """The training steps one channel-pruned model of ``model`` gets (its gates' steps and
    its fine-tune's), so each family member is fine-tuned as long: the two kinds of model
    are compared at equal training budgets."""
    prune = importlib.import_module(f"pruning.configs.{CHANNEL_PRUNED[model]}").get_config()
    examples = pipeline.train_examples(prune.teacher.dataset) - prune.teacher.validation_size
    return int(prune.gates.steps + train_lib.steps_of(prune.finetune, examples))


def get_config(model: str = "resnet20"):
    config = ml_collections.ConfigDict()
    config.program = "experiments.block_family"
    config.teacher = train_teacher.get_config(model)
    config.device = "ort-cpu-1t"
    config.measure_runs = 50
    config.blocks = blocks = ml_collections.ConfigDict()
    blocks.automatic = True            # residual / add-branch / concat-branch blocks
    blocks.module_paths = ()           # extra blocks named by module path, e.g. ('stage0_block1',)
    config.family = family = ml_collections.ConfigDict()
    family.members = 6
    family.weight = 0.5                # 0: least quality lost, 1: most latency saved
    family.rescore = False
    family.quality = "kd_loss"         # or "accuracy"
    family.score_examples = 2000       # validation images used to score a block
    family.latency_source = "measured"  # or "model" (export.LatencyModel)
    family.latency_batch = 1
    family.latency_runs = 100          # per model, split over latency_rounds
    family.latency_rounds = 5          # rounds over all candidates, so load drift hits all alike
    family.latency_table_path = "runs/latency_tables.json"
    config.kd = kd = ml_collections.ConfigDict()
    kd.kd_temperature = 4.0
    kd.kd_alpha = 0.9
    # The pruning fine-tune recipe (SGD, KD from the teacher), as a fixed number of steps.
    config.finetune = ft = prune_resnet20_2x.get_config().finetune
    ft.epochs = 0.0
    ft.steps = channel_pruning_steps(model)   # per member (0: no fine-tune)
    ft.checkpoint_every = 100
    return config
