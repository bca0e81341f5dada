"""Learned channel gates under a differentiable FLOPs or latency budget.

Every prunable group gets one logit per channel. A training step draws hard 0/1 masks
from the logits (logistic noise, then a threshold) and passes gradients through the
sigmoid (straight-through), so the forward pass is exactly the pruned network that
hard-thresholding will produce, while the logits still learn. The masks go through
``pruning.masked`` (any model), and the budget term is the differentiable cost of
``core.cost`` (FLOPs, any input layout) or the latency model of ``export.latency_model``
(milliseconds on a device), evaluated at the kept-channel counts ``sum(mask)`` per group.
Model weights are trained jointly, with distillation from the unpruned teacher, by the
project's one training loop (``core.train.train``: the gate logits are an extra trainable
subtree with their own optax transformation). The noise scale anneals to zero, so the
gates settle before they are thresholded.
"""
import dataclasses
import os
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from core import losses, train as train_lib
from pruning import importance, keep_sets
from pruning.masked import masked


@dataclasses.dataclass
class GateSettings:
    steps: int = 600
    batch_size: int = 128
    seed: int = 0
    data_seed: int = -1            # the batches' seed; < 0: seed + 17
    target: str = "flops"          # 'flops' (a ratio of the full model) or 'latency'
    target_ratio: float = 0.5      # for 'flops': kept FLOPs / full FLOPs
    target_ms: float = 0.0         # for 'latency': predicted ms (0: target_ratio x full)
    penalty: float = 5.0           # weight of the budget term
    budget_ramp: float = 0.0       # > 0: the budget falls from the full model to the target
    #                                linearly over this fraction of the steps (progressive)
    gate_learning_rate: float = 0.05
    weight_learning_rate: float = 0.01
    init_logit: float = 3.0
    init_spread: float = 0.0       # > 0: initial logits spread by L1-magnitude rank
    noise_start: float = 1.0       # logistic noise scale, annealed linearly to 0
    temperature: float = 1.0
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    min_keep: int = 1
    fit_budget: bool = False       # step the rounded keep-set down to the budget (threshold)
    fill_free: bool = True         # latency target: step groups back up where the latency
    #                                table says the extra channels cost (nearly) nothing
    free_tolerance: float = 0.002  # ... at most this rise of latency / budget, per step and
    #                                in all
    multiple: int = 8              # kept counts rounded to a multiple when thresholding;
    #                                0: the device runner's channel_multiple (from_config)
    log_every: int = 25
    checkpoint_every: int = 200    # gate-training checkpoints (a killed run resumes)

    @classmethod
    def from_config(cls, config, device_multiple: Optional[int] = None) -> "GateSettings":
        """Settings from a config; ``multiple = 0`` becomes ``device_multiple`` (the target
        runner's ``channel_multiple``: widths the device's kernels run fastest at)."""
        known = {f.name for f in dataclasses.fields(cls)}
        settings = cls(**{k: v for k, v in dict(config).items() if k in known})
        if settings.multiple <= 0:
            if not device_multiple:
                raise ValueError("gates.multiple = 0 rounds kept widths to the device's "
                                 "channel multiple, but no device runner was given")
            settings.multiple = int(device_multiple)
        return settings


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
            return cost_model(sizes).flops / (settings.target_ratio * full_flops)
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

    full_relative = float(relative(jnp.asarray([g.size for g in cost_model.groups],
                                               jnp.float32)))

    def penalty(sizes, step=None):
        # Above budget: pushed down hard; below: pulled up gently, so the result lands on it.
        # With a ramp the budget of this step lies between the full model and the target:
        # the excess stays small, so the task gradient can still choose which channels go
        # (a fragile pretrained model collapsed when every gate fell at once).
        excess = relative(sizes) / ramped_budget(step) - 1.0
        return settings.penalty * (jnp.maximum(excess, 0.0) ** 2 * 10 + excess ** 2)

    def ramped_budget(step):
        """This step's budget relative to the target (1 once the ramp is over)."""
        if step is None or settings.budget_ramp <= 0:
            return 1.0
        progress = jnp.minimum(1.0, step / (settings.budget_ramp * settings.steps))
        return 1.0 + (full_relative - 1.0) * (1.0 - progress)
    return penalty, relative


def gateable(groups, settings: GateSettings):
    """The prunable groups the keep-set rounding can narrow: wider than ``multiple``
    (``importance.round_count`` keeps a group of at most one multiple whole, so a gate on it
    would spend budget that thresholding gives back)."""
    return [g for g in keep_sets.group_list(groups)
            if g.prunable and (settings.multiple <= 1 or g.size > settings.multiple)]


def check_reachable(gated, full_sizes: np.ndarray, settings: GateSettings,
                    relative_fn: Callable) -> None:
    """Raises when the budget lies below the narrowest model the rounding allows (every
    gated group at one multiple, or ``min_keep``): the gates would strip every layer and
    still miss it. On an AVX-512 CPU (multiple 16) the selfie segmenter cannot go below
    0.67 of its FLOPs: 7 of its 25 groups are 8-16 channels wide at full resolution."""
    floor = np.array(full_sizes, np.float32)
    for g in gated:
        floor[g.id] = min(g.size, max(settings.multiple, settings.min_keep, 1))
    reachable = float(relative_fn(floor))
    if reachable > 1.0:
        raise ValueError(
            f"the {settings.target} budget cannot be met with kept widths rounded to "
            f"multiples of {settings.multiple}: the narrowest such model is "
            f"{reachable:.2f}x the target (target_ratio {settings.target_ratio:g}, "
            f"target_ms {settings.target_ms:g}); raise the target or lower gates.multiple")


def threshold(groups, logits, settings: GateSettings,
              relative_fn: Optional[Callable] = None,
              tolerance: float = 0.02, step_down: bool = True,
              fill_free: bool = False) -> Dict[int, np.ndarray]:
    """Keep-set from learned logits: channels with positive logit, count rounded to the
    multiple, the highest logits kept. Groups are named as in ``logits`` (position or key);
    ``pruning.keep_sets.save`` writes the result by key.

    Rounding to a coarse multiple (16 on AVX-512) can give back much of the budget: the
    selfie segmenter's gates ended at their 2x FLOPs budget and the rounded keep-set had
    1.13x. With ``relative_fn`` (``budget_function``'s second result: sizes -> budgeted
    quantity / target) and ``step_down``, groups are then stepped down one multiple at a
    time, the step that drops the least gate probability per unit of budget saved first,
    until the keep-set is within ``1 + tolerance`` of the budget.

    With ``fill_free`` (a latency budget) groups are afterwards stepped back up one multiple
    at a time where the device's latency table says the extra channels are free: a step is
    taken when it raises the budgeted latency by at most ``settings.free_tolerance`` of the
    budget (and all steps together by at most that much), the most probable channels
    first. On onnxruntime's AVX-512 kernels a 32->32 conv at 14x14 runs in the same time at
    24 and 32 channels (benchmarks/results/width_latency_resnet20.md), so the gates' 24
    costs accuracy and buys no speed."""
    named = {name: keep_sets.group_named(groups, name) for name in logits}
    counts = {name: importance.round_count(float(np.sum(np.asarray(logit) > 0)),
                                           named[name].size, settings.multiple,
                                           settings.min_keep)
              for name, logit in logits.items()}
    order = {name: np.argsort(-np.asarray(logit), kind="stable")
             for name, logit in logits.items()}
    if relative_fn is not None and (step_down or fill_free):
        full = np.array([g.size for g in keep_sets.group_list(groups)], np.float32)
        relative = jax.jit(relative_fn)
        if step_down:
            counts = _step_down_to_budget(full, named, logits, order, counts, settings,
                                          relative, tolerance)
        if fill_free:
            counts = _step_up_where_free(full, named, logits, order, counts, settings,
                                         relative)
    return {name: np.sort(order[name][:count]) for name, count in counts.items()}


def keep_from_logits(groups, logits, settings: GateSettings, cost_model,
                     latency_fn: Optional[Callable] = None) -> Dict[int, np.ndarray]:
    """``threshold`` after gate training, stepped down to the budget when
    ``settings.fit_budget`` and, for a latency target, stepped up where channels are free
    when ``settings.fill_free`` (the budget read from ``cost_model`` / ``latency_fn`` as in
    ``train_gates``)."""
    fill_free = settings.fill_free and settings.target == "latency"
    relative_fn = (budget_function(settings, cost_model, latency_fn)[1]
                   if settings.fit_budget or fill_free else None)
    return threshold(groups, logits, settings, relative_fn,
                     step_down=settings.fit_budget, fill_free=fill_free)


def _sizes(full, named, counts) -> np.ndarray:
    """Every group's kept size, indexed by group id (what the budget function reads)."""
    sizes = full.copy()
    for name, count in counts.items():
        sizes[named[name].id] = count
    return sizes


def _step_down_to_budget(full, named, logits, order, counts, settings, relative,
                         tolerance):
    """``counts`` with groups lowered by one multiple each step (see ``threshold``);
    ``full``: every group's size, indexed by group id."""
    sizes = _sizes(full, named, counts)
    counts = dict(counts)
    step = max(settings.multiple, 1)
    floor = max(settings.min_keep, 1)
    now = float(relative(sizes))
    while now > 1.0 + tolerance:
        best = None
        for name, count in counts.items():
            lower = step * ((count - 1) // step)
            if lower < floor:
                continue
            trial = sizes.copy()
            trial[named[name].id] = lower
            saved = now - float(relative(trial))
            dropped = np.asarray(logits[name])[order[name][lower:count]]
            cost = float(np.sum(jax.nn.sigmoid(dropped))) / max(saved, 1e-9)
            if saved > 0 and (best is None or cost < best[0]):
                best = (cost, name, lower)
        if best is None:
            break                       # every group at its floor: the budget is out of reach
        counts[best[1]] = best[2]
        sizes[named[best[1]].id] = best[2]
        now = float(relative(sizes))
    return counts


def _step_up_where_free(full, named, logits, order, counts, settings, relative):
    """``counts`` with groups raised by one multiple each step while the budgeted quantity
    rises by at most ``settings.free_tolerance`` per step and in all (see ``threshold``);
    of the free steps, the one that adds the most gate probability goes first."""
    sizes = _sizes(full, named, counts)
    counts = dict(counts)
    step = max(settings.multiple, 1)
    start = now = float(relative(sizes))
    while True:
        best = None
        for name, count in counts.items():
            size = named[name].size
            if count >= size:
                continue
            upper = min(size, step * (count // step + 1))
            trial = sizes.copy()
            trial[named[name].id] = upper
            rise = float(relative(trial)) - now
            if rise > settings.free_tolerance or (now + rise) - start > settings.free_tolerance:
                continue
            added = np.asarray(logits[name])[order[name][count:upper]]
            gain = float(np.sum(jax.nn.sigmoid(added)))
            if best is None or gain > best[0]:
                best = (gain, name, upper)
        if best is None:
            return counts
        counts[best[1]] = best[2]
        sizes[named[best[1]].id] = best[2]
        now = float(relative(sizes))


def gate_settings_as_train_config(settings: GateSettings) -> ml_collections.ConfigDict:
    """The ``core.train`` settings of gate training: ``settings.steps`` steps, batches drawn
    with seed ``settings.data_seed`` (default ``settings.seed + 17``; mask noise and dropout
    use ``settings.seed``)."""
    data_seed = settings.data_seed if settings.data_seed >= 0 else settings.seed + 17
    return ml_collections.ConfigDict(dict(
        steps=settings.steps, epochs=0.0, batch_size=settings.batch_size, seed=settings.seed,
        data_seed=data_seed, augment=True, ema_decay=0.0,
        log_every=settings.log_every, checkpoint_every=settings.checkpoint_every))


def gate_optimizer(settings: GateSettings,
                   weight_tx: Optional[optax.GradientTransformation] = None
                   ) -> optax.GradientTransformation:
    """Adam for the gate logits; for the weights ``weight_tx`` (a comparison passes its
    fine-tune's optimizer so the gate steps train like the others' extra fine-tune steps),
    by default SGD with momentum and a cosine schedule."""
    weight_tx = weight_tx or optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.sgd(optax.cosine_decay_schedule(settings.weight_learning_rate, settings.steps),
                  0.9))
    return optax.multi_transform(
        {"params": weight_tx, "gates": optax.adam(settings.gate_learning_rate)},
        {"params": "params", "gates": "gates"})


def gated_model(fn, variables, groups, settings: GateSettings, full_sizes: np.ndarray
                ) -> train_lib.TrainableModel:
    """The model with gates as a ``TrainableModel``: ``apply_train`` draws masks from the
    'gates' subtree (noise annealed linearly to 0 at 80% of the steps) and returns
    ``(logits, kept sizes per group, step)``; non-'params' collections stay fixed."""
    masked_fn = masked(fn, groups)

    def apply_train(v, x, rng, step):
        noise = settings.noise_start * jnp.maximum(0.0, 1.0 - step / (0.8 * settings.steps))
        masks = sample_masks(v["gates"], rng, noise, settings.temperature)
        model_variables = {k: value for k, value in v.items() if k != "gates"}
        return (masked_fn(model_variables, masks, x), kept_sizes(masks, full_sizes), step), {}
    return train_lib.TrainableModel(variables, apply_train, fn, uses_step=True)


def classification_distillation(settings: GateSettings) -> Callable:
    """The default task loss: KD on logits plus cross-entropy, logging the accuracy."""
    def task_loss(logits, teacher_logits, labels):
        task = losses.distillation_loss(logits, teacher_logits, labels,
                                        settings.kd_temperature, settings.kd_alpha)
        return task, {"accuracy": losses.accuracy(logits, labels)}
    return task_loss


def gate_loss(settings: GateSettings, teacher_fn: Callable, penalty_fn, relative_fn,
              task_loss: Optional[Callable] = None):
    """Distillation from the unpruned teacher plus the budget penalty; logs the task loss,
    the budgeted quantity relative to its target and the task's own metrics.
    ``task_loss(outputs, teacher_outputs, labels) -> (loss, metrics)``: default
    ``classification_distillation``; a dense model without labels passes one built on
    ``core.losses.logit_map_distillation``."""
    task_loss = task_loss or classification_distillation(settings)

    def loss_fn(outputs, labels, images):
        student, sizes, step = outputs
        teacher = jax.lax.stop_gradient(teacher_fn(images))
        task, metrics = task_loss(student, teacher, labels)
        return task + penalty_fn(sizes, step), {"task_loss": task,
                                          "budget_relative": relative_fn(sizes),
                                          **{k: v for k, v in metrics.items() if k != "loss"}}
    return loss_fn


def train_gates(fn, variables, groups, data, settings: GateSettings,
                workdir: Optional[str], cost_model, teacher_fn: Callable,
                latency_fn: Optional[Callable] = None, show_progress: bool = True,
                task_loss: Optional[Callable] = None,
                weight_tx: Optional[optax.GradientTransformation] = None):
    """Jointly trains the model's 'params' and the gate logits with ``core.train.train``;
    returns (trained variables, logits, history). ``fn(variables, x)`` is the inference
    function; non-'params' collections (BatchNorm statistics) stay fixed. ``data``: a
    data set (``data.pipeline.ImageDataset``) or any iterable of ``(images, labels)``
    batches. With a ``workdir`` the training checkpoints and logs under ``workdir/gates``
    (a killed run resumes there); with None it keeps nothing on disk. ``task_loss``: see
    ``gate_loss`` (default: classification distillation); ``weight_tx``: see
    ``gate_optimizer``."""
    full_sizes = np.array([g.size for g in cost_model.groups], np.float32)
    penalty_fn, relative_fn = budget_function(settings, cost_model, latency_fn)
    gated = gateable(groups, settings)
    check_reachable(gated, full_sizes, settings, relative_fn)
    logits = init_logits(gated, settings.init_logit, settings.init_spread, variables)
    result = train_lib.train(
        gated_model(fn, variables, groups, settings, full_sizes), data,
        gate_settings_as_train_config(settings),
        os.path.join(workdir, "gates") if workdir else None,
        gate_loss(settings, teacher_fn, penalty_fn, relative_fn, task_loss),
        show_progress=show_progress,
        tx=gate_optimizer(settings, weight_tx), extra_trainable={"gates": logits},
        evaluate_splits=(),
        log_metrics=lambda mean: {k: float(v) for k, v in mean.items()}, description="gates")
    fixed = {k: v for k, v in variables.items() if k != "params"}
    return ({"params": result["trained"]["params"], **fixed}, result["trained"]["gates"],
            result["history"])
