"""A tiny teacher run for tests and smoke checks (a few hundred examples, seconds).

Run:  python run.py --exp=train_teacher_tiny
Expected: under a minute on 2 CPU cores; accuracy is meaningless at this size.
"""
from core.configs import train_teacher


def get_config():
    config = train_teacher.get_config()
    config.tiny = True
    config.data_limit = 512
    config.train.batch_size = 32
    config.train.epochs = 1.0
    config.train.warmup_steps = 2
    config.train.log_every = 4
    config.train.eval_every_epochs = 0
    config.train.checkpoint_every = 4
    return config
