"""Runs an experiment: python run.py --exp=NAME [--exp.key=value ...] [--workdir=DIR].

--list prints every experiment with its description. With no --exp the default
experiment runs. Results go to --workdir (default runs/NAME): checkpoints, metrics.jsonl
(one JSON line per logged step) and outputs.
"""
import argparse
import importlib
import os
import sys

DEFAULT_EXPERIMENT = "prune_resnet20_2x"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", default=DEFAULT_EXPERIMENT,
                        help="experiment name (see --list) or path to a config file")
    parser.add_argument("--workdir", default=None, help="default: runs/<experiment name>")
    parser.add_argument("--list", action="store_true", help="list experiments and exit")
    known, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        if not arg.startswith("--exp.") or "=" not in arg:
            parser.error(f"unrecognized argument {arg!r}; overrides look like --exp.key=value")
        key, value = arg[len("--exp."):].split("=", 1)
        overrides.append((key, value))
    return known, overrides


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from core import config as config_lib
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for name, path in config_lib.experiment_paths().items():
            marker = " (default)" if name == DEFAULT_EXPERIMENT else ""
            print(f"{name:28s} {config_lib.describe(path)}{marker}")
        return 0
    try:
        config = config_lib.load(args.exp, overrides)
    except config_lib.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    workdir = os.path.abspath(args.workdir or os.path.join("runs", config.experiment_name))
    os.makedirs(workdir, exist_ok=True)
    print(f"experiment {config.experiment_name} -> {workdir}")
    program = importlib.import_module(config.program)
    program.main(config, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
