"""Run with 2 forced CPU devices: trains one group of 2 students in parallel over a 2-device
mesh and each student alone on a 1-device mesh, with members vmapped and unrolled; prints
the largest parameter difference."""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from nas import distill  # noqa: E402
from nas.student_blocks import BlockChoice  # noqa: E402
from tests.nas.helpers import distill_config, tiny_dataset  # noqa: E402
from models import zoo  # noqa: E402
from nas import teacher_blocks  # noqa: E402
from models import resnet  # noqa: E402


def main():
    assert jax.device_count() == 2, jax.devices()
    # A teacher with two equal-shaped residual blocks in stage 0: one group of 2 members.
    module = resnet.ResNet(10, (2, 1), (4, 8), "basic", 4)
    x = np.zeros((2, 12, 12, 1), np.float32)
    variables = module.init(jax.random.key(0), x)
    fn = lambda v, inp: module.apply(v, inp, train=False)
    blocks = teacher_blocks.split_at_cut_points(fn, variables, x)
    choice = BlockChoice("inverted_residual", depth=1, kernel=3, expansion=2,
                         activation="hardswish", se=True)
    group = distill.Group(choice, blocks[1].in_shape, blocks[1].out_shape, [(0, 1), (1, 2)])
    data = tiny_dataset()
    worst = 0.0
    for batching in ("vmap", "unroll"):
        cfg = distill_config(steps=4, batching=batching)
        parallel = distill.train_group(group, blocks, data, cfg, mesh=distill.student_mesh(),
                                       show_progress=False)
        worst = max(worst, compare(group, choice, blocks, data, cfg, parallel))
    moved = max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
        parallel[0].variables, parallel[1].variables)))
    print(f"RESULT max_diff={worst:.3e} members_differ={moved:.3e}")


def compare(group, choice, blocks, data, cfg, parallel):
    one = distill.student_mesh(jax.devices()[:1])
    worst = 0.0
    for k, member in enumerate(group.members):
        alone = distill.train_group(distill.Group(choice, group.in_shape, group.out_shape,
                                                  [member]), blocks, data, cfg, mesh=one,
                                    show_progress=False)[0]
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                             parallel[k].variables, alone.variables)
        worst = max(worst, max(jax.tree.leaves(diffs)))
        worst = max(worst, abs(parallel[k].val_nsr - alone.val_nsr))
    return worst


if __name__ == "__main__":
    main()
