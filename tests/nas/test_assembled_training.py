"""nas.assembled_training: an assembled architecture trains with its students' BatchNorm in
training mode, and recalibration gives those statistics of the network's own activations."""
import jax
import numpy as np

from nas import architecture, assembled_training
from tests.nas.helpers import tiny_library


class OneBatch:
    """A data set whose every training batch is the same images."""
    def __init__(self, x):
        self.x = x

    def train_batch(self, step, batch_size, seed, augmentation=True, shard=(0, 1)):
        return self.x, np.zeros(len(self.x), np.int32)


def test_evaluation_mode_is_the_assembled_network():
    library, x = tiny_library()
    for arch in [(1, 0, 1), (0, 0, 0), (1, 1, 1)]:
        model = assembled_training.trainable(library, arch)
        fn, variables = architecture.assemble(library, arch)
        np.testing.assert_allclose(model.apply_eval(model.variables, x), fn(variables, x),
                                   rtol=1e-6, atol=1e-6)


def test_recalibrated_statistics_are_those_of_the_networks_own_activations():
    library, x = tiny_library()
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


def test_block_by_block_recalibration_is_the_whole_network_recalibration():
    """The per-block path (compiled once per option, for hundreds of sampled architectures)
    gives the statistics and accuracy of the whole-network path."""
    from tests.nas.helpers import tiny_dataset
    library, _ = tiny_library()
    dataset = tiny_dataset()
    for arch in [(1, 1, 1), (0, 1, 0)]:
        model = assembled_training.trainable(library, arch)
        whole = assembled_training.recalibrate(model, dataset, batches=5, batch_size=32)
        blocks = assembled_training.recalibrated_block_variables(library, arch, dataset,
                                                                 batches=5, batch_size=32)
        for b, (module_stats, block) in enumerate(zip(whole["batch_stats"], blocks)):
            if module_stats and library.block_sequence(arch)[b].module is not None:
                for a, c in zip(jax.tree.leaves(module_stats),
                                jax.tree.leaves(block["batch_stats"])):
                    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)
        x = np.asarray(dataset.train_batch(0, 32, 0, False)[0])
        np.testing.assert_allclose(
            model.apply_eval(whole, x), architecture.assemble(library, arch)[0](blocks, x),
            rtol=1e-4, atol=1e-4)
        from data import pipeline
        x_test, y_test = dataset.test
        logits = model.apply_eval(whole, pipeline.normalize(x_test, dataset.mean, dataset.std))
        expected = float(np.mean(np.argmax(np.asarray(logits), -1) == y_test))
        measured = architecture.evaluate(library, arch, dataset, "test", variables=blocks)
        assert abs(measured - expected) <= 1.0 / len(y_test)
