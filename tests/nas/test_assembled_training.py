"""nas.assembled_training: an assembled architecture trains with its students' BatchNorm in
training mode, and recalibration gives those statistics of the network's own activations."""
import jax
import numpy as np

from nas import architecture, assembled_training
from nas.distill import Student
from nas.search_space import TEACHER, SearchSpace
from nas.student_blocks import BlockChoice, build_student, init_student
from tests.nas.helpers import tiny_blocks


class OneBatch:
    """A data set whose every training batch is the same images."""
    def __init__(self, x):
        self.x = x

    def train_batch(self, step, batch_size, seed, augmentation=True, shard=(0, 1)):
        return self.x, np.zeros(len(self.x), np.int32)


def _library():
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


def test_evaluation_mode_is_the_assembled_network():
    library, x = _library()
    for arch in [(1, 0, 1), (0, 0, 0), (1, 1, 1)]:
        model = assembled_training.trainable(library, arch)
        fn, variables = architecture.assemble(library, arch)
        np.testing.assert_allclose(model.apply_eval(model.variables, x), fn(variables, x),
                                   rtol=1e-6, atol=1e-6)


def test_recalibrated_statistics_are_those_of_the_networks_own_activations():
    library, x = _library()
    x = np.asarray(x) * 3.0 + 1.0          # far from the statistics the students started with
    model = assembled_training.trainable(library, (1, 1, 1))
    train_mode = np.asarray(model.apply_train(model.variables, x, None)[0])
    before = np.asarray(model.apply_eval(model.variables, x))
    variables = assembled_training.recalibrate(model, OneBatch(x), batches=60)
    after = np.asarray(model.apply_eval(variables, x))
    scale = np.abs(train_mode).max()
    # Inference with the recalibrated running averages == training mode on that batch
    # (Flax's batch statistics), up to the 0.9**60 left of the old ones.
    assert np.abs(after - train_mode).max() < 0.02 * scale
    assert np.abs(before - train_mode).max() > 0.1 * scale
    # Only statistics move; the teacher blocks keep theirs.
    jax.tree.map(np.testing.assert_array_equal, variables["params"], model.variables["params"])
    for i in (0, 4):
        jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"][i],
                     model.variables["batch_stats"][i])
