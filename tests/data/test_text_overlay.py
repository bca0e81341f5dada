"""data.text_overlay: printed words on real images, which the original detector then sees."""
import numpy as np
import pytest

from data import real_images, text_overlay
from data.unlabelled_images import UnlabelledImages


def _gray(n=4, size=96, level=200):
    return np.full((n, size, size, 3), level, np.uint8)


def test_overlays_are_deterministic_and_contrast_with_the_image():
    images = _gray()
    a = text_overlay.overlay_batch(images, np.random.default_rng(3), probability=1.0)
    b = text_overlay.overlay_batch(images, np.random.default_rng(3), probability=1.0)
    np.testing.assert_array_equal(a, b)
    assert np.array_equal(images, _gray()), "the input batch is not modified"
    changed = np.any(a != images, axis=-1)
    assert changed.reshape(len(a), -1).mean(1).min() > 0.005      # every image got words
    # On a light ground, letters are dark (a box behind them may be light or dark).
    assert a[changed].min() < 70
    none = text_overlay.overlay_batch(images, np.random.default_rng(3), probability=0.0)
    np.testing.assert_array_equal(none, images)


def test_training_batches_carry_the_overlay_and_stay_resumable():
    overlay = lambda crops, rng: text_overlay.overlay_batch(crops, rng, probability=1.0)
    data = UnlabelledImages(_gray(6, 80), (64, 64), lambda u8: u8, overlay=overlay)
    x, _ = data.train_batch(step=2, batch_size=3, seed=1)
    again, _ = data.train_batch(step=2, batch_size=3, seed=1)
    np.testing.assert_array_equal(x, again)
    assert x.std(axis=(1, 2, 3)).min() > 1.0       # flat gray crops now hold words
    plain, _ = UnlabelledImages(_gray(6, 80), (64, 64), lambda u8: u8).train_batch(2, 3, 1)
    assert plain.std(axis=(1, 2, 3)).max() < 1e-6


def test_the_original_text_detector_finds_the_overlaid_words():
    from experiments import real_model_pruning as program
    from experiments import registry
    from models import real_models
    config = registry.load("prune_ppocr_det_2x").model
    try:
        real_models.path(config.name)
        images = real_images.load("calibration", size=tuple(config.size), limit=8)
    except (real_models.ModelNotFetched, real_images.RealImagesUnavailable) as error:
        pytest.skip(str(error))
    model = program.load_model(config)
    detector = program.with_head(model, model.fn)
    words = text_overlay.overlay_batch(images, np.random.default_rng(0), probability=1.0)
    text = {name: program.predict(detector, model.variables, model.to_input(batch)) > 0.5
            for name, batch in (("plain", images), ("words", words))}
    # Measured: 4.0% of the pixels are text on these 8 images, 7.8% with the words drawn.
    assert text["words"].mean() > text["plain"].mean() + 0.01
    # Where the words went, the detector sees text: most newly detected pixels lie within
    # a few pixels of a changed pixel (the words' boxes; measured 90%).
    changed = np.any(words != images, axis=-1)
    maps = {k: v.reshape(changed.shape) for k, v in text.items()}    # one map per image
    new = maps["words"] & ~maps["plain"]
    near = np.zeros_like(changed)
    for dy in range(-6, 7, 3):
        for dx in range(-6, 7, 3):
            near |= np.roll(changed, (dy, dx), axis=(1, 2))
    assert (new & near).sum() > 0.8 * new.sum()
