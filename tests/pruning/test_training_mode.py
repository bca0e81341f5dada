"""A pruned model fine-tuned with BatchNorm in training mode (``prune(..., train_fn=...)``):
``pruned.train_fn`` normalizes with the batch's statistics and returns the running
averages updated and narrowed to the kept channels, checked against a numpy forward pass
of the pruned weights on real photographs."""
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from core import train as train_lib
from data import real_images
from pruning import find_groups, prune, training
from pruning.shape_rules import PruneError

EPS = 1e-5


class ConvBN(nn.Module):
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = False):
        for features in (8, 12):
            x = nn.Conv(features, (3, 3), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                             epsilon=EPS)(x)
            x = nn.relu(x)
        return nn.Dense(5)(x.mean(axis=(1, 2)))


def images(n=4, size=(16, 16)) -> np.ndarray:
    try:
        return real_images.load("evaluation", size=size, limit=n, dtype=np.float32)
    except real_images.RealImagesUnavailable as error:
        pytest.skip(f"no real images here: {error}")


def conv_same(x, kernel):
    """A stride-1 'SAME' convolution in numpy (HWIO kernel)."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel)


def numpy_training_forward(variables, x, momentum):
    """Outputs and updated statistics of the model in training mode, in float64 numpy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    stats = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["batch_stats"])
    h, updated = np.asarray(x, np.float64), {}
    for k in range(2):
        h = conv_same(h, p[f"Conv_{k}"]["kernel"])
        mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
        bn, old = p[f"BatchNorm_{k}"], stats[f"BatchNorm_{k}"]
        h = np.maximum((h - mean) / np.sqrt(var + EPS) * bn["scale"] + bn["bias"], 0.0)
        updated[f"BatchNorm_{k}"] = {"mean": momentum * old["mean"] + (1 - momentum) * mean,
                                     "var": momentum * old["var"] + (1 - momentum) * var}
    logits = h.mean(axis=(1, 2)) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    return logits, updated


def setup(momentum):
    module = ConvBN(momentum)
    x = images()
    variables = module.init(jax.random.key(0), x[:1])
    fn = lambda v, inp: module.apply(v, inp)                                 # noqa: E731
    train_fn = lambda v, inp: module.apply(v, inp, train=True,               # noqa: E731
                                           mutable=["batch_stats"])
    groups = find_groups(fn, variables, x[:1])
    first, second = groups["params/Conv_0/kernel:3"], groups["params/Conv_1/kernel:3"]
    keep = {first.key: [0, 2, 3, 6, 7], second.id: [1, 2, 4, 5, 8, 9, 11]}
    pruned = prune(fn, variables, x[:1], keep=keep, analysis=groups, train_fn=train_fn)
    return module, variables, x, pruned


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_training_mode_updates_pruned_batch_statistics(momentum):
    _, variables, x, pruned = setup(momentum)
    logits, updates = pruned.train_fn(pruned.variables, x)
    expected_logits, expected_stats = numpy_training_forward(pruned.variables, x, momentum)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)
    stats = updates["batch_stats"]
    for name, kept in (("BatchNorm_0", 5), ("BatchNorm_1", 7)):
        for which in ("mean", "var"):
            new, old = np.asarray(stats[name][which]), pruned.variables["batch_stats"][name][which]
            assert new.shape == (kept,), "the statistics are pruned like their channels"
            np.testing.assert_allclose(new, expected_stats[name][which], rtol=1e-4, atol=1e-6)
            assert np.max(np.abs(new - np.asarray(old))) > 1e-3, "the statistics moved"
    if momentum == 0.0:
        # Running averages that are this batch's statistics: inference mode on the same
        # batch normalizes exactly as the training step did.
        inference = pruned.fn({**pruned.variables, **updates}, x)
        np.testing.assert_allclose(inference, logits, rtol=1e-4, atol=1e-5)
    # pruned.fn stays in inference mode: it normalizes with the running averages.
    assert np.max(np.abs(np.asarray(pruned.fn(pruned.variables, x)) - logits)) > 1e-3


def test_fine_tuning_in_training_mode_through_core_train():
    _, variables, x, pruned = setup(0.9)
    model = training.trainable(pruned)
    labels = np.arange(len(x), dtype=np.int32) % 5
    cfg = ml_collections.ConfigDict(dict(
        steps=3, epochs=0.0, batch_size=len(x), seed=0, optimizer="sgd", learning_rate=0.01,
        momentum=0.9, weight_decay=0.0, warmup_epochs=0.0, ema_decay=0.0, log_every=1,
        checkpoint_every=0))
    result = train_lib.train(model, ((x, labels) for _ in range(3)), cfg, None,
                             show_progress=False, evaluate_splits=())
    tuned = result["variables"]
    assert jax.tree.map(np.shape, tuned) == jax.tree.map(np.shape, pruned.variables)
    before = pruned.variables["batch_stats"]["BatchNorm_1"]["var"]
    assert np.max(np.abs(np.asarray(tuned["batch_stats"]["BatchNorm_1"]["var"])
                         - np.asarray(before))) > 1e-3, "training steps updated statistics"


def test_trainable_needs_a_training_function():
    module = ConvBN()
    x = images(1)
    variables = module.init(jax.random.key(0), x)
    fn = lambda v, inp: module.apply(v, inp)                                 # noqa: E731
    pruned = prune(fn, variables, x, keep={0: [0, 1]})
    assert pruned.train_fn is None
    with pytest.raises(ValueError, match="train_fn"):
        training.trainable(pruned)


def test_a_group_the_training_function_cannot_prune_is_an_error():
    """A train_fn in which a group cannot be pruned (here the second BatchNorm's batch mean
    is one of its outputs) cannot take the keep-set of the inference model."""
    module = ConvBN()
    x = images(1)
    variables = module.init(jax.random.key(0), x)
    fn = lambda v, inp: module.apply(v, inp)                                 # noqa: E731

    def other_train_fn(v, inp):
        out, updates = module.apply(v, inp, train=True, mutable=["batch_stats"])
        return (out, updates["batch_stats"]["BatchNorm_1"]["mean"]), updates
    with pytest.raises(PruneError, match="training-mode model"):
        prune(fn, variables, x, keep={"params/Conv_1/kernel:3": [0, 1]},
              train_fn=other_train_fn)
