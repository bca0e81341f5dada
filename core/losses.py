"""Losses shared by training, fine-tuning and distillation (pruning, low-rank, NAS)."""
import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, label_smoothing: float = 0.0, weights=None):
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
        if label_smoothing else jax.nn.one_hot(labels, num_classes)
    per_example = optax.softmax_cross_entropy(logits, targets)
    return _weighted_mean(per_example, weights)


def accuracy(logits, labels, weights=None):
    return _weighted_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32), weights)


def _weighted_mean(values, weights):
    if weights is None:
        return jnp.mean(values)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def kd_logits_loss(student_logits, teacher_logits, temperature: float = 4.0):
    """Hinton et al.'s KL(teacher || student) on softened logits, scaled by T^2."""
    teacher = jax.nn.softmax(teacher_logits / temperature, -1)
    log_student = jax.nn.log_softmax(student_logits / temperature, -1)
    log_teacher = jax.nn.log_softmax(teacher_logits / temperature, -1)
    kl = jnp.sum(teacher * (log_teacher - log_student), -1)
    return jnp.mean(kl) * temperature ** 2


def feature_matching_loss(student_features, teacher_features, normalized: bool = True):
    """MSE between feature maps; normalized by the teacher's variance (noise-to-signal)
    so that layers of different scales weigh alike."""
    error = jnp.mean(jnp.square(student_features - teacher_features))
    if normalized:
        error = error / (jnp.var(teacher_features) + 1e-8)
    return error


def distillation_loss(student_logits, teacher_logits, labels, temperature: float = 4.0,
                      alpha: float = 0.9, student_features=(), teacher_features=(),
                      feature_weight: float = 0.0):
    """alpha * KD + (1 - alpha) * CE + feature_weight * sum of feature-matching terms."""
    loss = alpha * kd_logits_loss(student_logits, teacher_logits, temperature)
    loss = loss + (1.0 - alpha) * cross_entropy(student_logits, labels)
    for s, t in zip(student_features, teacher_features):
        loss = loss + feature_weight * feature_matching_loss(s, t)
    return loss


def distillation_from(teacher_logits_fn, temperature: float = 4.0, alpha: float = 0.9):
    """``loss_fn(logits, labels, images)`` for ``core.train``: distillation from
    ``teacher_logits_fn(images)`` (no gradient into the teacher) plus cross-entropy. The one
    KD fine-tune loss of pruning, block pruning, low-rank, QAT and NAS."""
    def loss_fn(logits, labels, images):
        teacher_logits = jax.lax.stop_gradient(teacher_logits_fn(images))
        return distillation_loss(logits, teacher_logits, labels, temperature, alpha)
    return loss_fn


def logit_map_distillation(student_logits, teacher_logits):
    """Distillation of a dense binary map (a segmentation mask, a text map) from the
    original model's, which needs no labels: binary cross-entropy of the student's logits
    against the teacher's probabilities. On logits, not on probabilities: a pruned model is
    often confidently wrong (probability 1e-9 where the teacher says 0.9), where a loss on
    the sigmoid's output has a vanishing gradient (a clipped one none at all) and fine-tuning
    cannot repair it. Returns ``(loss, metrics)`` with the pixel agreement and the IoU of
    the maps thresholded at probability 0.5."""
    z = student_logits.astype(jnp.float32)
    t = jax.nn.sigmoid(teacher_logits.astype(jnp.float32))
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(z, t))
    s_on, t_on = z > 0, teacher_logits > 0
    union = jnp.sum(s_on | t_on)
    iou = jnp.where(union > 0, jnp.sum(s_on & t_on) / jnp.maximum(union, 1), 1.0)
    return loss, {"loss": loss, "agreement": jnp.mean(s_on == t_on), "iou": iou}


def dense_distillation_from(teacher_fn):
    """``loss_fn(outputs, labels, images)`` for ``core.train``: ``logit_map_distillation``
    from ``teacher_fn(images)`` (logits; no gradient into the teacher); labels unused."""
    def loss_fn(outputs, labels, images):
        return logit_map_distillation(outputs, jax.lax.stop_gradient(teacher_fn(images)))
    return loss_fn
