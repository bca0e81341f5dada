"""The train_teacher experiments: train (or reuse from the cache) a zoo model on a data set
and report its test accuracy (``python run.py --exp=train_teacher``)."""
import os

import experiments
from experiments import preamble


def main(config, workdir):
    """Trains the teacher of ``config`` into the shared cache (training files under
    ``workdir/train``) and writes its summary to ``workdir/result.json``."""
    _, _, summary = preamble.get_teacher(config, os.path.join(workdir, "train"))
    experiments.write_result(workdir, summary)
    source = "cached teacher" if summary["cached"] else "trained teacher"
    print(f"{source} {summary['key']}: test accuracy {summary['test_accuracy']:.4f} "
          f"(validation {summary['validation_accuracy']:.4f})")
    return summary
