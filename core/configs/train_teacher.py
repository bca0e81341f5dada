"""Train the ResNet-20 teacher on Fashion-MNIST (reused by every compression experiment).

Run:  python run.py --exp=train_teacher
Expected: about 93.5% test accuracy in about 55 minutes on 2 CPU cores (measured:
see README). The result is cached by config hash under runs/teachers/ and reused by
every compression experiment, so a second run returns at once.
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.program = "core.teacher"
    config.model = "resnet20"
    config.tiny = False
    config.dataset = "fashion_mnist"
    config.validation_size = 5000
    config.data_limit = 0
    config.train = train = ml_collections.ConfigDict()
    train.seed = 0
    train.batch_size = 128
    train.epochs = 15.0
    train.steps = 0               # overrides epochs when > 0
    train.optimizer = "sgd"
    train.learning_rate = 0.1
    train.momentum = 0.9
    train.nesterov = True
    train.weight_decay = 5e-4
    train.warmup_steps = 400
    train.label_smoothing = 0.0
    train.ema_decay = 0.0
    train.augment = True
    train.log_every = 50
    train.eval_every_epochs = 1
    train.checkpoint_every = 500
    return config
