"""Data parallelism with JAX sharding: one code path for 1 CPU, 8 GPUs or a TPU pod.

The batch axis is split over a 1-D mesh of every device of every process; parameters are
replicated. Each process loads only its own rows of the global batch and
``jax.make_array_from_process_local_data`` stitches the global array, so the same program
runs on several processes after ``core.distributed.initialize_from_environment()``
(``run.py`` calls it; tests/core/test_multiprocess.py runs two). XLA inserts the
cross-device reductions (loss means, BatchNorm statistics), so results equal a
single-process run up to float summation order.

Across processes an array is no longer whole in any one of them: ``put`` builds global
arrays from the same host values in every process, and ``to_host`` reads global arrays back
(gathering those split over processes; every process must call it, it communicates).
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(devices=None) -> Mesh:
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def host_shard() -> tuple:
    """(this process's index, number of processes): which rows of a global batch to load."""
    return jax.process_index(), jax.process_count()


def process_rows(array: np.ndarray) -> np.ndarray:
    """This process's contiguous block of rows of a global batch every process holds whole
    (``global_batch`` of the blocks of all processes gives back the same batch)."""
    index, count = host_shard()
    rows = len(array) // count
    return array[index * rows:(index + 1) * rows]


def global_batch(mesh: Mesh, *local_arrays):
    """Turns this process's rows into globally sharded arrays."""
    sharding = batch_sharding(mesh)
    return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a))
                 for a in local_arrays)


def put(tree, shardings):
    """Global arrays with ``shardings`` (a sharding or a tree of them) from values every
    process holds whole (numpy or single-device arrays): each process fills its devices."""
    def place(value, sharding):
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda v: place(v, shardings), tree)
    return jax.tree.map(place, tree, shardings)


def to_host(tree):
    """The tree as numpy arrays in every process; arrays split over processes are gathered
    (a collective: every process calls it at the same point)."""
    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable \
                and not leaf.is_fully_replicated:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))
    return jax.tree.map(fetch, tree)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {mesh.size} devices "
                         "of the mesh; choose a multiple")
