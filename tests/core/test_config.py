"""Experiment lookup, typed overrides and the errors a mistyped command gets."""
import subprocess
import sys

import pytest

import run
from core import config as config_lib
from experiments import registry


def test_overrides_are_typed():
    config = registry.load("train_teacher", [("train.learning_rate", "0.05"),
                                               ("train.epochs", "3"),
                                               ("train.augment", "false"),
                                               ("model", "mobilenetv2"),
                                               ("train.batch_size", "64")])
    assert config.train.learning_rate == 0.05
    assert config.train.epochs == 3.0 and isinstance(config.train.epochs, float)
    assert config.train.augment is False
    assert config.model == "mobilenetv2"
    assert config.train.batch_size == 64 and isinstance(config.train.batch_size, int)


def test_wrong_type_is_rejected():
    with pytest.raises(config_lib.ConfigError, match="train.batch_size.*expected int"):
        registry.load("train_teacher", [("train.batch_size", "0.5")])
    with pytest.raises(config_lib.ConfigError, match="boolean"):
        registry.load("train_teacher", [("train.augment", "maybe")])


def test_unknown_key_names_close_matches():
    with pytest.raises(config_lib.ConfigError) as error:
        registry.load("train_teacher", [("train.learning_rat", "0.1")])
    assert "no such config key" in str(error.value)
    assert "train.learning_rate" in str(error.value)


def test_unknown_experiment_names_close_matches():
    with pytest.raises(config_lib.ConfigError, match="Did you mean train_teacher"):
        registry.resolve("train_teachr")


def test_config_by_path_and_hash_is_stable():
    path = registry.experiment_paths()["train_teacher"]
    a, b = registry.load(path), registry.load("train_teacher")
    assert config_lib.config_hash(a) == config_lib.config_hash(b)
    c = registry.load("train_teacher", [("train.seed", "1")])
    assert config_lib.config_hash(c) != config_lib.config_hash(a)


def test_every_experiment_loads_and_documents_itself():
    for name, path in registry.experiment_paths().items():
        config = registry.load(name)
        assert config.program, name
        doc = registry._load_module(path).__doc__
        assert doc and "Run:" in doc and "python run.py --exp=" + name in doc, name


def test_cli_lists_and_fails_fast_on_unknown_key(capsys):
    assert run.main(["--list"]) == 0
    assert "train_teacher" in capsys.readouterr().out
    assert run.main(["--exp=train_teacher", "--exp.train.epoch=1"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_result_neutral_keys_are_ignored_at_every_depth():
    base = registry.load("train_teacher")
    for key, value in (("train.log_every", "7"), ("train.checkpoint_every", "9"),
                       ("train.eval_every_epochs", "0")):
        assert config_lib.config_hash(registry.load("train_teacher", [(key, value)])) \
            == config_lib.config_hash(base), key


def test_teacher_cache_keys_are_unchanged():
    """Cached teachers and the published results name these keys: a change to hashing
    must not orphan them."""
    from experiments import preamble as teacher
    keys = {name: teacher.teacher_key(registry.load(name)) for name in
            ("train_teacher", "train_teacher_tiny", "train_teacher_vit")}
    assert keys == {"train_teacher": "resnet20-9205545500eb",
                    "train_teacher_tiny": "resnet20-5e744f9d018b",
                    "train_teacher_vit": "vit-d6408c3352fb"}
