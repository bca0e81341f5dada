"""Weighted block pruning of the ResNet-20 teacher: a family of 6 models, each one residual
block smaller, chosen by quality lost against latency saved on onnxruntime (1 thread).

Run:  python run.py --exp=blocks_resnet20
      python benchmarks/block_pruning.py --model=resnet20     (table + plot vs channel pruning)
Expected: about 25-35 minutes on 2 shared CPU cores with the cached teacher (train_teacher):
about 15 blocks scored once (validation KD loss + measured latency), then each member
fine-tuned by 300 steps of distillation, exported and measured. ``--exp.family.rescore=true``
re-scores after each removal (about 6 x longer scoring).
"""
import ml_collections

from core.configs import train_teacher
from pruning.configs import prune_resnet20_2x


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
    ft.steps = 300                     # distillation steps per member (0: no fine-tune)
    ft.checkpoint_every = 100
    return config
