"""JAX's distributed runtime: started when the environment asks for it, else one process.

Why: a job on several hosts (or several processes of one host) is one JAX program only after
``jax.distributed.initialize()``, and that must run before JAX creates a backend. ``run.py``
calls ``initialize_from_environment()`` first thing; a plain ``python run.py`` sets nothing
and stays a single process. What starts the runtime (first matching rule of
``LAUNCH_RULES``):

- ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``: explicit, e.g. two local processes or any launcher;
- a SLURM step with several tasks (``srun``) or an Open MPI job (``mpirun``) of several
  ranks: JAX's own cluster detection fills in all three;
- ``COMPRESS_DISTRIBUTED=1``: JAX's detection for other clusters (Cloud TPU pods, GKE);
  ``COMPRESS_DISTRIBUTED=0`` never starts the runtime.

On CPU the cross-process collectives go through gloo (XLA:CPU has no other
implementation that spans processes). After start-up, ``is_primary()`` says which process
writes logs, metrics and result files, and ``barrier`` / ``broadcast_from_primary`` let
processes agree on what only process 0 did (a lock taken, a folder moved).
"""
from core import xla_workarounds  # noqa: F401  (XLA_FLAGS before any backend exists)

import os
from typing import Callable, Dict, NamedTuple, Optional

import numpy as np

EXPLICIT_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class LaunchRule(NamedTuple):
    name: str
    applies: Callable[[Dict[str, str]], bool]
    arguments: Callable[[Dict[str, str]], dict]     # keyword arguments of initialize()


def _int(env: Dict[str, str], name: str) -> int:
    try:
        return int(env.get(name, "0") or 0)
    except ValueError:
        return 0


def _explicit_arguments(env: Dict[str, str]) -> dict:
    missing = [name for name in EXPLICIT_VARIABLES if not env.get(name)]
    if missing:
        raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not: "
                         "set all of " + ", ".join(EXPLICIT_VARIABLES))
    return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
            "num_processes": int(env["JAX_NUM_PROCESSES"]),
            "process_id": int(env["JAX_PROCESS_ID"])}


LAUNCH_RULES = (
    LaunchRule("disabled", lambda env: env.get("COMPRESS_DISTRIBUTED") == "0",
               lambda env: None),
    LaunchRule("explicit", lambda env: bool(env.get("JAX_COORDINATOR_ADDRESS")),
               _explicit_arguments),
    LaunchRule("slurm", lambda env: max(_int(env, "SLURM_STEP_NUM_TASKS"),
                                        _int(env, "SLURM_NTASKS")) > 1, lambda env: {}),
    LaunchRule("openmpi", lambda env: _int(env, "OMPI_COMM_WORLD_SIZE") > 1, lambda env: {}),
    LaunchRule("auto-detected", lambda env: env.get("COMPRESS_DISTRIBUTED") == "1",
               lambda env: {}),
)


def launch_arguments(env: Optional[Dict[str, str]] = None) -> Optional[dict]:
    """The keyword arguments of ``jax.distributed.initialize`` the environment asks for
    (``{}``: JAX detects the cluster), or None for a single process."""
    env = dict(os.environ if env is None else env)
    for rule in LAUNCH_RULES:
        if rule.applies(env):
            return rule.arguments(env)
    return None


_STARTED = False


def initialize_from_environment(env: Optional[Dict[str, str]] = None) -> bool:
    """Starts JAX's distributed runtime when the environment asks for it (see the module
    docstring); returns whether it did. Call it before the first JAX computation."""
    global _STARTED
    arguments = launch_arguments(env)
    if arguments is None or _STARTED:
        return _STARTED
    import jax
    if xla_workarounds._backend_already_built():
        raise RuntimeError("a JAX backend exists already; the distributed runtime must "
                           "start before the first JAX computation")
    # Only the CPU client reads this; gloo is what spans processes on CPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**arguments)
    _STARTED = True
    return True


def _answers_without_backend() -> bool:
    """True when the process is known to be alone without asking JAX, which would create a
    backend: no runtime started (here or by the caller) and no backend built yet."""
    if _STARTED or xla_workarounds._backend_already_built():
        return False
    try:
        from jax._src import distributed as jax_distributed
        return jax_distributed.global_state.client is None
    except Exception:   # noqa: BLE001  a future jax without this private name: ask JAX
        return False


def process_index() -> int:
    if _answers_without_backend():
        return 0
    import jax
    return jax.process_index()


def process_count() -> int:
    if _answers_without_backend():
        return 1
    import jax
    return jax.process_count()


def is_primary() -> bool:
    """True in the process that writes logs, metrics and result files (process 0)."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op in a single process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def broadcast_from_primary(value: int) -> int:
    """Process 0's integer, in every process (e.g. whether it got a lock)."""
    if process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
