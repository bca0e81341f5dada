"""Experiments as Python config files, found by name, overridden from the command line.

An experiment is a module with ``get_config()`` returning an ``ml_collections.ConfigDict``
(big_vision style) whose ``program`` names the module that runs it (``program.main(config,
workdir)``). Its docstring's first line is the description ``--list`` prints; the docstring
also holds the run command and the expected run time.
"""
import ast
import difflib
import glob
import importlib.util
import math
import numbers
import os
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FOLDERS = ("core", "pruning", "quant", "lowrank", "nas")


class ConfigError(ValueError):
    """A bad experiment name or override; the message says what is wrong and what exists."""


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
                          "'core.teacher').")
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


def flat_keys(config, prefix: str = "") -> List[str]:
    keys = []
    for key, value in config.items():
        full = prefix + key
        keys.append(full)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, full + "."))
    return keys


def _parse_value(key: str, text: str, current):
    """Converts a command-line string to the type of the value it replaces."""
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"--exp.{key}: expected a boolean (true/false), got {text!r}")
    if isinstance(current, str) or current is None:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--exp.{key}: expected {type(current).__name__}, got {text!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    if type(value) is not type(current):
        raise ConfigError(f"--exp.{key}: expected {type(current).__name__}, "
                          f"got {type(value).__name__} {text!r}")
    return value


def apply_override(config, key: str, text: str) -> None:
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = flat_keys(config)
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = (f"Did you mean: {', '.join(close)}?" if close else
                    f"Known keys: {', '.join(sorted(known))}")
            raise ConfigError(f"--exp.{key}: no such config key. {hint}")
        if depth < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = _parse_value(key, text, node[parts[-1]])


# Settings that do not change a result: they never count in a hash or as a changed setting
# of a resumed run, at whatever depth they appear (``train.log_every`` as well as
# ``log_every``).
RESULT_NEUTRAL_KEYS = ("experiment_path", "experiment_name", "log_every", "checkpoint_every",
                       "progress", "show_progress", "eval_every_epochs", "publish")


def _without(tree, exclude):
    if isinstance(tree, dict):
        return {k: _without(v, exclude) for k, v in tree.items() if k not in exclude}
    return tree


def config_hash(config, exclude=RESULT_NEUTRAL_KEYS) -> str:
    """A short stable hash of the settings that determine a result (for caching); keys
    named in ``exclude`` are left out at every depth."""
    import hashlib
    import json
    plain = _without(config.to_dict(), set(exclude))
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]


def result_settings(config, exclude=RESULT_NEUTRAL_KEYS) -> Dict[str, object]:
    """The settings that determine a result as ``{dotted.key: value}``, JSON-normalized
    (tuples become lists) so a stored copy compares equal to a fresh one."""
    import json
    plain = json.loads(json.dumps(_without(config.to_dict(), set(exclude)), default=str))
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, prefix + key + ".")
            else:
                flat[prefix + key] = value
    walk(plain, "")
    return flat


def changed_settings(old: Dict[str, object], new: Dict[str, object]) -> List[str]:
    """``key: old -> new`` for every setting that differs between two ``result_settings``."""
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            lines.append(f"{key}: {show(before)} -> {show(after)}")
    return lines



# ---------------------------------------------------------------------------------------
# Validation: a degenerate setting fails here, before a data set is read or a step is run,
# instead of "succeeding" and caching an untrained model.

def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


class Rule(NamedTuple):
    key: str                        # a leaf name, checked wherever it appears in the config
    valid: Callable[[object], bool]
    must_be: str


LEAF_RULES = (
    Rule("batch_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
    Rule("steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("epochs", lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    Rule("data_limit", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: every example)"),
    Rule("validation_size", lambda v: _is_int(v) and v > 0,
         "a positive integer (the held-out examples validation metrics are computed on)"),
)


def _nodes(config, prefix=""):
    """Every ConfigDict in the tree with its dotted prefix ('' for the root)."""
    yield prefix, config
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _nodes(value, prefix + key + ".")


def _is_teacher(node) -> bool:
    """A teacher-training section: a model trained on a data set (core.teacher)."""
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
    if total is None or not _is_int(node.get("validation_size", 0)):
        return errors, None
    size = node.get("validation_size", 0)
    if size >= total:
        errors.append(f"{prefix}validation_size={size}: {node.dataset} has only {total} "
                      "training examples, so none would be left to train on")
        return errors, None
    examples = total - size
    limit = node.get("data_limit", 0)
    if _is_int(limit) and limit > 0:
        examples = min(examples, limit)
    batch = train.get("batch_size", 0)
    epochs = train.get("epochs", 0)
    if (not train.get("steps", 0) and _is_int(batch) and 0 < batch <= examples
            and _is_number(epochs) and round(epochs * (examples // batch)) < 1):
        errors.append(f"{prefix}train.epochs={epochs}: {epochs} x {examples // batch} steps "
                      "per epoch rounds to 0 steps; train at least one step")
    return errors, examples


def validate(config, train_size: Optional[int] = None) -> None:
    """Checks every setting against the rule tables; raises one ConfigError listing each
    bad key with its value and what it must be. ``train_size`` (the number of training
    examples, when the caller has the data) also bounds every ``batch_size``."""
    errors, sizes = [], [] if train_size is None else [
        (f"the {train_size} examples of the training split", train_size)]
    for prefix, node in _nodes(config):
        for rule in LEAF_RULES:
            if rule.key in node and not isinstance(node[rule.key], ml_collections.ConfigDict):
                value = node[rule.key]
                if not rule.valid(value):
                    errors.append(f"{prefix}{rule.key}={value!r}: must be {rule.must_be}")
        if _is_teacher(node):
            found, examples = _teacher_errors(prefix, node)
            errors += found
            if examples is not None:
                sizes.append((f"the {examples} training examples of {prefix}dataset="
                              f"{node.dataset!r} (after validation_size and data_limit)",
                              examples))
    if sizes:
        where, smallest = min(sizes, key=lambda s: s[1])
        for prefix, node in _nodes(config):
            batch = node.get("batch_size", None)
            if _is_int(batch) and batch > smallest:
                errors.append(f"{prefix}batch_size={batch}: larger than {where}; not "
                              "one full batch fits")
    if errors:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(errors))
