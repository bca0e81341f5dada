"""Quantization-aware training: fine-tune the fake-quant model, distilled from float.

PTQ leaves a model whose weights were trained for float arithmetic. QAT trains through the
quantizers (straight-through ``round``) so the weights adapt to the integer grid, and the
scales are learned with LSQ's gradient. The target is the float teacher's output
distribution (``core.losses.distillation_loss``: KD on softened logits plus a little
cross-entropy), which needs no more labels than the calibration data and keeps the
quantized model close to the model it replaces. The loop is ``core.train.train``: the
trained tree is ``{'model': variables, 'scale': qparams['scale']}``; zero points stay
fixed (a non-trained collection).
"""
from typing import Callable, Optional

import functools

import ml_collections

from core import losses, train as train_lib
from quant.fakequant import QuantizedModel


def trainable(model: QuantizedModel, variables, qparams) -> train_lib.TrainableModel:
    """The fake-quant model as a ``TrainableModel`` (learnable scales, STE weights)."""
    def unpack(v):
        return v["params"]["model"], {"scale": v["params"]["scale"],
                                      "zero_point": v["zero_point"]}

    def apply_train(v, x, rng):
        weights, qp = unpack(v)
        return model.apply(weights, qp, x, learnable=True), {}

    def apply_eval(v, x):
        weights, qp = unpack(v)
        return model.apply(weights, qp, x)
    tree = {"params": {"model": variables, "scale": dict(qparams["scale"])},
            "zero_point": dict(qparams["zero_point"])}
    return train_lib.TrainableModel(tree, apply_train, apply_eval)


def qat(model: QuantizedModel, variables, qparams, dataset, cfg: ml_collections.ConfigDict,
        workdir: str, teacher_fn: Optional[Callable] = None, teacher_variables=None,
        temperature: float = 4.0, alpha: float = 0.9, show_progress: bool = False):
    """Fine-tunes weights and scales. ``teacher_fn`` defaults to the float version of the
    same model with the starting variables. Returns ``(variables, qparams, result)``
    where ``result`` is ``core.train.train``'s (validation / test accuracy of the
    fake-quant model)."""
    if teacher_fn is None:
        teacher_fn, teacher_variables = model.float_fn, variables
    result = train_lib.train(trainable(model, variables, qparams), dataset, cfg, workdir,
                             loss_fn=losses.distillation_from(
                                 functools.partial(teacher_fn, teacher_variables),
                                 temperature, alpha),
                             show_progress=show_progress)
    trained = result["variables"]
    new_qparams = {"scale": trained["params"]["scale"], "zero_point": trained["zero_point"]}
    return trained["params"]["model"], new_qparams, result


def default_config(**overrides) -> ml_collections.ConfigDict:
    """A short fine-tuning schedule (SGD, small learning rate, no weight decay)."""
    cfg = ml_collections.ConfigDict(dict(
        seed=0, batch_size=128, epochs=1.0, steps=0, optimizer="sgd", learning_rate=0.002,
        momentum=0.9, nesterov=True, weight_decay=0.0, warmup_steps=0, label_smoothing=0.0,
        ema_decay=0.0, augment=False, log_every=50, eval_every_epochs=0, checkpoint_every=0))
    cfg.update(overrides)
    return cfg
