"""The preamble every experiment shares: the trained teacher (cached) and its data.

``get_teacher(config.teacher)`` returns a trained model, training it only when no cached
result for the same settings exists, so every later experiment (pruning, low-rank,
quantization, NAS) reuses one checkpoint. The cache lives in $TEACHER_CACHE or
runs/teachers/. ``prepare`` bundles what the programs then need: the inference function,
the variables, the data set, one normalized example image and the jitted teacher.
"""
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np

from core import checkpoint, config as config_lib, distributed, train as train_lib
from core import workdir as workdir_lib
from data import pipeline
from experiments import registry
from models import zoo


def cache_root() -> str:
    return os.environ.get("TEACHER_CACHE", os.path.join(registry.ROOT, "runs", "teachers"))


def build_module(model_name: str, tiny: bool = False):
    if model_name not in zoo.ZOO:
        raise config_lib.ConfigError(f"unknown model {model_name!r}; the zoo has "
                                     f"{', '.join(sorted(zoo.ZOO))}")
    entry = zoo.ZOO[model_name]
    return entry.build_tiny() if tiny else entry.build()


def teacher_key(config) -> str:
    relevant = {"model": config.model, "tiny": config.get("tiny", False),
                "dataset": config.dataset, "validation_size": config.validation_size,
                "data_limit": config.get("data_limit", 0), "train": config.train.to_dict()}
    for name in ("log_every", "checkpoint_every", "eval_every_epochs"):
        relevant["train"].pop(name, None)
    return f"{config.model}-{config_lib.config_hash(ml_collections.ConfigDict(relevant))}"


def load_data(config):
    return pipeline.load_dataset(config.dataset, config.validation_size, config.train.seed,
                                 limit=config.get("data_limit", 0) or None)


def get_teacher(config, workdir: str = None, show_progress: bool = True):
    """Returns (module, variables, summary dict); trains and caches on a miss.

    The cache entry is locked while it is checked and filled, so two experiments that need
    the same missing teacher train it once: the second waits, then reads the cache. A
    teacher is cached only after at least one training step and a finite test evaluation.
    """
    registry.validate(config)
    module = build_module(config.model, config.get("tiny", False))
    directory = os.path.join(cache_root(), teacher_key(config))
    summary_path = os.path.join(directory, "summary.json")
    dataset = load_data(config)
    x0 = dataset.train[0][:1].astype("float32")
    template = module.init(jax.random.key(config.train.seed), x0)
    with workdir_lib.locked(directory, wait=True, what="training of this teacher"):
        if os.path.exists(summary_path):
            variables = checkpoint.load_pytree(os.path.join(directory, "variables"), template)
            with open(summary_path) as f:
                summary = json.load(f)
            summary["cached"] = True
            return module, variables, summary
        workdir = workdir or os.path.join(directory, "work")
        os.makedirs(workdir, exist_ok=True)
        start = time.time()
        result = train_lib.train(train_lib.linen_model(module, template), dataset,
                                 config.train, workdir, show_progress=show_progress)
        summary = {"model": config.model, "test_accuracy": result["test"]["accuracy"],
                   "validation_accuracy": result["validation"]["accuracy"],
                   "steps": result["steps"], "train_seconds_this_run": time.time() - start,
                   "devices": jax.device_count(), "key": teacher_key(config)}
        check_trained(result, workdir)
        checkpoint.save_pytree(os.path.join(directory, "variables"), result["variables"])
        if distributed.is_primary():   # one writer in a job of several processes
            tmp = summary_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(summary, f, indent=2)
            os.replace(tmp, summary_path)  # the summary marks the cache entry complete
        distributed.barrier("teacher cached")
    summary["cached"] = False
    return module, result["variables"], summary


class UntrainedTeacherError(RuntimeError):
    """Training ended without a usable model; nothing was cached."""


def check_trained(result: dict, workdir: str) -> None:
    """Refuses to cache a teacher that never trained or whose evaluation is not finite."""
    if result["steps"] < 1:
        raise UntrainedTeacherError(f"the teacher ran {result['steps']} training steps; not "
                                    "caching an untrained model")
    bad = {f"{split}_{k}": v for split in ("validation", "test")
           for k, v in result[split].items() if not math.isfinite(v)}
    if bad:
        raise UntrainedTeacherError(
            f"the trained teacher's evaluation is not finite ({bad}): training diverged "
            f"(see {os.path.join(workdir, 'metrics.jsonl')}); not caching it. Try a lower "
            "train.learning_rate.")



class Preamble(NamedTuple):
    """A trained teacher ready for an experiment."""
    module: Any
    fn: Callable              # fn(variables, x): inference (BatchNorm statistics fixed)
    variables: Any
    summary: dict             # the teacher's summary (test accuracy, cache key, ...)
    dataset: pipeline.ImageDataset
    example: np.ndarray       # one normalized test image, shape (1, H, W, C)
    teacher_fn: Callable      # jitted x -> teacher logits


def inference_fn(module) -> Callable:
    return lambda v, x: module.apply(v, x, train=False)


def example_input(dataset) -> np.ndarray:
    return np.asarray(pipeline.normalize(dataset.test[0][:1], dataset.mean, dataset.std))


def prepare(teacher_config, show_progress: bool = True) -> Preamble:
    """The cached (or freshly trained) teacher of ``teacher_config`` with its data."""
    module, variables, summary = get_teacher(teacher_config, show_progress=show_progress)
    dataset = load_data(teacher_config)
    fn = inference_fn(module)
    return Preamble(module, fn, variables, summary, dataset, example_input(dataset),
                    jax.jit(lambda x: fn(variables, x)))
