"""Tiny teacher and data shared by the NAS tests (a 12x12 ResNet with one block per stage)."""
import numpy as np
import ml_collections

from data.pipeline import ImageDataset
from models import zoo
from nas import architecture, teacher_blocks
from nas.distill import Student
from nas.search_space import TEACHER, SearchSpace
from nas.student_blocks import BlockChoice, build_student, init_student


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


def tiny_library():
    """The tiny teacher's blocks with one student option (an inverted residual ending in
    ReLU, random init) at each of the three searched positions: (BlockLibrary, images)."""
    _, _, x, blocks = tiny_blocks()
    choice = BlockChoice("inverted_residual", depth=1, kernel=3, expansion=2.0,
                         activation="relu6", end="relu")
    positions = (1, 2, 3)
    students = {}
    for p, index in enumerate(positions):
        module = build_student(choice, blocks[index].in_shape, blocks[index].out_shape)
        students[(p, choice)] = Student(p, index, choice, module,
                                        init_student(module, blocks[index].in_shape, seed=p))
    space = SearchSpace(positions, tuple((TEACHER, choice) for _ in positions))
    return architecture.BlockLibrary(blocks, space, students), x
