"""Fashion-MNIST from the idx .gz files of Debian's `dataset-fashion-mnist` package.

Real data with no download at run time: the package puts the four files under
/usr/share/datasets/fashion-mnist/; FASHION_MNIST_DIR points elsewhere.
"""
import gzip
import os
import zlib

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# Per-pixel statistics of the 60k training images (after scaling to [0, 1]).
MEAN, STD = 0.2860, 0.3530


class DatasetNotFoundError(FileNotFoundError):
    """Raised with instructions when the data set files are not on this machine."""


class DatasetCorruptError(ValueError):
    """Raised with the file's path and how to reinstall when a data file is damaged."""


def data_dir() -> str:
    return os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR)


REINSTALL = ("Reinstall it with:  sudo apt-get install --reinstall dataset-fashion-mnist  "
             "(Debian/Ubuntu), or set FASHION_MNIST_DIR to a folder holding intact copies of "
             "the four idx .gz files.")


def _read_idx(path: str) -> np.ndarray:
    """One idx file; a truncated or damaged file raises DatasetCorruptError naming it."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, zlib.error) as error:   # gzip.BadGzipFile is an OSError
        raise DatasetCorruptError(f"{path} is damaged ({type(error).__name__}: {error}). "
                                  + REINSTALL) from error
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
    dtype_code, ndim = magic >> 8, magic & 0xFF
    if dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DatasetCorruptError(f"{path}: not an idx file of unsigned bytes (magic number "
                                  f"0x{magic:08x}). " + REINSTALL)
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DatasetCorruptError(f"{path}: holds {len(raw) - header} bytes of data where its "
                                  f"header promises {int(np.prod(shape))} (shape {shape}). "
                                  + REINSTALL)
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_split(split: str):
    """Returns (images uint8 [N, 28, 28, 1], labels int32 [N]) for 'train' or 'test'."""
    directory = data_dir()
    paths = [os.path.join(directory, name) for name in FILES[split]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: missing {', '.join(missing)}.\n"
            "Install it with:  sudo apt-get install dataset-fashion-mnist  (Debian/Ubuntu), "
            "or set FASHION_MNIST_DIR to a folder holding the four idx .gz files, "
            "or on a machine with internet use dataset='tfds:fashion_mnist' "
            "(tensorflow-datasets downloads it).")
    images, labels = (_read_idx(p) for p in paths)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images[..., None], labels.astype(np.int32)
