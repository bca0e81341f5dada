"""Blockwise distillation: teacher-identical students, grouping, resume, parallel == sequential."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import pytest
import numpy as np

from nas import distill, search_space
from nas.student_blocks import BlockChoice, build_student, init_student
from nas.teacher_init import init_from_teacher
from tests.nas.helpers import distill_config, tiny_blocks, tiny_dataset

HERE = os.path.dirname(os.path.abspath(__file__))


def test_student_identical_to_its_teacher_block_has_near_zero_loss():
    _, _, x, blocks = tiny_blocks()
    block = blocks[2]                                  # stride 2, with projection shortcut
    choice = BlockChoice("plain", depth=2, kernel=3, width=1.0, activation="relu")
    module = build_student(choice, block.in_shape, block.out_shape)
    start = init_from_teacher(init_student(module, block.in_shape, seed=3), block)
    variables = start.variables
    assert start.copied == len(block.variables) == 15 and start.kept == {}
    group = distill.Group(choice, block.in_shape, block.out_shape, [(1, 2)])
    cfg = distill_config(steps=0, eval_batches=2)
    (student,) = distill.train_group(group, blocks, tiny_dataset(), cfg, init_variables=[variables],
                                     show_progress=False)
    assert student.val_nsr < 1e-10
    random_init = distill.train_group(group, blocks, tiny_dataset(), cfg, show_progress=False)[0]
    assert random_init.val_nsr > 0.1


@pytest.mark.slow
def test_distillation_lowers_the_loss_and_resumes_exactly(tmp_path):
    _, _, _, blocks = tiny_blocks()
    choice = BlockChoice("dw_separable", depth=2, kernel=5, width=1.0, activation="silu")
    group = distill.Group(choice, blocks[1].in_shape, blocks[1].out_shape, [(0, 1)])
    data = tiny_dataset()
    cfg = distill_config(steps=24, checkpoint_every=12, learning_rate=1e-2)
    full = distill.train_group(group, blocks, data, cfg, str(tmp_path / "full"),
                               show_progress=False)[0]
    logged = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    train_nsr = [r["nsr/stage0_block0"] for r in logged if "nsr/stage0_block0" in r]
    assert len(train_nsr) == 12 and train_nsr[-1] < 0.7 * train_nsr[0]
    assert np.isfinite(full.val_nsr) and full.val_nsr > 0
    # Killed after the checkpoint at step 12 (the final one removed), then resumed.
    work = str(tmp_path / "g")
    distill.train_group(group, blocks, data, cfg, work, show_progress=False)
    shutil.rmtree(os.path.join(work, "checkpoints", "24"))
    resumed = distill.train_group(group, blocks, data, cfg, work, show_progress=False)[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 full.variables, resumed.variables)
    lines = open(os.path.join(work, "metrics.jsonl")).read()
    assert "nsr/stage0_block0" in lines and "val_nsr/stage0_block0" in lines


def test_groups_batch_equal_structures_across_blocks():
    _, _, _, blocks = tiny_blocks()
    space = search_space.SearchSpace((1, 2, 3), tuple(
        (search_space.TEACHER, BlockChoice("plain", depth=1), BlockChoice("mixer", depth=1))
        for _ in range(3)))
    groups = distill.make_groups(space, blocks)
    # Three positions with different shapes: no two students share a structure.
    assert len(groups) == 6 and all(len(g.members) == 1 for g in groups)


@pytest.mark.slow
def test_parallel_training_over_two_devices_equals_sequential():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, os.path.join(HERE, "distill_child.py")], env=env,
                          capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(r"RESULT max_diff=(\S+) members_differ=(\S+)", done.stdout)
    assert match, done.stdout[-2000:]
    assert float(match.group(1)) < 1e-4
    assert float(match.group(2)) > 1e-3      # the two members really are different students
