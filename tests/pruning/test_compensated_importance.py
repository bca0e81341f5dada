"""``pruning.compensated_importance``: a channel's score is the error left after the best
linear re-fit of its consumer without it, checked against brute force (numpy lstsq with
the channel dropped, one channel at a time) on a model with real-image inputs."""
import flax.linen as nn
import jax
import numpy as np

from data import real_images
from pruning import find_groups, importance
from pruning.compensated_importance import compensated


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        hidden = nn.relu(nn.Conv(10, (1, 1))(x))
        return nn.Conv(4, (1, 1))(hidden)


def _case(seed):
    """A small conv net on real-image inputs, its hidden group, and the numpy reference's
    hidden activations (float64) and outputs."""
    images = real_images.load("calibration", size=(16, 16), limit=4)
    x = np.asarray(images, np.float32) / 255.0 - 0.5
    model = _Net()
    variables = model.init(jax.random.PRNGKey(seed), x)
    fn = lambda v, inputs: model.apply(v, inputs)
    groups = find_groups(fn, variables, x)
    p = variables["params"]
    hidden = np.maximum(x.reshape(-1, 3) @ np.asarray(p["Conv_0"]["kernel"]).reshape(3, 10)
                        + np.asarray(p["Conv_0"]["bias"]), 0).astype(np.float64)
    target = np.asarray(fn(variables, x), np.float64).reshape(-1, 4)
    return x, fn, variables, groups, next(g for g in groups if g.prunable), hidden, target


def _refit_error(hidden, kept, target) -> float:
    design = np.concatenate([hidden[:, kept], np.ones((len(hidden), 1))], 1)
    fit = np.linalg.lstsq(design, target, rcond=None)[0]
    return float(np.sum((design @ fit - target) ** 2))


def test_one_at_a_time_scores_equal_the_brute_force_refit_error_of_each_channel():
    x, fn, variables, groups, group, hidden, target = _case(3)
    scores = compensated(groups, fn, variables, [x[:2], x[2:]], ridge=0.0,
                         greedy=False)[group.id]
    brute = [_refit_error(hidden, [k for k in range(10) if k != c], target)
             / np.sum(target ** 2) for c in range(10)]
    np.testing.assert_allclose(scores, brute, rtol=2e-2, atol=1e-9)  # float32 Gram vs float64
    through_table = importance.scores_for("compensated", groups, variables, fn=fn,
                                          batches=[x[:2], x[2:]])
    np.testing.assert_allclose(through_table[group.id], compensated(
        groups, fn, variables, [x[:2], x[2:]])[group.id], rtol=1e-12)
    # not the weight magnitude: the two orders differ on this model
    l1 = importance.scores_for("l1", groups, variables)[group.id]
    assert np.argsort(scores).tolist() != np.argsort(l1).tolist()


def test_greedy_order_equals_brute_force_greedy_refits():
    """Greedy: each step removes the channel whose lstsq re-fit without it (and without
    those already gone) leaves the least error; the scores must follow that order."""
    x, fn, variables, groups, group, hidden, target = _case(4)
    scores = compensated(groups, fn, variables, [x], ridge=0.0)[group.id]
    alive, order = list(range(10)), []
    for _ in range(9):
        errors = [_refit_error(hidden, [k for k in alive if k != c], target) for c in alive]
        order.append(alive.pop(int(np.argmin(errors))))
    assert np.argsort(scores)[:9].tolist() == order
