"""The real-model showcase (prune_selfie_2x) in a few steps on a few images (smoke test).

Run:  python run.py --exp=prune_selfie_tiny
Expected: about a minute on 2 CPU cores (fidelity is meaningless after so few steps).
"""
from pruning.configs import prune_selfie_2x


def get_config():
    config = prune_selfie_2x.get_config()
    config.publish = False
    config.data.train_images = 16
    config.data.eval_images = 4
    config.int8.enabled = False        # tests/experiments/test_real_model_int8.py covers it
    config.reconstruct.enabled = True   # the stage runs end to end here (few images)
    config.reconstruct.images = 8
    config.reconstruct.batch_size = 4
    config.gates.steps = 4
    config.gates.batch_size = 4
    config.gates.log_every = 2
    config.gates.checkpoint_every = 2
    config.finetune.steps = 4
    config.finetune.batch_size = 4
    config.finetune.warmup_steps = 0
    config.finetune.log_every = 2
    config.finetune.checkpoint_every = 2
    return config
