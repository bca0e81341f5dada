"""Weighted block pruning of the ViT teacher: attention and MLP sub-blocks removed one by one.

Run:  python run.py --exp=blocks_vit
      python benchmarks/block_pruning.py --model=vit
Needs the ViT teacher (python run.py --exp=train_teacher_vit, about 45 minutes on 2 CPU
cores; cached and reused). Expected: about two hours on 2 CPU cores (12 sub-blocks of
6 encoder blocks scored once, 6 members fine-tuned 1,458 steps each with AdamW, as long as
one channel-pruned model trains).
"""
from pruning.configs import blocks_resnet20


def get_config():
    config = blocks_resnet20.get_config("vit")
    config.finetune.optimizer = "adamw"      # as the teacher was trained
    config.finetune.learning_rate = 3e-4
    config.finetune.weight_decay = 0.05
    return config
