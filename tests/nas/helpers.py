"""Tiny teacher and data shared by the NAS tests (a 12x12 ResNet with one block per stage)."""
import numpy as np
import ml_collections

from data.pipeline import ImageDataset
from models import zoo
from nas import teacher_blocks


def tiny_teacher(batch=4):
    fn, variables, x = zoo.instantiate("resnet20", tiny=True, batch=batch)
    return fn, variables, np.asarray(x)


def tiny_dataset(n=256, size=12, seed=0):
    rng = np.random.default_rng(seed)
    make = lambda m: (rng.integers(0, 256, (m, size, size, 1), dtype=np.uint8),
                      rng.integers(0, 10, m).astype(np.int32))
    return ImageDataset(make(n), make(64), make(64), 0.5, 0.29, 10, "random")


def tiny_blocks():
    fn, variables, x = tiny_teacher()
    return fn, variables, x, teacher_blocks.split_at_cut_points(fn, variables, x)


def distill_config(steps=6, **kw):
    cfg = ml_collections.ConfigDict(dict(steps=steps, batch_size=16, learning_rate=3e-3, seed=0,
                                         warmup_steps=1, log_every=2, checkpoint_every=3,
                                         eval_batches=1, eval_batch_size=32))
    cfg.update(kw)
    return cfg
