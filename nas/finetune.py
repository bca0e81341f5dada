"""The claim check: is an assembled architecture already as good as it gets, or does a short
end-to-end distillation fine-tune still help?

DONNA's argument is that with a good teacher, blocks distilled in isolation compose into a
network that needs no fine-tuning. Here the assembled network (``nas.architecture.assemble``)
is trained for a few steps as a whole, against the teacher's logits (Hinton KD plus a little
cross-entropy), with the project's ordinary training loop (``core.train``: data-parallel,
checkpointed, resumable). Every leaf under a 'params' path is trained; normalization
statistics stay frozen (BatchNorm in inference mode), as usual for a short fine-tune.
"""
import functools

import jax
import ml_collections

from core import losses, train as train_lib
from nas import architecture


def _split_trainable(variables):
    flat, tree = jax.tree_util.tree_flatten_with_path(variables)
    trainable = {}
    frozen = {}
    for i, (path, leaf) in enumerate(flat):
        name = jax.tree_util.keystr(path)
        (trainable if "params" in name else frozen)[f"{i:05d}"] = leaf
    return trainable, frozen, tree


def _merge(trainable, frozen, tree):
    leaves = {**trainable, **frozen}
    return jax.tree_util.tree_unflatten(tree, [leaves[k] for k in sorted(leaves)])


def train_config(cfg) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        seed=cfg.get("seed", 0), batch_size=cfg.batch_size, epochs=0.0, steps=cfg.steps,
        optimizer="adamw", learning_rate=cfg.learning_rate, weight_decay=cfg.get(
            "weight_decay", 0.0), warmup_steps=cfg.get("warmup_steps", 0), label_smoothing=0.0,
        ema_decay=0.0, augment=cfg.get("augment", True), log_every=cfg.get("log_every", 50),
        eval_every_epochs=0, checkpoint_every=cfg.get("checkpoint_every", 200)))
    return c


def claim_check(library, arch, teacher_fn, teacher_variables, dataset, cfg, workdir) -> dict:
    """Test accuracy of ``arch`` as assembled and after ``cfg.steps`` of end-to-end KD."""
    fn, variables = architecture.assemble(library, tuple(arch))
    trainable, frozen, tree = _split_trainable(variables)
    model = train_lib.TrainableModel(
        {"params": trainable, "frozen": frozen},
        lambda v, x, rng: (fn(_merge(v["params"], v["frozen"], tree), x), {}),
        lambda v, x: fn(_merge(v["params"], v["frozen"], tree), x))
    loss_fn = losses.distillation_from(functools.partial(teacher_fn, teacher_variables),
                                       cfg.get("temperature", 4.0), cfg.get("alpha", 0.9))
    before = train_lib.evaluate(model.apply_eval, model.variables, dataset, "test")
    result = train_lib.train(model, dataset, train_config(cfg), workdir, loss_fn,
                             show_progress=cfg.get("show_progress", False))
    return {"arch": list(arch), "steps": int(cfg.steps),
            "assembled_test_accuracy": float(before["accuracy"]),
            "finetuned_test_accuracy": float(result["test"]["accuracy"]),
            "gain": float(result["test"]["accuracy"] - before["accuracy"])}


__all__ = ["claim_check", "train_config"]
