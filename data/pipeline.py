"""Deterministic, stateless batching: a batch is a pure function of (seed, step).

Because nothing is carried between steps, a resumed run sees exactly the batches an
uninterrupted run would (kill-and-resume equality), and every host of a multi-host job
can cut its own shard of the same global batch without communicating.
"""
import dataclasses
import functools
from typing import Iterator, Optional, Tuple

import numpy as np

from data import fashion_mnist, tfds_source


@dataclasses.dataclass
class ImageDataset:
    """uint8 NHWC images and int32 labels, with a validation split carved from train."""
    train: Tuple[np.ndarray, np.ndarray]
    validation: Tuple[np.ndarray, np.ndarray]
    test: Tuple[np.ndarray, np.ndarray]
    mean: float
    std: float
    num_classes: int
    name: str

    @property
    def image_shape(self):
        return self.train[0].shape[1:]

    # The batch-source protocol of ``core.train`` (which imports no data code).
    def train_batch(self, step: int, batch_size: int, seed: int, augmentation: bool = True,
                    shard: Tuple[int, int] = (0, 1)):
        return train_batch(self, step, batch_size, seed, augmentation, shard)

    def eval_batches(self, split: str, batch_size: int) -> Iterator:
        return eval_batches(self, split, batch_size)


# Training examples of each offline data set (before the validation split is carved out),
# so that settings can be checked before the data is read; tfds data sets: 'tfds:NAME'.
TRAIN_EXAMPLES = {"fashion_mnist": 60000}


def train_examples(name: str) -> Optional[int]:
    """The training-set size of data set ``name`` (None for a tfds data set, whose size is
    known only once read); ValueError listing the known names for an unknown one."""
    if name in TRAIN_EXAMPLES:
        return TRAIN_EXAMPLES[name]
    if isinstance(name, str) and name.startswith("tfds:") and len(name) > len("tfds:"):
        return None
    raise ValueError(f"unknown dataset {name!r}: known are "
                     f"{', '.join(repr(n) for n in sorted(TRAIN_EXAMPLES))}, or 'tfds:NAME' "
                     "for a tensorflow-datasets data set")


def _check_split_sizes(name: str, total: int, validation_size: int, limit) -> None:
    if validation_size < 0 or validation_size >= total:
        raise ValueError(f"validation_size={validation_size}: {name} has {total} training "
                         "examples; the validation split must leave at least one to train on")
    if limit is not None and limit < 0:
        raise ValueError(f"data_limit={limit}: must be >= 0 (0 or None: every example)")


def load_dataset(name: str = "fashion_mnist", validation_size: int = 5000, seed: int = 0,
                 data_dir: Optional[str] = None, limit: Optional[int] = None) -> ImageDataset:
    """Loads 'fashion_mnist' (offline, Debian package) or 'tfds:NAME' (tensorflow-datasets).

    ``limit`` keeps only the first examples of every split (for tests and smoke runs).
    """
    train_examples(name)  # an unknown name fails here, listing the known ones
    if name == "fashion_mnist":
        train, test = fashion_mnist.load_split("train"), fashion_mnist.load_split("test")
    else:
        tfds_name = name[len("tfds:"):]
        train = tfds_source.load_split(tfds_name, "train", data_dir)
        test = tfds_source.load_split(tfds_name, "test", data_dir)
    _check_split_sizes(name, len(train[0]), validation_size, limit)
    order = np.random.default_rng(seed).permutation(len(train[0]))
    val_idx, train_idx = order[:validation_size], np.sort(order[validation_size:])
    splits = [(train[0][train_idx], train[1][train_idx]),
              (train[0][val_idx], train[1][val_idx]), test]
    if limit:
        splits = [(x[:limit], y[:limit]) for x, y in splits]
    pixels = splits[0][0].astype(np.float32) / 255.0
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    return ImageDataset(*splits, float(pixels.mean()), float(pixels.std()), num_classes, name)


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0) - mean) / std


def augmentation_draws(rng: np.random.Generator, n: int, pad: int = 4, flip: bool = True):
    """The random crop offsets ``(dy, dx)`` and flips of ``n`` images, drawn in one fixed
    order so that a batch split between processes gets the draws of the whole batch."""
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    flipped = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    return dy, dx, flipped


def apply_augmentation(images: np.ndarray, dy, dx, flipped, pad: int = 4) -> np.ndarray:
    """Crops each zero-padded image at ``(dy, dx)`` and mirrors the flipped ones."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    cols = np.where(flipped[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augment(images: np.ndarray, rng: np.random.Generator, pad: int = 4,
            flip: bool = True) -> np.ndarray:
    """Random crop after zero padding, and random horizontal flip (uint8 in, uint8 out)."""
    return apply_augmentation(images, *augmentation_draws(rng, len(images), pad, flip), pad=pad)


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_batch(dataset: ImageDataset, step: int, batch_size: int, seed: int,
                augmentation: bool = True, shard: Tuple[int, int] = (0, 1)):
    """The (normalized images, labels) of global batch ``step``, or this host's shard of it:
    the same rows, crops and flips whatever the number of processes."""
    x, y = dataset.train
    if not 0 < batch_size <= len(x):
        raise ValueError(f"batch_size={batch_size}: must be between 1 and the {len(x)} "
                         f"training examples of {dataset.name}")
    steps_per_epoch = len(x) // batch_size
    epoch, within = divmod(step, steps_per_epoch)
    idx = _epoch_order(len(x), seed, epoch)[within * batch_size:(within + 1) * batch_size]
    index, count = shard
    mine = slice(index, None, count)
    images = x[idx[mine]]
    if augmentation:
        draws = augmentation_draws(np.random.default_rng([seed, step, 1]), len(idx))
        images = apply_augmentation(images, *(d[mine] for d in draws))
    return normalize(images, dataset.mean, dataset.std), y[idx[mine]]


def eval_batches(dataset: ImageDataset, split: str, batch_size: int) -> Iterator:
    """Fixed-size batches over a split; the last is padded and carries a 0/1 weight mask."""
    x, y = getattr(dataset, split)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        weight = np.ones(len(xb), np.float32)
        missing = batch_size - len(xb)
        if missing:
            xb = np.concatenate([xb, np.zeros((missing,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros(missing, yb.dtype)])
            weight = np.concatenate([weight, np.zeros(missing, np.float32)])
        yield normalize(xb, dataset.mean, dataset.std), yb, weight
