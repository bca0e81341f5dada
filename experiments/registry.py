"""Experiments as Python config files, found by name, loaded with overrides and validated.

An experiment is a module with ``get_config()`` returning an ``ml_collections.ConfigDict``
(big_vision style) whose ``program`` names the module that runs it (``program.main(config,
workdir)``, one of this package's programs). Its docstring's first line is the description
``--list`` prints; the docstring also holds the run command and the expected run time.
Config files live in ``<package>/configs/*.py``. Loading validates with ``core.config``'s
rule tables plus the teacher-section check below, which knows the zoo and the data sets.
"""
import glob
import importlib.util
import difflib
import os
from typing import Dict, List, Optional, Tuple

import ml_collections

from core.config import ConfigError, apply_override, is_int, is_number
from core.config import validate as validate_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FOLDERS = ("core", "pruning", "quant", "lowrank", "nas")
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def experiment_paths() -> Dict[str, str]:
    """Every experiment name -> config file path, from ``<folder>/configs/*.py``."""
    paths = {}
    for folder in CONFIG_FOLDERS:
        for path in sorted(glob.glob(os.path.join(ROOT, folder, "configs", "*.py"))):
            name = os.path.splitext(os.path.basename(path))[0]
            if not name.startswith("_"):
                paths[name] = path
    return paths


def _load_module(path: str):
    spec = importlib.util.spec_from_file_location(
        "experiment_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def describe(path: str) -> str:
    doc = (_load_module(path).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def resolve(name_or_path: str) -> str:
    """An experiment name (``train_teacher``) or a path to a config file -> the file path."""
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        if not os.path.exists(name_or_path):
            raise ConfigError(f"config file {name_or_path!r} does not exist")
        return os.path.abspath(name_or_path)
    paths = experiment_paths()
    if name_or_path not in paths:
        close = difflib.get_close_matches(name_or_path, paths, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown experiment {name_or_path!r}.{hint} "
                          f"Run `python run.py --list` to see all {len(paths)} experiments.")
    return paths[name_or_path]


def load(name_or_path: str, overrides: List[Tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """Loads an experiment's config, applies ``(dotted.key, string value)`` overrides and
    validates it (``validate``), so a bad setting fails before any work starts."""
    path = resolve(name_or_path)
    config = _call_get_config(path)
    for key, value in overrides:
        apply_override(config, key, value)
    config.experiment_path = path
    config.experiment_name = os.path.splitext(os.path.basename(path))[0]
    validate(config)
    return config


def _call_get_config(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, with errors that say what a config file must hold."""
    module = _load_module(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        defined = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ConfigError(
            f"config file {path} defines no get_config() (it defines: "
            f"{', '.join(defined) or 'nothing'}). An experiment config file must define "
            "get_config() returning an ml_collections.ConfigDict with a 'program' key; "
            "see core/configs/train_teacher.py.")
    config = get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config() in {path} returned {type(config).__name__}, not an "
            "ml_collections.ConfigDict (wrap a dict: ml_collections.ConfigDict({...})).")
    if not config.get("program"):
        raise ConfigError(f"get_config() in {path} has no 'program' key naming the module "
                          "whose main(config, workdir) runs the experiment (e.g. "
                          "'experiments.train_teacher').")
    return config


def default_workdir(config) -> str:
    """Where ``python run.py`` puts an experiment without --workdir: runs/<name>."""
    return os.path.join("runs", config.experiment_name)


def publishes(config, workdir: str) -> bool:
    """Whether a run writes its result into benchmarks/results (the published tables): only
    when its config says ``publish`` and it runs in its default workdir, so a run elsewhere
    (``--workdir=/tmp/x``, tests) writes nothing outside that workdir."""
    return bool(config.get("publish", False)) and (
        os.path.abspath(workdir) == os.path.abspath(default_workdir(config)))


def _is_teacher(node) -> bool:
    """A teacher-training section: a model trained on a data set (experiments.preamble)."""
    return all(k in node for k in ("model", "dataset", "train")) and isinstance(
        node.get("train"), ml_collections.ConfigDict)


def _teacher_errors(prefix: str, node) -> Tuple[List[str], Optional[int]]:
    """Names the teacher's model and data set must have, and enough data for its batches;
    returns (errors, number of training examples when the data set's size is known)."""
    from data import pipeline  # noqa: imported here: loading a config needs no numpy
    from models import zoo
    errors = []
    if node.model not in zoo.ZOO:
        errors.append(f"{prefix}model={node.model!r}: unknown model; the zoo has "
                      f"{', '.join(sorted(zoo.ZOO))}")
    try:
        total = pipeline.train_examples(node.dataset)
    except ValueError as error:
        return errors + [f"{prefix}dataset={node.dataset!r}: {error}"], None
    train = node.train
    if not train.get("steps", 0) and not train.get("epochs", 0):
        errors.append(f"{prefix}train.steps={train.get('steps', 0)!r} and {prefix}"
                      f"train.epochs={train.get('epochs', 0)!r}: a teacher must train at "
                      "least one step; set one of them > 0")
    if total is None or not is_int(node.get("validation_size", 0)):
        return errors, None
    size = node.get("validation_size", 0)
    if size >= total:
        errors.append(f"{prefix}validation_size={size}: {node.dataset} has only {total} "
                      "training examples, so none would be left to train on")
        return errors, None
    examples = total - size
    limit = node.get("data_limit", 0)
    if is_int(limit) and limit > 0:
        examples = min(examples, limit)
    batch = train.get("batch_size", 0)
    epochs = train.get("epochs", 0)
    if (not train.get("steps", 0) and is_int(batch) and 0 < batch <= examples
            and is_number(epochs) and round(epochs * (examples // batch)) < 1):
        errors.append(f"{prefix}train.epochs={epochs}: {epochs} x {examples // batch} steps "
                      "per epoch rounds to 0 steps; train at least one step")
    return errors, examples


def teacher_section_errors(prefix: str, node) -> Optional[Tuple[List[str], Optional[int]]]:
    """``core.config.validate``'s section check for teacher sections (None elsewhere)."""
    return _teacher_errors(prefix, node) if _is_teacher(node) else None


def validate(config, train_size: Optional[int] = None) -> None:
    """``core.config.validate`` with teacher sections checked against the zoo and data."""
    validate_settings(config, train_size, section_checks=(teacher_section_errors,))
