"""Runs the tiny blockwise distillation in its own process, alone or as one process of a
job (the environment of core.distributed), for tests/core/test_multiprocess.py.

usage: python distill_child.py WORKDIR OUT.npz [STEPS]
The tiny NAS setting (nas_fmnist_tiny: untrained tiny ResNet teacher, 3 steps), cut so that
two teacher blocks of equal shape (stem_bn and stage0_block0) are searched with one student
choice: one group of two members, one on each device of a 2-device mesh (one compilation).
Process 0 writes every student's variables to OUT.npz, keyed by position, choice and leaf
path. Each process then writes, to WORKDIR/agreed-<index>.json, what
``experiments.agreed_json`` gave it for a value that differs per process. STEPS (default: the config's 3) lengthens the run for timing (scripts/gpu_check.sh).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core import distributed  # noqa: E402  (before any JAX backend exists)

distributed.initialize_from_environment()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import agreed_json, nas_search, registry  # noqa: E402
from nas import distill, search_space, teacher_blocks  # noqa: E402

CUTS = ("stem_bn", "stage0_block0", "stage1_block0")
SEARCHED = ("stem_bn", "stage0_block0")      # both (28, 28, 4) -> (28, 28, 4)


def main(workdir: str, out: str, steps: str = "") -> None:
    config = registry.load("nas_fmnist_tiny", [("distill.steps", steps)] if steps else [])
    fn, variables, dataset, _ = nas_search.load_teacher(config)
    x = jnp.zeros((config.distill.batch_size,) + dataset.image_shape, jnp.float32)
    blocks = teacher_blocks.split_by_modules(fn, variables, x, list(CUTS))
    space = search_space.build_space(blocks, {"positions": list(SEARCHED),
                                              "choices": config.space.choices[:1]})
    students = distill.distill_space(space, blocks, dataset, config.distill, workdir,
                                     distill.student_mesh(), show_progress=False)
    agreed = agreed_json(os.path.join(workdir, "measured.json"),
                         {"process": distributed.process_index()})
    with open(os.path.join(workdir, f"agreed-{distributed.process_index()}.json"), "w") as f:
        f.write(json.dumps(agreed))
    if not distributed.is_primary():
        return
    arrays = {}
    for (position, choice), student in students.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(student.variables)[0]:
            arrays[f"{position}/{choice.key}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
        arrays[f"{position}/{choice.key}/val_nsr"] = np.asarray(student.val_nsr)
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:4])
