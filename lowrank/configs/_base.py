"""Shared settings of the low-rank experiments (not an experiment itself: leading '_')."""
import ml_collections


def get_config(teacher: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.program = "experiments.lowrank_study"
    config.teacher = teacher
    config.methods = ("svd", "data", "learned")
    config.calibration_batches = 8        # x batch_size training images, no augmentation
    config.batch_size = 128
    config.error_batches = 4               # validation batches of 500 for layer errors
    config.equal_rank_fraction = 0.5       # per-layer comparison: rank = this x full rank
    config.flops_reductions = (1.5, 2.0)
    config.rank_multiple = 1
    config.eps = 1e-6
    config.learn = ml_collections.ConfigDict(dict(steps=300, learning_rate=1e-3,
                                                  distill_weight=0.0))
    config.finetune = ml_collections.ConfigDict(dict(
        steps=300, batch_size=128, optimizer="adamw", learning_rate=3e-4, weight_decay=0.0,
        warmup_steps=0, momentum=0.9, nesterov=True, label_smoothing=0.0, ema_decay=0.0,
        augment=True, seed=0, log_every=50, eval_every_epochs=0, checkpoint_every=0,
        epochs=0.0, kd_alpha=0.9, kd_temperature=4.0))
    config.latency_device = "ort-cpu-1t"
    config.latency_batch = 1
    config.results_name = "lowrank"        # benchmarks/results/<name>_<model>.json
    # Publish into benchmarks/results when run in the default workdir runs/<experiment>
    # (config.publishes); a run with another --workdir writes only there.
    config.publish = True
    return config
