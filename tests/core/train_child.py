"""Runs a tiny training in its own process, for the kill-and-resume and device tests.

usage: python train_child.py WORKDIR OUT.npz [--sleep SECONDS] [--steps N]
The device count comes from XLA_FLAGS set by the caller.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from core import train  # noqa: E402
from experiments import preamble as teacher  # noqa: E402
from experiments import registry  # noqa: E402
from data import pipeline  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("out")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    config = registry.load("train_teacher_tiny", [("train.steps", str(args.steps)),
                                                    ("train.checkpoint_every", "4")])
    if args.sleep:  # slow the run down so that the parent can kill it mid-way
        original = pipeline.train_batch

        def slow_batch(*a, **k):
            time.sleep(args.sleep)
            return original(*a, **k)
        pipeline.train_batch = slow_batch
    module = teacher.build_module(config.model, tiny=True)
    dataset = teacher.load_data(config)
    variables = module.init(jax.random.key(0), dataset.train[0][:1].astype("float32"))
    result = train.train(train.linen_model(module, variables), dataset, config.train,
                         args.workdir, show_progress=False)
    leaves = jax.tree_util.tree_leaves_with_path(result["variables"])
    np.savez(args.out, devices=jax.device_count(), test_loss=result["test"]["loss"],
             **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})


if __name__ == "__main__":
    main()
