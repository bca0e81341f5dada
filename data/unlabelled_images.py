"""Real images without labels as training data for distillation from the original model.

Why: the real pretrained models (a selfie segmenter, a text detector) come without their
training data, and no labelled dense-prediction data exists offline; none is needed, since
the original model is the teacher and the loss compares the compressed model's output
with its output on the same augmented image. ``UnlabelledImages`` serves batches through
the protocol ``core.train`` reads (``train_batch(step, batch_size, seed, augment,
shard)``), deterministic in (seed, step) so that a killed run resumes exactly.

The images are stored larger than the model's input (``data.real_images.load`` at a margin)
and augmented by a random crop, a horizontal flip and a brightness / contrast jitter;
``to_input`` turns the uint8 RGB crops into the model's input (its normalisation and
layout). ``overlay(crops, rng)`` adds to the augmentation what the images lack for the
model's task (``data.text_overlay``: printed words for a text detector). Labels are zeros:
losses that need none ignore them.
"""
from typing import Callable, Optional, Tuple

import numpy as np


class UnlabelledImages:
    """Augmented crops of ``images`` (N, H, W, 3 uint8, at least ``size``) as model inputs."""

    def __init__(self, images: np.ndarray, size: Tuple[int, int],
                 to_input: Callable[[np.ndarray], np.ndarray], name: str = "real images",
                 overlay: Optional[Callable[[np.ndarray, np.random.Generator],
                                            np.ndarray]] = None):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] < size[0] or images.shape[2] < size[1]:
            raise ValueError(f"{name}: images of shape {images.shape} cannot give "
                             f"{size[0]}x{size[1]} crops")
        self.images, self.size, self.to_input, self.name = images, tuple(size), to_input, name
        self.overlay = overlay

    def __len__(self) -> int:
        return len(self.images)

    def crops(self, rng: np.random.Generator, index: np.ndarray, augment: bool) -> np.ndarray:
        """uint8 crops of the images at ``index``: random (augmented) or central."""
        h, w = self.size
        n, full_h, full_w = len(index), self.images.shape[1], self.images.shape[2]
        if not augment:
            top, left = (full_h - h) // 2, (full_w - w) // 2
            return self.images[index, top:top + h, left:left + w]
        tops = rng.integers(0, full_h - h + 1, n)
        lefts = rng.integers(0, full_w - w + 1, n)
        out = np.stack([self.images[i, t:t + h, l:l + w]
                        for i, t, l in zip(index, tops, lefts)])
        flip = rng.random(n) < 0.5
        out[flip] = out[flip, :, ::-1]
        gain = rng.uniform(0.75, 1.25, (n, 1, 1, 1))       # contrast
        offset = rng.uniform(-25.0, 25.0, (n, 1, 1, 1))    # brightness
        mean = out.mean(axis=(1, 2, 3), keepdims=True)
        out = np.clip((out - mean) * gain + mean + offset, 0, 255).astype(np.uint8)
        return out if self.overlay is None else self.overlay(out, rng)

    def train_batch(self, step: int, batch_size: int, seed: int, augment: bool = True,
                    shard: Tuple[int, int] = (0, 1)):
        """(inputs, zero labels) of global batch ``step``, or this host's shard of it: each
        epoch visits every image once in a seeded order."""
        if not 0 < batch_size <= len(self):
            raise ValueError(f"batch_size={batch_size}: must be between 1 and the "
                             f"{len(self)} images of {self.name}")
        per_epoch = len(self) // batch_size
        epoch, within = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(self))
        index = order[within * batch_size:(within + 1) * batch_size][shard[0]::shard[1]]
        crops = self.crops(np.random.default_rng([seed, step, shard[0], 2]), index, augment)
        return self.to_input(crops), np.zeros(len(index), np.int32)
