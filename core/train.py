"""The project's one training loop: any model, any optax transformation, resumable.

A model is given as a ``TrainableModel``: its variables (``params`` trained, other
collections such as ``batch_stats`` updated by the forward pass) and two pure functions.
``linen_model`` adapts a Flax module. Every training in the project runs through ``train``:
teachers, fine-tuning a pruned or factorized function, QAT (``quant/qat.py``: scales
trained beside the weights), learned gates (``pruning/gates.py``: gate logits as an extra
trainable subtree, their own optax transformation) and blockwise distillation
(``nas/distill.py``: many students stacked on a member axis, placed over a device mesh of
students). What varies is passed in: the loss, the optimizer, extra trainable subtrees, how
state and batches are placed on devices, and what is logged.

Data: anything with ``train_batch(step, batch_size, seed, augment, shard)`` (and, for the
final evaluation, ``eval_batches(split, batch_size)``), such as ``data.pipeline.
ImageDataset``, or any iterable of ``(images, labels)`` batches (``IteratorData``).

Determinism: dataset batches are a function of (seed, step) and the dropout key is
fold_in(seed, step), so a run resumed from a checkpoint ends with exactly the parameters
of an uninterrupted run.
"""
import contextlib
import math
import os
from typing import Any, Callable, Dict, Iterable, NamedTuple, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from core import config as config_lib, distributed, fast_depthwise, losses, sharding
from core import workdir as workdir_lib
from core.checkpoint import Checkpointer
from core.progress import MetricsLog, progress_bar


class TrainableModel(NamedTuple):
    variables: Any                         # {'params': ..., other collections ...}
    apply_train: Callable                  # (variables, x, rng[, step]) -> (outputs, updates)
    apply_eval: Callable                   # (variables, x) -> logits
    uses_step: bool = False                # apply_train also takes the step index


def linen_model(module, variables) -> TrainableModel:
    mutable = [k for k in variables if k != "params"]

    def apply_train(v, x, rng):
        logits, updates = module.apply(v, x, train=True, mutable=mutable,
                                       rngs={"dropout": rng})
        return logits, dict(updates)

    def apply_eval(v, x):
        return module.apply(v, x, train=False)
    return TrainableModel(variables, apply_train, apply_eval)


def frozen_model(fn, variables) -> TrainableModel:
    """``fn(variables, x)`` trained as it is: every 'params' leaf learns, the other
    collections (BatchNorm statistics) stay as they are (inference-mode normalization)."""
    return TrainableModel(variables, lambda v, x, rng: (fn(v, x), {}), fn)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    trained: Any              # {'params': ..., extra trainable subtrees ...}
    collections: Any          # non-trained variables updated by the forward pass
    opt_state: Any
    ema: Any                  # == trained when EMA is off

    def eval_variables(self):
        return {"params": self.ema["params"], **self.collections}


def _decay_mask(params):
    """Weight decay on kernels and embeddings only, not on biases and norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """The optimizer of ``cfg``; its schedule spans ``schedule_steps`` (default: this run's
    ``step_offset + total_steps``) and starts at ``step_offset``, so one schedule can run
    across phases (gate training, then fine-tuning) as if they were one run."""
    warmup = int(cfg.get("warmup_steps", 0))
    offset = int(cfg.get("step_offset", 0))
    length = int(cfg.get("schedule_steps", 0)) or offset + total_steps
    whole = optax.warmup_cosine_decay_schedule(
        0.0 if warmup else cfg.learning_rate, cfg.learning_rate, max(warmup, 1),
        max(length, warmup + 1), end_value=cfg.learning_rate * 1e-3)
    schedule = whole if not offset else (lambda count: whole(count + offset))
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


def _loss_and_metrics(loss_fn, outputs, labels, images):
    """A loss function returns the loss, or ``(loss, metrics)`` to log its own metrics."""
    value = loss_fn(outputs, labels, images)
    if isinstance(value, tuple):
        return value
    return value, {"loss": value, "accuracy": losses.accuracy(outputs, labels)}


def make_train_step(model: TrainableModel, tx, loss_fn, ema_decay: float, seed: int):
    def train_step(state: TrainState, images, labels):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)

        def objective(trained):
            variables = {**trained, **state.collections}
            extra = (state.step,) if model.uses_step else ()
            outputs, updates = model.apply_train(variables, images, rng, *extra)
            loss, metrics = _loss_and_metrics(loss_fn, outputs, labels, images)
            return loss, (metrics, updates)
        objective = fast_depthwise.on_cpu(objective)    # student's and teacher's forward
        (_, (metrics, updates)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.trained)
        deltas, opt_state = tx.update(grads, state.opt_state, state.trained)
        trained = optax.apply_updates(state.trained, deltas)
        ema = (trained if not ema_decay else jax.tree.map(
            lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema, trained))
        new_state = state.replace(step=state.step + 1, trained=trained,
                                  collections={**state.collections, **updates},
                                  opt_state=opt_state, ema=ema)
        return new_state, metrics
    return train_step


class DataParallel:
    """The default placement: state replicated, the batch axis split over a 1-D mesh of the
    devices of every process; each process loads only its rows of the global batch."""

    def __init__(self, mesh=None):
        self.mesh = mesh or sharding.data_mesh()

    def check(self, cfg) -> None:
        sharding.check_batch_size(cfg.batch_size, self.mesh)

    def rows(self) -> tuple:
        """(index, count): the share of every global batch this process loads."""
        return sharding.host_shard()

    def place_state(self, state):
        return sharding.put(state, sharding.replicated(self.mesh))

    def place_batch(self, images, labels):
        return sharding.global_batch(self.mesh, images, labels)

    def compile(self, step_fn):
        return jax.jit(step_fn, donate_argnums=0)


class IteratorData:
    """Any iterable of ``(images, labels)`` batches as training data: batch ``step`` is the
    next one (a resumed run skips the batches already used, so an iterable that yields the
    same sequence each time resumes exactly). Every process iterates the same global batches
    and keeps the rows of its ``shard`` (as the data sets do). It has no evaluation splits."""

    def __init__(self, batches: Iterable):
        self._batches, self._iterator, self._next = batches, None, 0

    def train_batch(self, step, batch_size=None, seed=None, augment=None, shard=None):
        if self._iterator is None or step < self._next:
            self._iterator, self._next = iter(self._batches), 0
        while self._next < step:
            next(self._iterator)
            self._next += 1
        self._next += 1
        batch = next(self._iterator)
        index, count = shard or (0, 1)
        return batch if count == 1 else tuple(np.asarray(a)[index::count] for a in batch)


def as_data(data):
    """A dataset (with ``train_batch``) as it is; any other iterable as ``IteratorData``."""
    return data if hasattr(data, "train_batch") else IteratorData(data)


def evaluate(apply_eval, variables, dataset, split: str = "test", batch_size: int = 500,
             mesh=None) -> dict:
    """Accuracy and loss over a whole split (the padded last batch is masked out); every
    process reads the split and puts its block of each batch on the mesh."""
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
    for x, y, w in dataset.eval_batches(split, batch_size):
        x, y, w = sharding.global_batch(mesh, *map(sharding.process_rows, (x, y, w)))
        totals += np.asarray([float(t) for t in sums(variables, x, y, w)])
    return {"accuracy": totals[0] / totals[2], "loss": totals[1] / totals[2]}


def _train_metrics(mean: Dict[str, np.ndarray]) -> Dict[str, float]:
    return {"train_" + k: float(v) for k, v in mean.items()}


def train(model: TrainableModel, data, cfg, workdir: Optional[str], loss_fn=None,
          mesh=None, show_progress: bool = True, *,
          tx: Optional[optax.GradientTransformation] = None,
          extra_trainable: Optional[Dict[str, Any]] = None,
          placement=None, evaluate_splits: Sequence[str] = ("validation", "test"),
          log_metrics: Callable = _train_metrics, description: str = "train") -> dict:
    """Trains ``model`` per ``cfg`` (an ml_collections train section); resumes from workdir.

    ``tx``: the optax transformation of the trained tree ``{'params': ..., **extra_
    trainable}`` (default: ``make_optimizer(cfg)``); ``apply_train`` sees the extra subtrees
    beside 'params'. ``placement``: how state and batches sit on devices (default
    ``DataParallel(mesh)``). ``log_metrics``: the mean metrics of a logging window -> the
    record written to metrics.jsonl. ``workdir=None``: no checkpoints, no metrics file.

    Returns {'variables', 'trained', 'steps', 'history', and one entry per evaluated split};
    ``trained`` holds the final trained tree, extra subtrees included.
    """
    data = as_data(data)
    train_size = len(data.train[0]) if hasattr(data, "train") else None
    config_lib.validate(cfg, train_size=train_size)
    lock = (workdir_lib.locked(workdir, what="training") if workdir
            else contextlib.nullcontext())
    placement = placement or DataParallel(mesh)
    with lock:
        return _train(model, data, cfg, workdir, loss_fn or default_loss(
            cfg.get("label_smoothing", 0.0)), placement, show_progress, tx,
            dict(extra_trainable or {}), evaluate_splits, log_metrics, description)


def steps_of(cfg, train_size: int) -> int:
    """The steps a run of ``cfg`` trains on ``train_size`` examples: ``steps``, or ``epochs``
    of full batches when ``steps`` is 0."""
    return int(cfg.get("steps", 0) or round(cfg.epochs * (train_size // cfg.batch_size)))


def _total_steps(cfg, data) -> tuple:
    """(total steps, steps per epoch or None when the data's size is unknown)."""
    if not hasattr(data, "train"):
        if not cfg.get("steps", 0):
            raise config_lib.ConfigError("training from an iterator of batches needs "
                                         "steps > 0 (it has no epochs)")
        return int(cfg.steps), None
    return steps_of(cfg, len(data.train[0])), len(data.train[0]) // cfg.batch_size


def _initial_state(model, tx, extra, placement):
    # The step donates its state; copies keep the caller's arrays (often a teacher's) alive.
    variables = jax.tree.map(jnp.array, model.variables)
    trained = {"params": variables["params"], **jax.tree.map(jnp.array, extra)}
    collections = {k: v for k, v in variables.items() if k != "params"}
    state = TrainState(jnp.zeros((), jnp.int32), trained, collections, tx.init(trained),
                       trained)
    return placement.place_state(state)


def _train(model, data, cfg, workdir, loss_fn, placement, show_progress, tx, extra,
           evaluate_splits, log_metrics, description) -> dict:
    placement.check(cfg)
    total_steps, steps_per_epoch = _total_steps(cfg, data)
    tx = tx or make_optimizer(cfg, total_steps)
    state = _initial_state(model, tx, extra, placement)
    checkpointer = log = None
    if workdir:
        checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                    cfg.get("checkpoint_every", 0))
        if checkpointer.latest_step() is not None:
            state = checkpointer.restore(state)
            if distributed.is_primary():
                print(f"resumed from step {int(state.step)} in {checkpointer.directory}")
        if distributed.is_primary():   # one metrics file for the job, written by process 0
            log = MetricsLog(os.path.join(workdir, "metrics.jsonl"),
                             resume_step=int(state.step))
    step_fn = placement.compile(make_train_step(model, tx, loss_fn, cfg.get("ema_decay", 0.0),
                                                cfg.seed))
    loop = _Loop(cfg, data, placement, log, log_metrics, total_steps, steps_per_epoch,
                 progress_bar(total_steps, int(state.step), description,
                              enabled=show_progress and distributed.is_primary()))
    try:
        state = loop.run(state, step_fn, checkpointer, model)
    finally:
        loop.bar.close()
        if checkpointer:
            checkpointer.close()
    trained = sharding.to_host(state.ema)
    variables = {"params": trained["params"], **sharding.to_host(state.collections)}
    result = {"variables": variables, "trained": trained, "steps": total_steps,
              "history": loop.history}
    for split in evaluate_splits if hasattr(data, "eval_batches") else ():
        result[split] = evaluate(model.apply_eval, variables, data, split,
                                 mesh=getattr(placement, "mesh", None))
        if log:
            log.write(total_steps, **{f"{split}_{k}": v for k, v in result[split].items()})
    return result


class _Loop:
    """The step loop: batches, logging windows, periodic validation, checkpoints."""

    def __init__(self, cfg, data, placement, log, log_metrics, total_steps, steps_per_epoch,
                 bar):
        self.cfg, self.data, self.placement, self.log = cfg, data, placement, log
        self.log_metrics, self.total_steps, self.bar = log_metrics, total_steps, bar
        self.steps_per_epoch = steps_per_epoch
        self.log_every = max(1, cfg.get("log_every", 50))
        self.eval_every = (cfg.get("eval_every_epochs", 0) * (steps_per_epoch or 0)
                           if hasattr(data, "eval_batches") else 0)
        self.history, self.running = [], []

    def batch(self, step):
        cfg = self.cfg
        rows = getattr(self.placement, "rows", sharding.host_shard)()
        # step_offset: this run continues another one's data stream (see make_optimizer).
        x, y = self.data.train_batch(step + int(cfg.get("step_offset", 0)), cfg.batch_size,
                                     cfg.get("data_seed", cfg.seed),
                                     cfg.get("augment", True), rows)
        return self.placement.place_batch(x, y)

    def run(self, state, step_fn, checkpointer, model):
        for step in range(int(state.step), self.total_steps):
            state, metrics = step_fn(state, *self.batch(step))
            self.running.append(metrics)
            done = step + 1
            if done % self.log_every == 0 or done == self.total_steps:
                self.write_window(done)
            if self.eval_every and done % self.eval_every == 0 and done != self.total_steps:
                val = evaluate(model.apply_eval, state.eval_variables(), self.data,
                               "validation", mesh=getattr(self.placement, "mesh", None))
                if self.log:
                    self.log.write(done, **{"val_" + k: v for k, v in val.items()})
                if distributed.is_primary():
                    self.bar.write(f"step {done}: validation accuracy {val['accuracy']:.4f}")
            if checkpointer:
                checkpointer.maybe_save(done, state, force=done == self.total_steps)
            self.bar.update(1)
        return state

    def write_window(self, done):
        running = sharding.to_host(self.running)     # every process: it may communicate
        mean = {k: np.mean(np.stack([m[k] for m in running]), 0) for k in running[0]}
        self.running = []
        record = self.log_metrics(mean)
        shown = [(k, v) for k, v in record.items() if np.ndim(v) == 0][:3]
        self.bar.set_postfix({k.split("/")[-1][-8:]: f"{float(v):.3f}" for k, v in shown})
        extra = {"epoch": done / self.steps_per_epoch} if self.steps_per_epoch else {}
        if self.log:
            self.log.write(done, **extra, **record)
        self.history.append({"step": done, **record})
