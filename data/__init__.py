"""Datasets: Fashion-MNIST offline by default, tensorflow-datasets by name."""
from data.pipeline import ImageDataset, eval_batches, load_dataset, normalize, train_batch
