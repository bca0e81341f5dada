"""The learned-gate pruning pipeline on a tiny teacher and 512 examples (smoke test).

Run:  python run.py --exp=prune_resnet20_tiny
Expected: about a minute on 2 CPU cores (accuracy is meaningless at this size).
"""
from core.configs import train_teacher_tiny
from pruning.configs import prune_resnet20_2x


def get_config():
    config = prune_resnet20_2x.get_config()
    config.teacher = train_teacher_tiny.get_config()
    config.publish = False
    config.gates.steps = 12
    config.gates.batch_size = 32
    config.gates.log_every = 4
    config.gates.multiple = 1
    config.finetune.epochs = 0.5
    config.finetune.batch_size = 32
    config.finetune.log_every = 4
    config.finetune.checkpoint_every = 4
    return config
