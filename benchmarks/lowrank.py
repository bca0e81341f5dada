"""The low-rank study (``experiments/lowrank_study.py``) on each named model, published.

Runs each study in its default workdir runs/<name> (resuming what a previous run left)
and publishes explicitly into benchmarks/results: ``<results_name>_<model>.json`` / ``.md``
and the combined ``<results_name>.json`` / ``.md``.

Run:  python benchmarks/lowrank.py [--fresh] [lowrank_resnet20 lowrank_vit ...]
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from core import workdir as workdir_lib  # noqa: E402
from experiments import lowrank_study, registry  # noqa: E402


def main(argv) -> None:
    parser = argparse.ArgumentParser(description="low-rank study; publishes its results")
    parser.add_argument("names", nargs="*",
                        default=["lowrank_resnet20", "lowrank_vit", "lowrank_mixer"])
    parser.add_argument("--fresh", action="store_true",
                        help="move each workdir's earlier content aside and start over")
    args = parser.parse_args(argv)
    for name in args.names:
        config = registry.load(name)
        workdir = os.path.join(ROOT, "runs", config.experiment_name)
        with workdir_lib.prepared(config, workdir, fresh=args.fresh):
            lowrank_study.publish(config, lowrank_study.main(config, workdir))


if __name__ == "__main__":
    main(sys.argv[1:])
