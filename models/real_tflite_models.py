"""Where the real pretrained TFLite models are on this machine (issue 17).

scripts/fetch_tflite_models.sh (run by scripts/setup.sh) puts them, sha256-checked, in
``${COMPRESS_MODEL_CACHE:-~/.cache/compress-models}/tflite``; nothing downloads at run time.
``path(name)`` returns a model's file or raises ``ModelNotFetched`` saying how to get it.
"""
import dataclasses
import hashlib
import os
import pathlib
from typing import Dict, Tuple


@dataclasses.dataclass(frozen=True)
class RealModel:
    filename: str
    sha256: str
    licence: str
    origin: str                  # the package and member it comes from
    input_hw: Tuple[int, int]    # native input resolution, NHWC
    description: str


MODELS: Dict[str, RealModel] = {
    "selfie_segmentation": RealModel(
        "selfie_segmentation.tflite",
        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", "Apache-2.0",
        "mediapipe==0.10.21:mediapipe/modules/selfie_segmentation/", (256, 256),
        "MediaPipe selfie segmentation: RGB in [0, 1] -> person mask (sigmoid)"),
    "selfie_segmentation_landscape": RealModel(
        "selfie_segmentation_landscape.tflite",
        "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd", "Apache-2.0",
        "mediapipe==0.10.21:mediapipe/modules/selfie_segmentation/", (144, 256),
        "MediaPipe selfie segmentation, landscape 144x256"),
}


class ModelNotFetched(FileNotFoundError):
    """The model file is not in the cache (or is damaged); the message says how to fetch it."""


def cache_dir() -> pathlib.Path:
    root = os.environ.get("COMPRESS_MODEL_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "compress-models"))
    return pathlib.Path(root) / "tflite"


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def path(name: str = "selfie_segmentation", verify: bool = True) -> pathlib.Path:
    """The cached file of the real TFLite model ``name`` (see ``MODELS``)."""
    if name not in MODELS:
        raise KeyError(f"unknown TFLite model {name!r}; known: {sorted(MODELS)}")
    model = MODELS[name]
    file = cache_dir() / model.filename
    how = ("run `bash scripts/fetch_tflite_models.sh` (or `bash scripts/setup.sh`); it "
           f"unzips it from the {model.origin.split(':')[0]} wheel into {cache_dir()}")
    if not file.is_file():
        raise ModelNotFetched(f"real TFLite model {name!r} is not fetched: {file} is missing; "
                              f"{how}")
    if verify and _sha256(file) != model.sha256:
        raise ModelNotFetched(f"{file} does not have the pinned sha256 {model.sha256}; "
                              f"delete it and {how}")
    return file
