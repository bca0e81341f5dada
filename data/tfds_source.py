"""Any tensorflow-datasets data set by name, read without TensorFlow.

tfds' `data_source` API reads array_record files through random access, so no TensorFlow
is needed once a data set is prepared (tfds can prepare it on a machine with internet).
Images come back as uint8 NHWC and labels as int32, like the Fashion-MNIST reader.
"""
import numpy as np


def load_split(name: str, split: str, data_dir=None, image_key="image", label_key="label"):
    import tensorflow_datasets as tfds  # imported lazily: it is slow to import
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # tfds raises several types for "not prepared"
        raise FileNotFoundError(
            f"tensorflow-datasets data set {name!r} split {split!r} is not prepared in "
            f"{data_dir or '~/tensorflow_datasets'}: {error}\nPrepare it on a machine with "
            f"internet with tfds.builder({name!r}, file_format='array_record')"
            ".download_and_prepare(), then copy the folder here.") from error
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(e[image_key]) for e in examples]).astype(np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray([e[label_key] for e in examples], np.int32)
    return images, labels
