"""Train the ResNet-20 teacher on Fashion-MNIST (reused by every compression experiment).

Other models: train_teacher_mobilenetv2, train_teacher_vit, train_teacher_mixer (the
per-model recipes of RECIPES below; `--exp.model=` alone keeps the ResNet-20 recipe).

Run:  python run.py --exp=train_teacher
Expected: about 93.5% test accuracy in about 55 minutes on 2 CPU cores (measured:
see README). The result is cached by config hash under runs/teachers/ and reused by
every compression experiment, so a second run returns at once.
"""
import ml_collections

# Per-model training recipes: every experiment gets its teacher from get_config(model), so
# one cached teacher (keyed by these settings) serves pruning, low-rank, quantization, NAS.
# Transformers train with AdamW; the larger models for fewer epochs (2 CPU cores).
RECIPES = {
    "resnet20": {},
    # MobileNetV2 at 28x28 costs 4x ResNet-20's FLOPs: one epoch is about 30 min here.
    "mobilenetv2": dict(epochs=1.0, weight_decay=4e-5, warmup_steps=100),
    "vit": dict(epochs=3.0, optimizer="adamw", learning_rate=1e-3, weight_decay=0.05,
                warmup_steps=200),
    "mixer": dict(epochs=3.0, optimizer="adamw", learning_rate=1e-3, weight_decay=0.05,
                  warmup_steps=200),
}


def get_config(model: str = "resnet20"):
    config = ml_collections.ConfigDict()
    config.program = "experiments.train_teacher"
    config.model = model
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
    for key, value in RECIPES.get(model, {}).items():
        train[key] = value
    return config
