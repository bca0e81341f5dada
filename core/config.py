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
import os
from typing import Dict, List, Tuple

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
    """Loads an experiment's config and applies ``(dotted.key, string value)`` overrides."""
    path = resolve(name_or_path)
    config = _load_module(path).get_config()
    for key, value in overrides:
        apply_override(config, key, value)
    config.experiment_path = path
    config.experiment_name = os.path.splitext(os.path.basename(path))[0]
    return config


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


def config_hash(config, exclude=("experiment_path", "experiment_name", "log_every",
                                 "checkpoint_every", "progress")) -> str:
    """A short stable hash of the settings that determine a result (for caching)."""
    import hashlib
    import json
    plain = {k: v for k, v in config.to_dict().items() if k not in exclude}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]
