"""Learned channel gates under a differentiable FLOPs or latency budget.

Every prunable group gets one logit per channel. A training step draws hard 0/1 masks
from the logits (logistic noise, then a threshold) and passes gradients through the
sigmoid (straight-through), so the forward pass is exactly the pruned network that
hard-thresholding will produce, while the logits still learn. The masks go through
``pruning.masked`` (any model), and the budget term is the differentiable cost of
``core.cost`` (FLOPs, any input layout) or the latency model of ``export.latency_model``
(milliseconds on a device), evaluated at the kept-channel counts ``sum(mask)`` per group.
Model weights are trained jointly, with distillation from the unpruned teacher.
The noise scale anneals to zero, so the gates settle before they are thresholded.
"""
import dataclasses
import os
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from core import fast_depthwise, losses, sharding
from core.checkpoint import Checkpointer
from core.progress import MetricsLog, progress_bar
from data import pipeline
from pruning import importance
from pruning.masked import masked


@dataclasses.dataclass
class GateSettings:
    steps: int = 600
    batch_size: int = 128
    seed: int = 0
    target: str = "flops"          # 'flops' (a ratio of the full model) or 'latency'
    target_ratio: float = 0.5      # for 'flops': kept FLOPs / full FLOPs
    target_ms: float = 0.0         # for 'latency': predicted ms (0: target_ratio x full)
    penalty: float = 5.0           # weight of the budget term
    gate_learning_rate: float = 0.05
    weight_learning_rate: float = 0.01
    init_logit: float = 3.0
    init_spread: float = 0.0       # > 0: initial logits spread by L1-magnitude rank
    noise_start: float = 1.0       # logistic noise scale, annealed linearly to 0
    temperature: float = 1.0
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    min_keep: int = 1
    multiple: int = 8              # kept counts rounded to a multiple when thresholding
    log_every: int = 25
    checkpoint_every: int = 200    # gate-training checkpoints (a killed run resumes)

    @classmethod
    def from_config(cls, config) -> "GateSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(config).items() if k in known})


def init_logits(groups, value: float, spread: float = 0.0,
                variables=None) -> Dict[int, jnp.ndarray]:
    """Equal logits, or (``spread`` > 0) ``value`` +- ``spread``/2 by L1-magnitude rank within
    each group. Under a budget, Adam moves every logit of a group at about the same speed,
    so equal logits cross zero together and a whole group switches off within a few steps
    (the network collapses and the budget overshoots); spread logits cross one by one,
    weakest first, and the task gradient can still reorder them."""
    prunable = [g for g in groups if g.prunable]
    if spread <= 0:
        return {g.id: jnp.full((g.size,), value, jnp.float32) for g in prunable}
    scores = importance.scores_for("l1", prunable, variables)
    logits = {}
    for g in prunable:
        rank = np.argsort(np.argsort(np.asarray(scores[g.id]), kind="stable"), kind="stable")
        fraction = rank / max(g.size - 1, 1)
        logits[g.id] = jnp.asarray(value + spread * (fraction - 0.5), jnp.float32)
    return logits


def sample_masks(logits, rng, noise_scale, temperature: float = 1.0):
    """Hard 0/1 masks forward, sigmoid gradients backward (straight-through)."""
    masks = {}
    for i, (gid, logit) in enumerate(sorted(logits.items())):
        noise = noise_scale * jax.random.logistic(jax.random.fold_in(rng, i), logit.shape)
        soft = jax.nn.sigmoid((logit + noise) / temperature)
        hard = (logit + noise > 0).astype(soft.dtype)
        masks[gid] = soft + jax.lax.stop_gradient(hard - soft)
    return masks


def kept_sizes(masks, full_sizes: np.ndarray):
    """Per-group kept counts as an array over all groups (unmasked groups stay full)."""
    sizes = jnp.asarray(full_sizes, jnp.float32)
    for gid, m in masks.items():
        sizes = sizes.at[gid].set(jnp.sum(m))
    return sizes


def budget_function(settings: GateSettings, cost_model, latency_fn: Optional[Callable] = None):
    """(sizes -> budget penalty, sizes -> the budgeted quantity relative to its target)."""
    full = cost_model(None)
    if settings.target == "flops":
        full_flops = float(full.flops)

        def relative(sizes):
            return cost_model._evaluate(sizes).flops / (settings.target_ratio * full_flops)
    elif settings.target == "latency":
        if latency_fn is None:
            raise ValueError("target='latency' needs a latency model (a latency table)")
        # target_ms > 0: an absolute budget; otherwise target_ratio of the full model's
        # predicted latency on the same device.
        full_sizes = jnp.asarray([g.size for g in cost_model.groups], jnp.float32)
        target_ms = settings.target_ms or settings.target_ratio * float(latency_fn(full_sizes))

        def relative(sizes):
            return latency_fn(sizes) / target_ms
    else:
        raise ValueError(f"target must be 'flops' or 'latency', got {settings.target!r}")

    def penalty(sizes):
        # Above budget: pushed down hard; below: pulled up gently, so the result lands on it.
        excess = relative(sizes) - 1.0
        return settings.penalty * (jnp.maximum(excess, 0.0) ** 2 * 10 + excess ** 2)
    return penalty, relative


def threshold(groups, logits, settings: GateSettings) -> Dict[int, np.ndarray]:
    """Keep-set from learned logits: channels with positive logit, count rounded to the
    multiple, the highest logits kept."""
    sizes = {g.id: g.size for g in groups}
    keep = {}
    for gid, logit in logits.items():
        logit = np.asarray(logit)
        count = importance.round_count(float(np.sum(logit > 0)), sizes[gid],
                                       settings.multiple, settings.min_keep)
        keep[gid] = np.sort(np.argsort(-logit, kind="stable")[:count])
    return keep


def train_gates(fn, variables, groups, dataset, settings: GateSettings, workdir: str,
                cost_model, teacher_fn: Callable, latency_fn: Optional[Callable] = None,
                show_progress: bool = True):
    """Jointly trains the model's 'params' and the gate logits; returns
    (trained variables, logits, history). ``fn(variables, x)`` is the inference function;
    non-'params' collections (BatchNorm statistics) stay fixed."""
    # Depthwise convolutions as shifted products on CPU (core.fast_depthwise): XLA's CPU
    # grouped convolution makes MobileNetV2's gate training several times slower.
    masked_fn = fast_depthwise.on_cpu(masked(fn, groups))
    teacher_fn = fast_depthwise.on_cpu(teacher_fn)
    full_sizes = np.array([g.size for g in cost_model.groups], np.float32)
    penalty_fn, relative_fn = budget_function(settings, cost_model, latency_fn)
    fixed = {k: v for k, v in variables.items() if k != "params"}
    trainable = {"params": variables["params"],
                 "gates": init_logits(groups, settings.init_logit, settings.init_spread,
                                      variables)}
    tx = optax.multi_transform(
        {"params": optax.chain(optax.clip_by_global_norm(1.0),
                               optax.sgd(optax.cosine_decay_schedule(
                                   settings.weight_learning_rate, settings.steps), 0.9)),
         "gates": optax.adam(settings.gate_learning_rate)},
        {"params": "params", "gates": "gates"})
    opt_state = tx.init(trainable)
    mesh = sharding.data_mesh()

    @jax.jit
    def step(trainable, opt_state, x, y, index):
        rng = jax.random.fold_in(jax.random.key(settings.seed), index)
        noise = settings.noise_start * jnp.maximum(0.0, 1.0 - index / (0.8 * settings.steps))
        teacher_logits = jax.lax.stop_gradient(teacher_fn(x))

        def objective(t):
            masks = sample_masks(t["gates"], rng, noise, settings.temperature)
            logits = masked_fn({"params": t["params"], **fixed}, masks, x)
            task = losses.distillation_loss(logits, teacher_logits, y,
                                            settings.kd_temperature, settings.kd_alpha)
            sizes = kept_sizes(masks, full_sizes)
            budget = penalty_fn(sizes)
            return task + budget, (task, relative_fn(sizes), losses.accuracy(logits, y))
        (loss, (task, rel, acc)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, task, rel, acc

    # Resumable: a killed run restarts from the last gate checkpoint (same batches, same
    # noise schedule: both are functions of the step index).
    checkpointer = Checkpointer(os.path.join(workdir, "gates_checkpoints"),
                                every_steps=settings.checkpoint_every)
    first = 0
    if checkpointer.latest_step() is not None:
        first = checkpointer.latest_step()
        state = checkpointer.restore({"trainable": trainable, "opt_state": opt_state})
        trainable, opt_state = state["trainable"], state["opt_state"]
    log = MetricsLog(os.path.join(workdir, "gates_metrics.jsonl"))
    bar = progress_bar(settings.steps, description="gates", enabled=show_progress,
                       initial=first)
    history = []
    for index in range(first, settings.steps):
        x, y = pipeline.train_batch(dataset, index, settings.batch_size, settings.seed + 17,
                                    True, sharding.host_shard())
        x, y = sharding.global_batch(mesh, x, y)
        trainable, opt_state, task, rel, acc = step(trainable, opt_state, x, y, index)
        if (index + 1) % settings.log_every == 0 or index + 1 == settings.steps:
            record = {"task_loss": float(task), "budget_relative": float(rel),
                      "accuracy": float(acc)}
            history.append({"step": index + 1, **record})
            log.write(index + 1, **record)
            bar.set_postfix(loss=f"{record['task_loss']:.3f}", budget=f"{record['budget_relative']:.2f}",
                            acc=f"{record['accuracy']:.3f}")
        bar.update(1)
        checkpointer.maybe_save(index + 1, {"trainable": trainable, "opt_state": opt_state},
                                force=index + 1 == settings.steps)
    bar.close()
    checkpointer.close()
    return {"params": trainable["params"], **fixed}, trainable["gates"], history
