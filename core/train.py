"""Supervised training and evaluation for any model, data-parallel, resumable.

A model is given as a ``TrainableModel``: its variables (``params`` trained, other
collections such as ``batch_stats`` updated by the forward pass) and two pure functions.
``linen_model`` adapts a Flax module; later stages (fine-tuning a pruned or factorized
function, distillation) reuse the same loop with their own functions and loss.

Determinism: batches are a function of (seed, step) and the dropout key is
fold_in(seed, step), so a run resumed from a checkpoint ends with exactly the parameters
of an uninterrupted run.
"""
import math
import os
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from core import config as config_lib, fast_depthwise, losses, sharding
from core import workdir as workdir_lib
from core.checkpoint import Checkpointer
from core.progress import MetricsLog, progress_bar
from data import pipeline


class TrainableModel(NamedTuple):
    variables: Any                         # {'params': ..., other collections ...}
    apply_train: Callable                  # (variables, x, rng) -> (logits, updated collections)
    apply_eval: Callable                   # (variables, x) -> logits


def linen_model(module, variables) -> TrainableModel:
    mutable = [k for k in variables if k != "params"]

    def apply_train(v, x, rng):
        logits, updates = module.apply(v, x, train=True, mutable=mutable,
                                       rngs={"dropout": rng})
        return logits, dict(updates)

    def apply_eval(v, x):
        return module.apply(v, x, train=False)
    return TrainableModel(variables, apply_train, apply_eval)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    collections: Any          # non-trained variables updated by the forward pass
    opt_state: Any
    ema_params: Any           # == params when EMA is off

    def eval_variables(self):
        return {"params": self.ema_params, **self.collections}


def _decay_mask(params):
    """Weight decay on kernels and embeddings only, not on biases and norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    warmup = int(cfg.get("warmup_steps", 0))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0 if warmup else cfg.learning_rate, cfg.learning_rate, max(warmup, 1),
        max(total_steps, warmup + 1), end_value=cfg.learning_rate * 1e-3)
    # Clipping guards fine-tuning of freshly pruned or quantized models, whose first
    # gradients can be large; 0 turns it off.
    clip = optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.get("grad_clip_norm", 0) \
        else optax.identity()
    if cfg.optimizer == "sgd":
        base = optax.sgd(schedule, momentum=cfg.get("momentum", 0.9),
                         nesterov=cfg.get("nesterov", True))
        decay = optax.add_decayed_weights(cfg.weight_decay, _decay_mask)
        return optax.chain(clip, decay, base)
    if cfg.optimizer == "adamw":
        return optax.chain(clip, optax.adamw(schedule, weight_decay=cfg.weight_decay,
                                             mask=_decay_mask))
    raise ValueError(f"optimizer {cfg.optimizer!r}: choose 'sgd' or 'adamw'")


def default_loss(label_smoothing: float = 0.0):
    def loss_fn(logits, labels, images):
        return losses.cross_entropy(logits, labels, label_smoothing)
    return loss_fn


def make_train_step(model: TrainableModel, tx, loss_fn, ema_decay: float, seed: int):
    def train_step(state: TrainState, images, labels):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)

        def objective(params):
            logits, updates = model.apply_train({"params": params, **state.collections},
                                                images, rng)
            return loss_fn(logits, labels, images), (logits, updates)
        objective = fast_depthwise.on_cpu(objective)    # student's and teacher's forward
        (loss, (logits, updates)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params)
        deltas, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, deltas)
        ema = (params if not ema_decay else jax.tree.map(
            lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params))
        new_state = state.replace(step=state.step + 1, params=params,
                                  collections={**state.collections, **updates},
                                  opt_state=opt_state, ema_params=ema)
        return new_state, {"loss": loss, "accuracy": losses.accuracy(logits, labels)}
    return train_step


def evaluate(apply_eval, variables, dataset, split: str = "test", batch_size: int = 500,
             mesh=None) -> dict:
    """Accuracy and loss over a whole split (the padded last batch is masked out)."""
    mesh = mesh or sharding.data_mesh()
    batch_size = int(math.ceil(batch_size / mesh.size) * mesh.size)
    apply_eval = fast_depthwise.on_cpu(apply_eval)

    @jax.jit
    def sums(v, x, y, w):
        logits = apply_eval(v, x)
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(correct * w), jnp.sum(ce * w), jnp.sum(w)
    totals = np.zeros(3)
    for x, y, w in pipeline.eval_batches(dataset, split, batch_size):
        x, y, w = sharding.global_batch(mesh, x, y, w)
        totals += np.asarray([float(t) for t in sums(variables, x, y, w)])
    return {"accuracy": totals[0] / totals[2], "loss": totals[1] / totals[2]}


def train(model: TrainableModel, dataset, cfg, workdir: str, loss_fn=None,
          mesh=None, show_progress: bool = True) -> dict:
    """Trains ``model`` per ``cfg`` (an ml_collections train section); resumes from workdir.

    Returns {'variables', 'validation', 'test', 'steps'}; metrics.jsonl and checkpoints/
    are written to ``workdir``, which this process holds locked meanwhile (a second
    training in the same workdir fails at once instead of interleaving its files).
    """
    config_lib.validate(cfg, train_size=len(dataset.train[0]))
    with workdir_lib.locked(workdir, what="training"):
        return _train(model, dataset, cfg, workdir, loss_fn, mesh or sharding.data_mesh(),
                      show_progress)


def _train(model, dataset, cfg, workdir, loss_fn, mesh, show_progress) -> dict:
    sharding.check_batch_size(cfg.batch_size, mesh)
    steps_per_epoch = len(dataset.train[0]) // cfg.batch_size
    total_steps = int(cfg.get("steps", 0) or round(cfg.epochs * steps_per_epoch))
    tx = make_optimizer(cfg, total_steps)
    # The step donates its state; copies keep the caller's arrays (often a teacher's) alive.
    variables = jax.tree.map(jnp.array, model.variables)
    params = variables["params"]
    collections = {k: v for k, v in variables.items() if k != "params"}
    state = TrainState(jnp.zeros((), jnp.int32), params, collections, tx.init(params), params)
    state = jax.device_put(state, sharding.replicated(mesh))

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                cfg.get("checkpoint_every", 0))
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
        print(f"resumed from step {int(state.step)} in {checkpointer.directory}")
    start = int(state.step)
    log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), resume_step=start)
    step_fn = jax.jit(make_train_step(model, tx, loss_fn or default_loss(
        cfg.get("label_smoothing", 0.0)), cfg.get("ema_decay", 0.0), cfg.seed),
        donate_argnums=0)
    log_every = max(1, cfg.get("log_every", 50))
    eval_every = cfg.get("eval_every_epochs", 0) * steps_per_epoch
    bar = progress_bar(total_steps, start, enabled=show_progress)
    running = []
    try:
        for step in range(start, total_steps):
            x, y = pipeline.train_batch(dataset, step, cfg.batch_size, cfg.seed,
                                        cfg.get("augment", True), sharding.host_shard())
            x, y = sharding.global_batch(mesh, x, y)
            state, metrics = step_fn(state, x, y)
            running.append(metrics)
            done = step + 1
            if done % log_every == 0 or done == total_steps:
                mean = {k: float(np.mean([m[k] for m in running])) for k in running[0]}
                running = []
                bar.set_postfix(loss=f"{mean['loss']:.3f}", acc=f"{mean['accuracy']:.3f}")
                log.write(done, epoch=done / steps_per_epoch, **{"train_" + k: v
                                                                 for k, v in mean.items()})
            if eval_every and done % eval_every == 0 and done != total_steps:
                val = evaluate(model.apply_eval, state.eval_variables(), dataset, "validation",
                               mesh=mesh)
                log.write(done, **{"val_" + k: v for k, v in val.items()})
                bar.write(f"step {done}: validation accuracy {val['accuracy']:.4f}")
            checkpointer.maybe_save(done, state, force=done == total_steps)
            bar.update(1)
    finally:
        bar.close()
        checkpointer.close()
    variables = jax.device_get(state.eval_variables())
    result = {"variables": variables, "steps": total_steps}
    for split in ("validation", "test"):
        result[split] = evaluate(model.apply_eval, variables, dataset, split, mesh=mesh)
        log.write(total_steps, **{f"{split}_{k}": v for k, v in result[split].items()})
    return result
