"""The PyTorch half of the Torch-Pruning comparison: pruning, counting, fine-tuning,
evaluation and ONNX export of a torch model, each mirroring what our JAX side does.

The fine-tune follows ``core.train`` step for step so that only the pruning differs: the
batches come from our numpy pipeline (same seed and step, so the same augmented images),
the distillation targets are the JAX teacher's logits on that batch, and the optimizer is
``core.train.make_optimizer``'s: clip by global norm, then weight decay on kernels only,
then SGD with Nesterov momentum on optax's warmup-cosine schedule. BatchNorm runs on its
running statistics (eval mode) like our fine-tune of the pruned inference function.
"""
import copy
import os
from typing import Callable, Dict, List

import numpy as np
import onnx
import optax
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from benchmarks.torch_resnet20 import nchw, to_flax_variables
from core import rewritten
from data import pipeline
from export.onnx_export import to_onnx
from export.parity import session
from pruning import prune

# Torch-Pruning's own recipe (its ``reproduce/main.py``, ``--method group_norm|l1
# --global-pruning``, and the README's ``round_to=8`` "recommended ... for acceleration"):
# method -> (importance factory, pruner class). Both rank globally and prune progressively.
TP_METHODS: Dict[str, tuple] = {
    "tp_groupnorm": (lambda: tp.importance.GroupMagnitudeImportance(p=2),
                     lambda: tp.pruner.GroupNormPruner),
    "tp_magnitude": (lambda: tp.importance.MagnitudeImportance(p=1),
                     lambda: tp.pruner.BasePruner),
}
TP_ROUND_TO = 8                 # README: "round dims/channels to 4x or 8x for acceleration"
TP_ITERATIVE_STEPS = 400        # reproduce/main.py's --iterative-steps default


def set_threads(count: int):
    torch.set_num_threads(max(1, int(count)))


def tp_macs(model: nn.Module, example: torch.Tensor) -> float:
    """Torch-Pruning's own count (multiply-accumulates, with its per-op conventions)."""
    macs, _ = tp.utils.count_ops_and_params(model, example)
    return float(macs)


def tp_pruned(model: nn.Module, example: torch.Tensor, method: str, target: float,
              round_to=TP_ROUND_TO, iterative_steps: int = TP_ITERATIVE_STEPS) -> nn.Module:
    """A pruned copy of ``model`` by Torch-Pruning's progressive recipe: a global pruner
    with ``pruning_ratio=1.0`` over ``iterative_steps`` steps, stepped until its own MAC
    count falls by ``target`` (``reproduce/main.py:progressive_pruning``); the classifier's
    outputs are kept. Of the two steps around the target (the recipe stops at the first
    past it) the one nearer is returned: with ``round_to`` one step can cut a whole
    multiple from many layers at once, and equal FLOPs matter more to the comparison."""
    importance, pruner_class = TP_METHODS[method]
    pruned = _copy(model).eval()
    pruner = pruner_class()(pruned, example, importance=importance(), pruning_ratio=1.0,
                            iterative_steps=iterative_steps, global_pruning=True,
                            ignored_layers=[pruned.head], round_to=round_to)
    full = tp_macs(pruned, example)
    before, reduction_before, reduction = pruned, 1.0, 1.0
    while reduction < target and pruner.current_step < iterative_steps:
        before, reduction_before = _copy(pruned), reduction
        pruner.step()
        reduction = full / tp_macs(pruned, example)
    nearer_before = abs(np.log(reduction_before / target)) < abs(np.log(reduction / target))
    return (before if nearer_before else pruned).eval()


def _copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def matmul_flops(model: nn.Module, example: torch.Tensor) -> int:
    """2 x multiply-accumulates of every Conv2d and Linear, padding taps included: the
    convention of ``core.cost``'s ``matmul_flops``."""
    total = [0]

    def conv_hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        total[0] += 2 * output.numel() * k * module.in_channels // module.groups

    def linear_hook(module, inputs, output):
        total[0] += 2 * output.numel() * module.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules()
              if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(example[:1])
    for h in hooks:
        h.remove()
    return total[0]


def conv_widths(model: nn.Module) -> List[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def distillation_loss(student, teacher, labels, temperature: float, alpha: float):
    """``core.losses.distillation_loss`` in torch: alpha * T^2 KL(teacher||student) on
    softened logits + (1 - alpha) * cross-entropy."""
    log_student = F.log_softmax(student / temperature, -1)
    log_teacher = F.log_softmax(teacher / temperature, -1)
    kl = torch.sum(log_teacher.exp() * (log_teacher - log_student), -1).mean()
    return alpha * kl * temperature ** 2 + (1 - alpha) * F.cross_entropy(student, labels)


def learning_rate_schedule(cfg, total_steps: int) -> Callable[[int], float]:
    """The schedule of ``core.train.make_optimizer`` for the same config."""
    warmup = int(cfg.get("warmup_steps", 0))
    return optax.warmup_cosine_decay_schedule(
        0.0 if warmup else cfg.learning_rate, cfg.learning_rate, max(warmup, 1),
        max(total_steps, warmup + 1), end_value=cfg.learning_rate * 1e-3)


def finetune(model: nn.Module, dataset, cfg, teacher_fn: Callable, steps: int) -> nn.Module:
    """Distillation fine-tune in place, batch for batch the same as ``core.train.train``."""
    model.eval()                                  # BatchNorm on running statistics
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate, momentum=cfg.get("momentum", 0.9),
        nesterov=cfg.get("nesterov", True))
    schedule = learning_rate_schedule(cfg, steps)
    for step in range(steps):
        x, y = pipeline.train_batch(dataset, step, cfg.batch_size, cfg.seed,
                                    cfg.get("augment", True))
        teacher_logits = torch.from_numpy(np.array(teacher_fn(x), np.float32))
        for group in optimizer.param_groups:
            group["lr"] = float(schedule(step))
        loss = distillation_loss(model(nchw(x)), teacher_logits,
                                 torch.from_numpy(np.asarray(y, np.int64)),
                                 cfg.kd_temperature, cfg.kd_alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.get("grad_clip_norm", 0):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        optimizer.step()
    return model.eval()


def evaluate(model: nn.Module, dataset, split: str = "test", batch_size: int = 500) -> float:
    """Accuracy over a whole split (the padded last batch masked out)."""
    model.eval()
    correct = total = 0.0
    with torch.no_grad():
        for x, y, w in pipeline.eval_batches(dataset, split, batch_size):
            predicted = model(nchw(x)).argmax(-1).numpy()
            correct += float(np.sum((predicted == y) * w))
            total += float(np.sum(w))
    return correct / total


def export_onnx(model: nn.Module, example: torch.Tensor, path: str, rtol: float = 1e-4):
    """``torch.onnx.export`` (TorchScript exporter, dynamic batch), checked in onnxruntime
    against PyTorch at batch 3."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.eval()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), path, dynamo=False, input_names=["input_0"],
                          output_names=["output_0"],
                          dynamic_axes={"input_0": {0: "B"}, "output_0": {0: "B"}})
    x = torch.randn((3,) + tuple(example.shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    got = session(onnx.load(path)).run(None, {"input_0": x.numpy()})[0]
    error = float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-12))
    if error > rtol:
        raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {error:.2e}")
    return error


def export_by_ours(model: nn.Module, fn, variables, groups, example, images, path: str,
                   rtol: float = 1e-4):
    """One exporter for both sides of a comparison: a (pruned) twin read back into the JAX
    model ``fn`` at its own widths (``torch_resnet20.to_flax_variables``; each channel
    group keeps its first channels, the weights are the twin's) and written by
    ``export.to_onnx`` like ours. ``groups``: ``find_groups`` of ``fn`` at ``variables``.
    Raises unless the JAX function gives the twin's logits on ``images`` (NHWC)."""
    read_back = to_flax_variables(model)
    leaves = rewritten.leaves_by_path(read_back)
    keep = {}
    for group in groups:
        member = group.members[0]
        width = leaves[member.path].shape[member.axis] // member.index_map.shape[1]
        if width != group.size:
            keep[group.id] = np.arange(width)
    pruned = prune(fn, variables, example, keep=keep, analysis=groups)
    ours = np.asarray(pruned.fn(read_back, images))
    with torch.no_grad():
        theirs = model.eval()(nchw(images)).numpy()
    error = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    if error > rtol:
        raise ValueError(f"the PyTorch model read back into JAX differs from it by "
                         f"{error:.2e} (relative); not exported")
    to_onnx(pruned.fn, read_back, example, path=path)
