"""Real photographs and video frames, offline and deterministic, for distilling and
calibrating compressed copies of real pretrained models, and for measuring their fidelity.

No labels are needed (the original model is the teacher), so any real image serves; these are
the ones that package registries ship, found on disk at run time (nothing downloads):

- Debian ``opencv-doc``: every still of at least 128 px (shorter side) under
  /usr/share/doc/opencv-doc/examples (140 files: photos, text, shapes, stereo pairs) and the
  videos vtest.avi (795 frames of pedestrians), tree.avi (the 68 of its 444 announced
  frames that decode) and Megamind.avi (270),
  decoded with ``opencv-python-headless`` (Megamind_bugy.avi, a deliberately damaged copy,
  is left out).
- scikit-image's bundled pictures (skimage/data: 25 of at least 128 px) and matplotlib's
  sample images (3).
- scikit-learn's two sample photos, only where scikit-learn is installed (it is not pinned:
  the set below does not count them).

The split is BY SOURCE, never by frame: a video is one source; an opencv-doc example folder
other than data/ (text/, shape/...) is one source; in data/ and the Python packages, stills
that show the same scene (``graf1``/``graf3``, stereo pairs ``aloeL``/``aloeR``,
``left01``..``right14``, ``ela_original``/``ela_modified``: ``SAME_SCENE``) form one
source. A source is held out for evaluation when the sha256 of its key, mod 3, is 0, so
adding a package never moves another source across the split. vtest.avi and tree.avi are
pinned to the distillation/calibration split and Megamind.avi to evaluation, so each split has
a video and no video's frames are on both sides.

Counts with opencv-doc 4.6.0, scikit-image 0.26.0 and matplotlib 3.11.2 (see ``counts()``;
tests/data/test_real_images.py checks them):

=============  ======  ======  ======
split          stills  frames  images
=============  ======  ======  ======
calibration       114     863     977   (53 sources)
evaluation         54     270     324   (29 sources)
=============  ======  ======  ======

``load(split, size=(H, W))`` returns RGB NHWC arrays: each image is centre-cropped to the
aspect ratio of ``size`` and resized with OpenCV (INTER_AREA when shrinking, INTER_LINEAR
when growing); grey images are repeated over three channels, alpha is dropped, 16-bit images
keep their top 8 bits. Items come in a fixed order that takes the sources in turn (see
``catalog``), so ``limit=N`` takes N different sources (up to their number) and frames
spread over each video, rather than the first video's first N frames.
"""
import dataclasses
import functools
import hashlib
import pathlib
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

SPLITS = ("calibration", "evaluation")
ALIASES = {"distillation": "calibration", "calib": "calibration", "eval": "evaluation",
           "heldout": "evaluation", "held_out": "evaluation"}
MIN_SIDE = 128
STILL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
OPENCV_DOC = pathlib.Path("/usr/share/doc/opencv-doc/examples")
# Video -> (split, frames that decode). tree.avi's header announces 444 frames but only the
# first 68 decode; tests/data/test_real_images.py decodes every video to check these counts.
VIDEOS = {"vtest.avi": ("calibration", 795), "tree.avi": ("calibration", 68),
          "Megamind.avi": ("evaluation", 270)}
SETUP_HINT = "run `bash scripts/setup.sh` (it installs the pinned packages and Debian's opencv-doc)"


class RealImagesUnavailable(RuntimeError):
    """A package the real image set needs is missing; the message says how to install it."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One independent origin of images: a video, or the stills of one scene."""
    key: str                      # e.g. "opencv-doc:data/aloe", "opencv-doc:vtest.avi"
    paths: Tuple[pathlib.Path, ...]
    frames: int                   # images it gives: frames of a video, files of stills
    video: bool = False


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of a split: ``frame`` indexes a video's frames (0 for a still)."""
    source: str
    path: pathlib.Path
    frame: int


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise RealImagesUnavailable(
            "data.real_images needs the Python package opencv-python-headless (pinned in "
            f"requirements.txt): {SETUP_HINT}") from e
    return cv2


# Stills that show the same scene as another file under a different name.
SAME_SCENE = {
    "aloeL": "aloe", "aloeR": "aloe", "aloeGT": "aloe", "leuvenA": "leuven",
    "leuvenB": "leuven", "ela_modified": "ela", "ela_original": "ela", "box_in_scene": "box",
    "imageTextN": "imageText", "imageTextR": "imageText", "opencv-logo-white": "opencv-logo",
    "text_defocus": "text_blur", "text_motion": "text_blur", "templ": "tmpl",
    "chessboard_GRAY": "chessboard", "chessboard_RGB": "chessboard",
    "motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle",
    "left": "stereo_chessboard", "right": "stereo_chessboard",
}


def _scene_key(folder: str, stem: str) -> str:
    """Stills of one scene share a key: a whole example folder of opencv-doc other than
    data/ ('text', 'shape'...), else the stem without trailing digits ('graf1', 'graf3' ->
    'graf') mapped through SAME_SCENE ('aloeL', 'aloeR' -> 'aloe')."""
    if folder not in (".", "data"):
        return folder.split("/")[0]
    stem = re.sub(r"[_-]?\d+$", "", stem)
    return f"{folder}/{SAME_SCENE.get(stem, stem)}"


def _image_size(path: pathlib.Path) -> Tuple[int, int]:
    from PIL import Image  # header only: no decode
    with Image.open(path) as im:
        return im.size


def _still_sources(package: str, root: pathlib.Path, files: Sequence[pathlib.Path]) -> List[Source]:
    scenes: Dict[str, List[pathlib.Path]] = {}
    for p in sorted(files):
        if p.suffix.lower() in STILL_SUFFIXES and min(_image_size(p)) >= MIN_SIDE:
            folder = str(p.parent.relative_to(root)) if p.parent != root else "."
            scenes.setdefault(f"{package}:{_scene_key(folder, p.stem)}", []).append(p)
    return [Source(k, tuple(v), len(v)) for k, v in sorted(scenes.items())]


def _opencv_doc() -> List[Source]:
    if not (OPENCV_DOC / "data" / "vtest.avi").exists():
        raise RealImagesUnavailable(
            f"data.real_images needs Debian's opencv-doc package ({OPENCV_DOC} is missing): "
            f"{SETUP_HINT}, or `apt-get install opencv-doc`")
    files = [p for p in OPENCV_DOC.rglob("*") if p.is_file()]
    sources = _still_sources("opencv-doc", OPENCV_DOC, files)
    for name, (_, frames) in VIDEOS.items():
        sources.append(Source(f"opencv-doc:{name}", (OPENCV_DOC / "data" / name,), frames,
                              video=True))
    return sources


def _package_dir(module: str, *parts: str) -> Optional[pathlib.Path]:
    import importlib.util
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(list(spec.submodule_search_locations)[0], *parts)


def _bundled(package: str, module: str, required: bool, *parts: str) -> List[Source]:
    folder = _package_dir(module, *parts)
    if folder is None or not folder.is_dir():
        if required:
            raise RealImagesUnavailable(
                f"data.real_images needs the Python package {package} (pinned in "
                f"requirements.txt): {SETUP_HINT}")
        return []
    return _still_sources(package, folder, list(folder.iterdir()))


# Where images come from: name -> function listing its sources. A provider that is required
# raises RealImagesUnavailable naming its package when missing; optional ones give nothing.
PROVIDERS: Dict[str, Callable[[], List[Source]]] = {
    "opencv-doc": _opencv_doc,
    "scikit-image": lambda: _bundled("scikit-image", "skimage", True, "data"),
    "matplotlib": lambda: _bundled("matplotlib", "matplotlib", True, "mpl-data", "sample_data"),
    "scikit-learn": lambda: _bundled("scikit-learn", "sklearn", False, "datasets", "images"),
}


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def split_of(source: Source) -> str:
    """The split a whole source belongs to (module docstring)."""
    if source.video:
        return VIDEOS[source.key.split(":", 1)[1]][0]
    return "evaluation" if _hash(source.key) % 3 == 0 else "calibration"


@functools.lru_cache(maxsize=None)
def sources() -> Tuple[Source, ...]:
    """Every source on this machine, in a fixed order."""
    found = [s for provider in PROVIDERS.values() for s in provider()]
    return tuple(sorted(found, key=lambda s: s.key))


def _split_name(split: str) -> str:
    name = ALIASES.get(split, split)
    if name not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS} "
                         f"(or {sorted(ALIASES)})")
    return name


@functools.lru_cache(maxsize=None)
def catalog(split: str) -> Tuple[Item, ...]:
    """The items of ``split`` in load order: round robin over the sources (in the order of
    their keys' hashes), each source's items in the order of their own hashes, so the first
    N items come from min(N, sources) different sources and spread over each video."""
    split = _split_name(split)
    ranked = []
    for s in sources():
        if split_of(s) != split:
            continue
        if s.video:
            items = [Item(s.key, s.paths[0], f) for f in range(s.frames)]
        else:
            items = [Item(s.key, p, 0) for p in s.paths]
        items.sort(key=lambda it: (_hash(f"{it.path.name}#{it.frame}"), it.path, it.frame))
        ranked += [((rank, _hash(s.key), s.key), it) for rank, it in enumerate(items)]
    return tuple(it for _, it in sorted(ranked, key=lambda pair: pair[0]))


def counts() -> Dict[str, Dict[str, int]]:
    """Stills, video frames, images and sources of each split."""
    out = {}
    for split in SPLITS:
        items = catalog(split)
        frames = sum(1 for it in items if it.path.suffix == ".avi")
        out[split] = {"stills": len(items) - frames, "frames": frames, "images": len(items),
                      "sources": len({it.source for it in items})}
    return out


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def fit(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Centre crop to the aspect ratio of ``size`` = (H, W), then resize to it."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    th, tw = size
    if h * tw > w * th:          # too tall: crop rows
        ch, cw = max(1, round(w * th / tw)), w
    else:                        # too wide: crop columns
        ch, cw = h, max(1, round(h * tw / th))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top:top + ch, left:left + cw]
    shrink = ch >= th and cw >= tw
    return cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _read_still(path: pathlib.Path) -> np.ndarray:
    cv2 = _cv2()
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise RealImagesUnavailable(f"cannot decode {path}: reinstall its package ({SETUP_HINT})")
    return _to_rgb8(image)


def _read_frames(path: pathlib.Path, wanted: Sequence[int]) -> Dict[int, np.ndarray]:
    """The wanted frames of a video, decoded in one sequential pass."""
    cv2 = _cv2()
    wanted_set, out = set(wanted), {}
    capture = cv2.VideoCapture(str(path))
    for index in range(max(wanted) + 1):
        if not capture.grab():
            break
        if index in wanted_set:
            ok, frame = capture.retrieve()
            if ok:
                out[index] = _to_rgb8(frame)
    capture.release()
    missing = wanted_set - set(out)
    if missing:
        raise RealImagesUnavailable(f"{path}: frames {sorted(missing)[:5]}... did not decode "
                                    f"({SETUP_HINT})")
    return out


def load(split: str, size: Tuple[int, int] = (256, 256), limit: Optional[int] = None,
         dtype=np.uint8) -> np.ndarray:
    """Images of ``split`` as an (N, H, W, 3) RGB array: uint8 in [0, 255], or a floating
    ``dtype`` in [0, 1]. ``limit`` takes the first N of the fixed order (``catalog``)."""
    items = catalog(split)[:limit]
    h, w = int(size[0]), int(size[1])
    out = np.empty((len(items), h, w, 3), np.uint8)
    videos: Dict[pathlib.Path, List[int]] = {}
    for row, it in enumerate(items):
        if it.path.suffix == ".avi":
            videos.setdefault(it.path, []).append(row)
        else:
            out[row] = fit(_read_still(it.path), (h, w))
    for path, rows in videos.items():
        frames = _read_frames(path, [items[r].frame for r in rows])
        for r in rows:
            out[r] = fit(frames[items[r].frame], (h, w))
    if np.issubdtype(np.dtype(dtype), np.floating):
        return out.astype(dtype) / np.asarray(255, dtype)
    return out.astype(dtype, copy=False)
