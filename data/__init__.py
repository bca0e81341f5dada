"""Datasets: Fashion-MNIST offline by default, tensorflow-datasets by name."""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)
from data.pipeline import ImageDataset, eval_batches, load_dataset, normalize, train_batch
