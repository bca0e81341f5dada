"""Printed words drawn onto real images, so a text detector's distillation sees text.

Why: a text detector is distilled from its original on unlabelled real images, but the
images the package registries ship hold little text (1.7% of the held-out pixels are text
for PP-OCRv4's detector). Distilled on them, a pruned detector mostly learns "no text here",
and its text maps on the few real words stay poor. SynthText-style overlays fix the data,
not the labels: the original model still labels every overlaid image itself, so nothing
here has to be right about where the text is.

Words are random strings (letters, digits, some punctuation) in the DejaVu fonts that
matplotlib ships (regular, bold, oblique, serif, mono: no download), at random sizes,
positions, light or dark colours contrasting with the image, some on a plain box as on
signs and labels. Deterministic in the ``numpy`` generator it is given, so a resumed run
draws the same overlays.
"""
import functools
import os
import string
from typing import Sequence, Tuple

import numpy as np

FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
              "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSerif-Bold.ttf")
ALPHABET = string.ascii_letters + string.digits
PUNCTUATION = ".,:-/%"


@functools.lru_cache(maxsize=None)
def _font(name: str, size: int):
    import matplotlib
    from PIL import ImageFont
    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name),
                              size)


def random_word(rng: np.random.Generator) -> str:
    """2-10 characters: mostly letters and digits, sometimes punctuation inside."""
    n = int(rng.integers(2, 11))
    chars = [ALPHABET[int(i)] for i in rng.integers(0, len(ALPHABET), n)]
    if n > 3 and rng.random() < 0.2:
        chars[int(rng.integers(1, n - 1))] = PUNCTUATION[int(rng.integers(len(PUNCTUATION)))]
    return "".join(chars)


def overlay_words(image: np.ndarray, rng: np.random.Generator,
                  words: Tuple[int, int] = (1, 8),
                  sizes: Tuple[int, int] = (10, 48)) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with ``words[0]..words[1]`` words drawn on it."""
    from PIL import Image, ImageDraw
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    h, w = image.shape[:2]
    for _ in range(int(rng.integers(words[0], words[1] + 1))):
        face = FONT_FILES[int(rng.integers(len(FONT_FILES)))]
        size = int(rng.integers(sizes[0], max(sizes[0], min(sizes[1], h // 2)) + 1))
        text = " ".join(random_word(rng) for _ in range(int(rng.integers(1, 4))))
        while True:                     # smaller, then fewer words, until the line fits
            font = _font(face, size)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            if right - left < w and bottom - top < h:
                break
            if size > sizes[0]:
                size = max(sizes[0], size * 2 // 3)
            elif " " in text:
                text = text.rsplit(" ", 1)[0]
            else:
                break
        if right - left >= w or bottom - top >= h:
            continue
        x = int(rng.integers(0, w - (right - left)))
        y = int(rng.integers(0, h - (bottom - top)))
        region = image[y:y + bottom - top + 1, x:x + right - left + 1]
        dark_ground = region.mean() < 128
        if rng.random() < 0.3:          # a plain box behind the words, as on a sign
            box = tuple(int(v) for v in rng.integers(0, 60, 3) + (0 if dark_ground else 195))
            draw.rectangle((x - 3, y - 3 + top, x + right - left + 3, y + bottom + 3),
                           fill=box)
            dark_ground = sum(box) < 384
        base = rng.integers(190, 256, 3) if dark_ground else rng.integers(0, 66, 3)
        draw.text((x - left, y), text, font=font, fill=tuple(int(v) for v in base))
    return np.asarray(canvas)


def overlay_batch(images: np.ndarray, rng: np.random.Generator, probability: float,
                  words: Sequence[int] = (1, 8), sizes: Sequence[int] = (10, 48)) -> np.ndarray:
    """Each image of a uint8 batch overlaid with words with ``probability``."""
    out = np.array(images, copy=True)
    for i in range(len(out)):
        if rng.random() < probability:
            out[i] = overlay_words(out[i], rng, tuple(words), tuple(sizes))
    return out


__all__ = ["overlay_words", "overlay_batch", "random_word", "FONT_FILES"]
