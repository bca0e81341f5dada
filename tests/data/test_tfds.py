"""tensorflow-datasets by name, offline: a tiny builder writes array_record files locally
and the loader reads them back through tfds.data_source, without TensorFlow."""
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from data import pipeline  # noqa: E402


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """Six-by-six uint8 images whose label is recoverable from the pixels."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(6, 6, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30), "test": self._generate_examples(9)}

    def _generate_examples(self, count):
        for i in range(count):
            yield i, {"image": np.full((6, 6, 1), 10 * (i % 3), np.uint8), "label": i % 3}


def test_tfds_dataset_by_name(tmp_path):
    TinyShapes(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    dataset = pipeline.load_dataset("tfds:tiny_shapes", validation_size=6,
                                    data_dir=str(tmp_path))
    assert dataset.train[0].shape == (24, 6, 6, 1) and dataset.validation[0].shape[0] == 6
    assert dataset.test[0].shape == (9, 6, 6, 1)
    assert dataset.num_classes == 3
    for images, labels in (dataset.train, dataset.test):
        np.testing.assert_array_equal(images[:, 0, 0, 0], 10 * labels)
    x, y = pipeline.train_batch(dataset, 0, 8, 0, augmentation=False)
    assert x.shape == (8, 6, 6, 1) and y.shape == (8,)


def test_tfds_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared"):
        pipeline.load_dataset("tfds:tiny_shapes_missing", data_dir=str(tmp_path))
