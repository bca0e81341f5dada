"""Blockwise distillation: every student learns its teacher block's output from the teacher
block's input, many students at once.

Students with the same structure (same ``BlockChoice`` and the same input/output shapes,
e.g. one choice at the three equal-shaped blocks of a ResNet stage) form a group that trains
in ONE compiled step: their variables are stacked on a leading "member" axis and the step is
``vmap``-ed over it (on CPU unrolled inside the step, see ``over_members``),
each member seeing its own teacher block's activations for the same
images. The member axis is sharded over a 1-D device mesh ("students"), so a group spreads
over all devices of a host or of every process of a job (``core.distributed``: each process
reads the same images and steps the members on its devices; students are gathered to every
process at the end, and process 0 writes the files); groups run one after the other. Members never
interact (per-member losses, a vmapped optimizer), so training in parallel gives the same
students as training each alone. The step is a ``shard_map`` (each device vmaps over its
own members) rather than left to XLA's SPMD partitioner: on jax 0.10 the partitioner
computed vmapped depthwise and 1x1 convs (inverted residuals, squeeze-excite) wrongly when
their member axis was sharded (errors of order 1 on 2 CPU devices).

The loss is the noise-to-signal ratio of the student's output (MSE over the teacher
output's variance, ``core.losses.feature_matching_loss``). Batches are a function of
(seed, step) and each group checkpoints with orbax, so an interrupted run resumes exactly;
a finished group writes its students and their held-out noise-to-signal to disk and is
skipped on the next run. Progress: a bar per group and metrics.jsonl lines per member.
"""
import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import ml_collections

from core import checkpoint, config as config_lib, distributed, losses, sharding
from core import train as train_lib
from core.progress import MetricsLog
from data import pipeline
from nas.search_space import TEACHER, SearchSpace
from nas.student_blocks import BlockChoice, build_student, init_student
from nas.teacher_init import init_from_teacher
from nas.teacher_blocks import TeacherBlock


@dataclasses.dataclass
class Student:
    position: int                # index into the space's positions
    block_index: int             # index into the teacher blocks
    choice: BlockChoice
    module: Any
    variables: Any
    val_nsr: float = float("nan")

    def fn(self, variables, x):
        return self.module.apply(variables, x, train=False)


@dataclasses.dataclass
class Group:
    """Students of equal structure trained together: member i is ``(position, block_index)``."""
    choice: BlockChoice
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]
    members: List[Tuple[int, int]]

    @property
    def key(self) -> str:
        shapes = f"{self.in_shape[1:]}->{self.out_shape[1:]}"
        digest = hashlib.sha1((self.choice.key + shapes + str(self.members)).encode())
        return f"{self.choice.key}-{digest.hexdigest()[:8]}"


def make_groups(space: SearchSpace, blocks: Sequence[TeacherBlock],
                max_members: int = 0) -> List[Group]:
    """Students of the space grouped by (choice, block input shape, block output shape)."""
    groups: Dict[tuple, Group] = {}
    for position, choice in space.students():
        block = blocks[space.positions[position]]
        key = (choice, block.in_shape[1:], block.out_shape[1:])
        if key not in groups:
            groups[key] = Group(choice, block.in_shape, block.out_shape, [])
        groups[key].members.append((position, space.positions[position]))
    out = []
    for g in groups.values():
        size = max_members or len(g.members)
        for i in range(0, len(g.members), size):
            out.append(Group(g.choice, g.in_shape, g.out_shape, g.members[i:i + size]))
    return out


def student_mesh(devices=None) -> Mesh:
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("students",))


def teacher_io_fn(blocks: Sequence[TeacherBlock], block_indices: Sequence[int]):
    """images -> (inputs, targets) stacked over members: teacher activations around each
    member's block, from one pass through the teacher's blocks."""
    last = max(block_indices)

    def io(images):
        acts = [images]
        for block in blocks[:last + 1]:
            acts.append(block.fn(block.variables, acts[-1]))
        return (jnp.stack([acts[b] for b in block_indices]),
                jnp.stack([acts[b + 1] for b in block_indices]))
    return io


def _split(variables):
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _apply(module, params, collections, x, train):
    variables = {"params": params, **collections}
    if train and collections:
        y, updates = module.apply(variables, x, train=True, mutable=list(collections))
        return y, dict(updates)
    return module.apply(variables, x, train=train), collections


def make_optimizer(cfg, steps: int) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate,
                                                  min(cfg.get("warmup_steps", 20), steps // 4 + 1),
                                                  max(steps, 2), cfg.learning_rate * 1e-2)
    return optax.adamw(schedule, weight_decay=cfg.get("weight_decay", 0.0))


def over_members(fn, how: str):
    """``fn`` applied to every member of stacked arguments, in one compiled program:
    ``vmap`` (batched ops; the choice for GPU/TPU) or ``unroll`` (one copy of the member's
    ops per member). On CPU, XLA turns vmapped convs into grouped convs that ran 5-100x
    slower than the members one by one, and a ``lax.map`` loop was slower still."""
    if how == "vmap":
        return jax.vmap(fn)
    if how == "unroll":
        def unrolled(*args):
            n = jax.tree.leaves(args)[0].shape[0]
            outs = [fn(*jax.tree.map(lambda a, i=i: a[i], args)) for i in range(n)]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        return unrolled
    raise ValueError(f"member batching {how!r}: choose 'vmap' or 'unroll'")


def default_batching() -> str:
    return "unroll" if jax.default_backend() == "cpu" else "vmap"


def vmapped(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` applied to every member of a stacked tree independently (per-member state)."""
    return optax.GradientTransformation(jax.vmap(tx.init), jax.vmap(tx.update))


def student_model(module, stacked, batching: str) -> train_lib.TrainableModel:
    """Stacked students as a ``TrainableModel``: the input is every member's teacher-block
    input, the output every member's block output (BatchNorm statistics updated)."""
    def member_forward(params, collections, x):
        return _apply(module, params, collections, x, train=True)

    def apply_train(v, x, rng):
        params, collections = _split(v)
        return over_members(member_forward, batching)(params, collections, x)

    def apply_eval(v, x):
        params, collections = _split(v)
        return over_members(lambda p, c, xi: _apply(module, p, c, xi, train=False)[0],
                            batching)(params, collections, x)
    return train_lib.TrainableModel(stacked, apply_train, apply_eval)


def member_loss(batching: str):
    """Summed noise-to-signal ratio of the members (each member's gradient is its own);
    logs the per-member values."""
    def loss_fn(outputs, targets, inputs):
        per_member = over_members(losses.feature_matching_loss, batching)(outputs, targets)
        return per_member.sum(), {"nsr": per_member}
    return loss_fn


class MemberParallel:
    """``core.train`` placement of stacked students: the member axis split over a 1-D
    'students' mesh, the image batch on every device, turned into each member's teacher
    activations by ``io``; the step is a ``shard_map`` (each device steps its own members)."""

    def __init__(self, mesh: Mesh, io):
        self.mesh, self.io = mesh, io
        self.members = PartitionSpec("students")
        self.specs = None

    def check(self, cfg) -> None:
        pass                            # every device sees the whole batch

    def rows(self) -> tuple:
        return 0, 1                     # every process loads the whole batch

    def place_state(self, state):
        self.specs = jax.tree.map(lambda a: self.members if jnp.ndim(a) else PartitionSpec(),
                                  state)
        return sharding.put(state, jax.tree.map(lambda s: NamedSharding(self.mesh, s),
                                                self.specs))

    def place_batch(self, images, labels):
        images = sharding.put(images, sharding.replicated(self.mesh))
        return self.io(images)                       # (member inputs, member targets)

    def compile(self, step_fn):
        return jax.jit(jax.shard_map(step_fn, mesh=self.mesh,
                                     in_specs=(self.specs, self.members, self.members),
                                     out_specs=(self.specs, {"nsr": self.members}),
                                     check_vma=False), donate_argnums=0)


def make_eval(module, batching: str = "vmap"):
    def nsr(params, collections, x, target):
        y, _ = _apply(module, params, collections, x, train=False)
        return losses.feature_matching_loss(y, target)
    return over_members(nsr, batching)


def _train_config(cfg) -> ml_collections.ConfigDict:
    """The distillation settings as a ``core.train`` section (no augmentation by default)."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    out.augment = cfg.get("augment", False)
    out.ema_decay, out.epochs = 0.0, 0.0
    return out


def _initial_members(group: Group, module, cfg, padded, init_variables, blocks):
    """Stacked starting variables: ``init_variables`` when given, else each member's own
    random initialisation, started from its teacher block where shapes allow when
    ``cfg.init_from_teacher`` (``nas.teacher_init``)."""
    if init_variables is None:
        init = [init_student(module, group.in_shape, cfg.seed * 1000 + b)
                for _, b in padded]
        if cfg.get("init_from_teacher", False):
            init = [init_from_teacher(v, blocks[b]).variables
                    for v, (_, b) in zip(init, padded)]
    else:
        init = list(init_variables) + [init_variables[0]] * (len(padded) - len(init_variables))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *init)


def train_group(group: Group, blocks: Sequence[TeacherBlock], dataset, cfg,
                workdir: Optional[str] = None, mesh: Optional[Mesh] = None,
                init_variables: Optional[Sequence[Any]] = None,
                show_progress: bool = True, label: str = "") -> List[Student]:
    """Trains one group for ``cfg.steps`` steps with ``core.train.train``; returns one
    Student per member.

    ``cfg``: steps, batch_size, learning_rate, seed, [warmup_steps, weight_decay, augment,
    checkpoint_every, log_every, eval_batches, eval_batch_size, batching ('auto', 'vmap'
    or 'unroll'), init_from_teacher]. ``init_variables`` (one per member) replaces the
    initialization.
    """
    mesh = mesh or student_mesh()
    module = build_student(group.choice, group.in_shape, group.out_shape)
    members = list(group.members)
    padded = members + [members[0]] * (math.ceil(len(members) / mesh.size) * mesh.size
                                       - len(members))
    batching = cfg.get("batching", "auto")
    batching = default_batching() if batching == "auto" else batching
    member_sharding = NamedSharding(mesh, PartitionSpec("students"))
    io = jax.jit(teacher_io_fn(blocks, [b for _, b in padded]),
                 out_shardings=(member_sharding, member_sharding))
    names = [blocks[b].name for _, b in members]
    result = train_lib.train(
        student_model(module, _initial_members(group, module, cfg, padded, init_variables,
                                                       blocks),
                      batching), dataset, _train_config(cfg), workdir, member_loss(batching),
        show_progress=show_progress, tx=vmapped(make_optimizer(cfg, cfg.steps)),
        placement=MemberParallel(mesh, io), evaluate_splits=(),
        log_metrics=lambda mean: {f"nsr/{n}": float(v) for n, v in zip(names, mean["nsr"])},
        description=f"distill {label}{group.choice.key} x{len(members)}")
    trained = result["variables"]
    params, collections = _split(trained)
    state = {"params": params, "collections": collections}
    val = evaluate_group(module, state, io, dataset, cfg, mesh, batching)[:len(members)]
    if workdir and distributed.is_primary():
        MetricsLog(os.path.join(workdir, "metrics.jsonl"), cfg.steps).write(
            cfg.steps, **{f"val_nsr/{n}": float(v) for n, v in zip(names, val)})
    return [Student(p, b, group.choice, module, jax.tree.map(lambda a, i=i: a[i], trained),
                    float(val[i])) for i, (p, b) in enumerate(members)]


def evaluate_group(module, state, io, dataset, cfg, mesh, batching="vmap") -> np.ndarray:
    """Held-out noise-to-signal of every member on the validation split."""
    members = PartitionSpec("students")
    evaluate = jax.jit(jax.shard_map(make_eval(module, batching), mesh=mesh, in_specs=members,
                                     out_specs=members, check_vma=False))
    state = sharding.put(state, NamedSharding(mesh, members))
    batch = cfg.get("eval_batch_size", 256)
    x_all = pipeline.normalize(dataset.validation[0], dataset.mean, dataset.std)
    n_batches = min(cfg.get("eval_batches", 4), max(1, len(x_all) // batch))
    totals = []
    for i in range(n_batches):
        x, target = io(sharding.put(x_all[i * batch:(i + 1) * batch],
                                    sharding.replicated(mesh)))
        totals.append(sharding.to_host(evaluate(state["params"], state["collections"], x,
                                                target)))
    return np.mean(totals, 0)


# ------------------------------------------------------------------ whole space, on disk
def _save_group(directory: str, group: Group, students: List[Student]):
    checkpoint.save_pytree(os.path.join(directory, "students"),
                           [s.variables for s in students])
    record = {"choice": group.choice.as_dict(), "members": group.members,
              "val_nsr": [s.val_nsr for s in students], "done": True}
    if distributed.is_primary():
        with open(os.path.join(directory, "group.json.tmp"), "w") as f:
            json.dump(record, f, indent=1)
        os.replace(os.path.join(directory, "group.json.tmp"),
                   os.path.join(directory, "group.json"))
    distributed.barrier("distilled group saved")


def _load_group(directory: str, group: Group) -> Optional[List[Student]]:
    path = os.path.join(directory, "group.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    module = build_student(group.choice, group.in_shape, group.out_shape)
    template = [init_student(module, group.in_shape) for _ in group.members]
    variables = checkpoint.load_pytree(os.path.join(directory, "students"), template)
    return [Student(p, b, group.choice, module, v, nsr) for (p, b), v, nsr in
            zip(group.members, variables, record["val_nsr"])]


def distill_space(space: SearchSpace, blocks: Sequence[TeacherBlock], dataset, cfg,
                  workdir: str, mesh: Optional[Mesh] = None,
                  show_progress: bool = True) -> Dict[Tuple[int, BlockChoice], Student]:
    """Trains (or loads) every student of the space; keyed by (position, choice)."""
    groups = make_groups(space, blocks, cfg.get("max_members", 0))
    # Students trained under other settings live elsewhere (the config hash is in the path).
    workdir = os.path.join(workdir, config_lib.config_hash(cfg))
    students: Dict[Tuple[int, BlockChoice], Student] = {}
    for g, group in enumerate(groups):
        directory = os.path.join(workdir, group.key)
        trained = _load_group(directory, group)
        if trained is None:
            trained = train_group(group, blocks, dataset, cfg, directory, mesh,
                                  show_progress=show_progress, label=f"[{g + 1}/{len(groups)}] ")
            _save_group(directory, group, trained)
        for s in trained:
            students[(s.position, s.choice)] = s
    return students


__all__ = ["Student", "Group", "make_groups", "student_mesh", "teacher_io_fn", "train_group",
           "evaluate_group", "distill_space", "TEACHER"]
