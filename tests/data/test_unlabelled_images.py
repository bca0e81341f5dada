"""data.unlabelled_images: deterministic augmented crops of real images for distillation."""
import numpy as np
import pytest

from data.unlabelled_images import UnlabelledImages


def _images(n=6, size=40):
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, size * size * 3).reshape(size, size, 3)
    return np.stack([np.roll(base, 7 * i, axis=0) + rng.integers(0, 5, base.shape)
                     for i in range(n)]).astype(np.uint8)


def test_batches_are_deterministic_crops_in_model_layout():
    data = UnlabelledImages(_images(), (32, 32), lambda u8: u8.astype(np.float32) / 255.0)
    x, labels = data.train_batch(step=3, batch_size=2, seed=5)
    again, _ = data.train_batch(step=3, batch_size=2, seed=5)
    other, _ = data.train_batch(step=4, batch_size=2, seed=5)
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x, again)           # a resumed run sees the same batch
    assert not np.array_equal(x, other)
    np.testing.assert_array_equal(labels, np.zeros(2, np.int32))


def test_each_epoch_visits_every_image_once():
    images = _images()
    data = UnlabelledImages(images, (40, 40), lambda u8: u8)   # full-size: crops are whole
    seen = []
    for step in range(3):                                       # 6 images, batches of 2
        index = data.train_batch(step, 2, seed=1, augment=False)[0]
        seen += [int(np.argmin([np.abs(img.astype(int) - im.astype(int)).sum()
                                for im in images])) for img in index]
    assert sorted(seen) == list(range(6))


def test_central_crop_without_augmentation_and_clear_errors():
    images = _images()
    data = UnlabelledImages(images, (32, 32), lambda u8: u8)
    np.testing.assert_array_equal(data.crops(None, np.array([1]), augment=False)[0],
                                  images[1, 4:36, 4:36])
    with pytest.raises(ValueError, match="cannot give 64x64 crops"):
        UnlabelledImages(images, (64, 64), lambda u8: u8)
    with pytest.raises(ValueError, match="batch_size=7"):
        data.train_batch(0, 7, seed=0)
