"""Atomic, resumable checkpoints with orbax.

orbax writes each step to a temporary folder and renames it when complete, so a process
killed mid-write leaves the previous checkpoint intact and a restart resumes from it.
Paths are made absolute (orbax requires it) and an existing step is never rewritten.
"""
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, every_steps: int = 0, keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self.every_steps = every_steps
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def maybe_save(self, step: int, state: Any, force: bool = False) -> bool:
        due = force or (self.every_steps and step % self.every_steps == 0)
        if not due or step in self.manager.all_steps():
            return False
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        return True

    def restore(self, template: Any, step: Optional[int] = None) -> Any:
        """Restores ``step`` (default: latest) into the structure and shardings of template."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self):
        self.manager.close()


def save_pytree(path: str, tree: Any) -> None:
    """One-off atomic save of a pytree (e.g. final variables of a cached teacher)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(path), tree, force=True)
    checkpointer.wait_until_finished()


def load_pytree(path: str, template: Any = None) -> Any:
    checkpointer = ocp.StandardCheckpointer()
    if template is None:
        return checkpointer.restore(os.path.abspath(path))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return checkpointer.restore(os.path.abspath(path), abstract)
