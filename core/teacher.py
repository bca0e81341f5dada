"""The trained teacher that compression experiments start from, cached by config hash.

``get_teacher(config)`` returns a trained model, training it only when no cached result
for the same settings exists, so every later experiment (pruning, low-rank, quantization,
NAS) reuses one checkpoint. The cache lives in $TEACHER_CACHE or runs/teachers/.
"""
import json
import os
import time

import jax

from core import checkpoint, config as config_lib, train as train_lib
from data import pipeline
from models import zoo


def cache_root() -> str:
    return os.environ.get("TEACHER_CACHE", os.path.join(config_lib.ROOT, "runs", "teachers"))


def build_module(model_name: str, tiny: bool = False):
    entry = zoo.ZOO[model_name]
    return entry.build_tiny() if tiny else entry.build()


def teacher_key(config) -> str:
    relevant = {"model": config.model, "tiny": config.get("tiny", False),
                "dataset": config.dataset, "validation_size": config.validation_size,
                "data_limit": config.get("data_limit", 0), "train": config.train.to_dict()}
    for name in ("log_every", "checkpoint_every", "eval_every_epochs"):
        relevant["train"].pop(name, None)
    import ml_collections
    return f"{config.model}-{config_lib.config_hash(ml_collections.ConfigDict(relevant))}"


def load_data(config):
    return pipeline.load_dataset(config.dataset, config.validation_size, config.train.seed,
                                 limit=config.get("data_limit", 0) or None)


def get_teacher(config, workdir: str = None, show_progress: bool = True):
    """Returns (module, variables, summary dict); trains and caches on a miss."""
    module = build_module(config.model, config.get("tiny", False))
    directory = os.path.join(cache_root(), teacher_key(config))
    summary_path = os.path.join(directory, "summary.json")
    dataset = load_data(config)
    x0 = dataset.train[0][:1].astype("float32")
    template = module.init(jax.random.key(config.train.seed), x0)
    if os.path.exists(summary_path):
        variables = checkpoint.load_pytree(os.path.join(directory, "variables"), template)
        with open(summary_path) as f:
            summary = json.load(f)
        summary["cached"] = True
        return module, variables, summary
    workdir = workdir or os.path.join(directory, "work")
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    result = train_lib.train(train_lib.linen_model(module, template), dataset, config.train,
                             workdir, show_progress=show_progress)
    summary = {"model": config.model, "test_accuracy": result["test"]["accuracy"],
               "validation_accuracy": result["validation"]["accuracy"],
               "steps": result["steps"], "train_seconds_this_run": time.time() - start,
               "devices": jax.device_count(), "key": teacher_key(config)}
    checkpoint.save_pytree(os.path.join(directory, "variables"), result["variables"])
    tmp = summary_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, summary_path)  # the summary marks the cache entry complete
    summary["cached"] = False
    return module, result["variables"], summary


def main(config, workdir):
    """The train_teacher experiment: train (or reuse) and report test accuracy."""
    _, _, summary = get_teacher(config, os.path.join(workdir, "train"))
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(summary, f, indent=2)
    source = "cached teacher" if summary["cached"] else "trained teacher"
    print(f"{source} {summary['key']}: test accuracy {summary['test_accuracy']:.4f} "
          f"(validation {summary['validation_accuracy']:.4f})")
    return summary
