"""Runs an experiment: python run.py --exp=NAME [--exp.key=value ...] [--workdir=DIR].

--list prints every experiment with its description. With no --exp the default
experiment runs. Results go to --workdir (default runs/NAME): checkpoints, metrics.jsonl
(one JSON line per logged step) and outputs; trained teachers are shared through the cache
in $TEACHER_CACHE or runs/teachers/. The programs live in experiments/ (one module per
experiment, main(config, workdir)); a run publishes into benchmarks/results only when its
config sets `publish` and it runs in its default workdir.

A workdir belongs to one run at a time (a second one fails at once) and remembers its
settings (config.json): rerunning resumes where it stopped, but a rerun with settings that
change the result is refused with the list of changed keys; --fresh starts over.

Several processes (hosts of a cluster, or processes of one machine) run one job when the
environment says so: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or a
SLURM/Open MPI launch (core/distributed.py). Every process runs the same command with the
same --workdir; process 0 prints and writes the result files, the others print errors only.
"""
import argparse
import os
import sys

DEFAULT_EXPERIMENT = "prune_selfie_2x"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", default=DEFAULT_EXPERIMENT,
                        help="experiment name (see --list) or path to a config file")
    parser.add_argument("--workdir", default=None, help="default: runs/<experiment name>")
    parser.add_argument("--list", action="store_true", help="list experiments and exit")
    parser.add_argument("--fresh", action="store_true",
                        help="start over in a workdir that holds an earlier run: its content "
                             "is moved (not deleted) to <workdir>.old-<time>; needed when "
                             "the settings changed")
    known, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        if not arg.startswith("--exp.") or "=" not in arg:
            parser.error(f"unrecognized argument {arg!r}; overrides look like --exp.key=value")
        key, value = arg[len("--exp."):].split("=", 1)
        overrides.append((key, value))
    return known, overrides


def start_processes() -> None:
    """JAX's distributed runtime when the environment asks for it (before any JAX backend
    exists; importing core applies the XLA workarounds first); processes other than 0 keep
    stderr but not stdout, so a job prints its progress once."""
    from core import distributed
    if distributed.initialize_from_environment() and not distributed.is_primary():
        sys.stdout = open(os.devnull, "w")


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    start_processes()
    from core import config as config_lib
    from experiments import registry
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for name, path in registry.experiment_paths().items():
            marker = " (default)" if name == DEFAULT_EXPERIMENT else ""
            print(f"{name:28s} {registry.describe(path)}{marker}")
        return 0
    import experiments
    from core import workdir as workdir_lib
    from data import fashion_mnist
    try:
        config = registry.load(args.exp, overrides)
        workdir = os.path.abspath(args.workdir or registry.default_workdir(config))
        with workdir_lib.prepared(config, workdir, fresh=args.fresh):
            print(f"experiment {config.experiment_name} -> {workdir}")
            experiments.run(config, workdir)
    except (config_lib.ConfigError, workdir_lib.WorkdirBusyError,
            fashion_mnist.DatasetNotFoundError, fashion_mnist.DatasetCorruptError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
