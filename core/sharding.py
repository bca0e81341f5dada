"""Data parallelism with JAX sharding: one code path for 1 CPU, 8 GPUs or a TPU pod.

The batch axis is split over a 1-D mesh of every device of every host; parameters are
replicated. Each host loads only its own rows of the global batch and
``jax.make_array_from_process_local_data`` stitches the global array, so the same program
runs multi-host after ``jax.distributed.initialize()``. XLA inserts the cross-device
reductions (loss means, BatchNorm statistics), so results equal a single-device run up to
float summation order.
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
    """(this host's index, number of hosts): which rows of a global batch to load."""
    return jax.process_index(), jax.process_count()


def global_batch(mesh: Mesh, *local_arrays):
    """Turns this host's rows into globally sharded arrays."""
    sharding = batch_sharding(mesh)
    return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a))
                 for a in local_arrays)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {mesh.size} devices "
                         "of the mesh; choose a multiple")
