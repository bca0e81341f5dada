"""Settings as ``ml_collections.ConfigDict`` trees: typed command-line overrides, stable
hashes of the settings that determine a result, and validation by rule tables.

Nothing here knows an experiment, a model or a data set: finding experiment config files by
name and checking a teacher section against the zoo and the data sets is
``experiments.registry``'s job, which passes its section checks to ``validate``.
"""
import ast
import difflib
import math
import numbers
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import ml_collections


class ConfigError(ValueError):
    """A bad experiment name or override; the message says what is wrong and what exists."""


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
RESULT_NEUTRAL_KEYS = ("experiment_path", "experiment_name", "program", "log_every",
                       "checkpoint_every",
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

def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


class Rule(NamedTuple):
    key: str                        # a leaf name, checked wherever it appears in the config
    valid: Callable[[object], bool]
    must_be: str


LEAF_RULES = (
    Rule("batch_size", lambda v: is_int(v) and v > 0, "a positive integer"),
    Rule("steps", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    Rule("epochs", lambda v: is_number(v) and v >= 0, "a finite number >= 0"),
    Rule("data_limit", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: every example)"),
    Rule("validation_size", lambda v: is_int(v) and v > 0,
         "a positive integer (the held-out examples validation metrics are computed on)"),
)


def _nodes(config, prefix=""):
    """Every ConfigDict in the tree with its dotted prefix ('' for the root)."""
    yield prefix, config
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _nodes(value, prefix + key + ".")


# A section check: (dotted prefix, node) -> None when the node is not its kind of section,
# else (errors, number of training examples the section's data set provides or None).
SectionCheck = Callable[[str, ml_collections.ConfigDict],
                        Optional[Tuple[List[str], Optional[int]]]]


def validate(config, train_size: Optional[int] = None,
             section_checks: Tuple[SectionCheck, ...] = ()) -> None:
    """Checks every setting against the rule tables (and each node against
    ``section_checks``); raises one ConfigError listing each bad key with its value and what
    it must be. ``train_size`` (the number of training examples, when the caller has the
    data) and the sizes the section checks report also bound every ``batch_size``."""
    errors, sizes = [], [] if train_size is None else [
        (f"the {train_size} examples of the training split", train_size)]
    for prefix, node in _nodes(config):
        for rule in LEAF_RULES:
            if rule.key in node and not isinstance(node[rule.key], ml_collections.ConfigDict):
                value = node[rule.key]
                if not rule.valid(value):
                    errors.append(f"{prefix}{rule.key}={value!r}: must be {rule.must_be}")
        for check in section_checks:
            found = check(prefix, node)
            if found is None:
                continue
            errors += found[0]
            if found[1] is not None:
                sizes.append((f"the {found[1]} training examples of {prefix}dataset="
                              f"{node.dataset!r} (after validation_size and data_limit)",
                              found[1]))
    if sizes:
        where, smallest = min(sizes, key=lambda s: s[1])
        for prefix, node in _nodes(config):
            batch = node.get("batch_size", None)
            if is_int(batch) and batch > smallest:
                errors.append(f"{prefix}batch_size={batch}: larger than {where}; not "
                              "one full batch fits")
    if errors:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(errors))
