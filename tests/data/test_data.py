"""The Fashion-MNIST reader, the pipeline's determinism and augmentation, missing data."""
import numpy as np
import pytest

from data import fashion_mnist, pipeline


@pytest.fixture(scope="module")
def dataset():
    return pipeline.load_dataset("fashion_mnist", validation_size=5000, seed=0)


def test_shapes_and_label_counts(dataset):
    assert dataset.train[0].shape == (55000, 28, 28, 1)
    assert dataset.validation[0].shape == (5000, 28, 28, 1)
    assert dataset.test[0].shape == (10000, 28, 28, 1)
    assert dataset.train[0].dtype == np.uint8 and dataset.train[1].dtype == np.int32
    # Fashion-MNIST is balanced: 6000 per class in train+validation, 1000 in test.
    counts = np.bincount(np.concatenate([dataset.train[1], dataset.validation[1]]))
    assert counts.tolist() == [6000] * 10
    assert np.bincount(dataset.test[1]).tolist() == [1000] * 10
    assert dataset.num_classes == 10
    np.testing.assert_allclose([dataset.mean, dataset.std], [0.286, 0.353], atol=0.002)


def test_validation_is_disjoint_from_train(dataset):
    train = {bytes(x) for x in dataset.train[0][:2000]}
    assert not any(bytes(x) in train for x in dataset.validation[0][:2000])


def test_batches_are_deterministic_and_epochs_differ(dataset):
    a = pipeline.train_batch(dataset, 3, 64, seed=0)
    b = pipeline.train_batch(dataset, 3, 64, seed=0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    steps = len(dataset.train[0]) // 64
    other_epoch = pipeline.train_batch(dataset, 3 + steps, 64, seed=0, augmentation=False)
    assert not np.array_equal(a[1], other_epoch[1])
    other_seed = pipeline.train_batch(dataset, 3, 64, seed=1)
    assert not np.array_equal(a[1], other_seed[1])
    assert a[0].shape == (64, 28, 28, 1) and a[0].dtype == np.float32


def test_one_epoch_visits_every_example_once(dataset):
    small = pipeline.ImageDataset((dataset.train[0][:100], np.arange(100, dtype=np.int32)),
                                  dataset.validation, dataset.test, 0.0, 1.0, 10, "t")
    seen = np.concatenate([pipeline.train_batch(small, s, 10, 0, False)[1] for s in range(10)])
    assert sorted(seen.tolist()) == list(range(100))


def test_host_shards_partition_the_global_batch(dataset):
    whole = pipeline.train_batch(dataset, 0, 64, 0, augmentation=False)[1]
    parts = [pipeline.train_batch(dataset, 0, 64, 0, False, shard=(i, 2))[1] for i in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == sorted(whole.tolist())


def test_augmented_shards_are_rows_of_the_augmented_global_batch(dataset):
    """Crops and flips are drawn for the whole global batch, so a 2-process run trains on
    the images a 1-process run does (issue 19: parameters equal with augmentation on)."""
    whole, _ = pipeline.train_batch(dataset, 3, 64, 0, True)
    for i in range(2):
        part, _ = pipeline.train_batch(dataset, 3, 64, 0, True, shard=(i, 2))
        np.testing.assert_array_equal(part, whole[i::2])
    plain, _ = pipeline.train_batch(dataset, 3, 64, 0, False)
    assert not np.array_equal(whole, plain), "augmentation changed the images"


def test_normalization(dataset):
    x = pipeline.normalize(dataset.train[0][:5000], dataset.mean, dataset.std)
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05


def test_augmentation_crops_and_flips():
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1).repeat(200, 0)
    out = pipeline.augment(image, np.random.default_rng(0), pad=1)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert any(np.array_equal(o, image[0][:, ::-1]) for o in out), "some are flipped"
    assert any(np.array_equal(o, image[0]) for o in out), "some are untouched"
    assert any((o == 0).sum() >= 4 for o in out), "some are shifted into the padding"
    # A crop never invents pixel values.
    assert set(np.unique(out)) <= set(range(16))


def test_eval_batches_cover_the_split_once_with_mask(dataset):
    small = pipeline.ImageDataset(dataset.train, dataset.validation,
                                  (dataset.test[0][:25], dataset.test[1][:25]), 0.0, 1.0, 10, "t")
    batches = list(pipeline.eval_batches(small, "test", 10))
    assert len(batches) == 3 and all(b[0].shape[0] == 10 for b in batches)
    assert sum(b[2].sum() for b in batches) == 25


def test_missing_data_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(fashion_mnist.DatasetNotFoundError) as error:
        pipeline.load_dataset("fashion_mnist")
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FASHION_MNIST_DIR" in message and "tfds" in message


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        pipeline.load_dataset("imagenet21k")


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        pipeline.load_dataset("mnist")
    assert "'fashion_mnist'" in str(error.value) and "tfds:NAME" in str(error.value)


def _copy_with(tmp_path, damage):
    """The four Fashion-MNIST files in tmp_path, the test images damaged by ``damage``."""
    import shutil
    for train_or_test in fashion_mnist.FILES.values():
        for name in train_or_test:
            shutil.copy(f"{fashion_mnist.data_dir()}/{name}", tmp_path / name)
    target = tmp_path / fashion_mnist.FILES["test"][0]
    damage(target)
    return target


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]),   # cut short
    lambda p: p.write_bytes(b"not a gzip file at all"),
    # a valid gzip stream whose idx payload is short: the header promises 10000 images
    lambda p: p.write_bytes(__import__("gzip").compress(
        __import__("gzip").decompress(p.read_bytes())[:5000])),
], ids=["truncated", "not-gzip", "short-payload"])
def test_damaged_file_is_named_with_how_to_reinstall(tmp_path, monkeypatch, damage):
    target = _copy_with(tmp_path, damage)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(fashion_mnist.DatasetCorruptError) as error:
        fashion_mnist.load_split("test")
    message = str(error.value)
    assert str(target) in message
    assert "apt-get install --reinstall dataset-fashion-mnist" in message
    assert "FASHION_MNIST_DIR" in message
    # The intact training files still read.
    images, labels = fashion_mnist.load_split("train")
    assert images.shape == (60000, 28, 28, 1) and labels.shape == (60000,)


def test_split_sizes_are_checked(dataset):
    with pytest.raises(ValueError, match="validation_size=60000"):
        pipeline.load_dataset("fashion_mnist", validation_size=60000)
    with pytest.raises(ValueError, match="data_limit=-1"):
        pipeline.load_dataset("fashion_mnist", limit=-1)
    small = pipeline.ImageDataset((dataset.train[0][:20], dataset.train[1][:20]),
                                  dataset.validation, dataset.test, 0.0, 1.0, 10, "small")
    for batch_size in (0, 21):
        with pytest.raises(ValueError, match=f"batch_size={batch_size}: .*20 training"):
            pipeline.train_batch(small, 0, batch_size, seed=0)
