"""Atomic, resumable checkpoints with orbax, that survive a damaged newest step.

orbax writes each step to a temporary folder and renames it when complete, so a process
killed mid-write leaves the previous checkpoint intact and a restart resumes from it.
A step damaged afterwards (a file truncated or deleted: a full disk, a copy cut short)
would fail every rerun inside tensorstore; instead the newest step is read back once
before it is trusted, and a step that cannot be read is moved to ``<directory>.corrupt/``
with a warning naming it, so the run resumes from the newest intact step (single-process
runs; a multi-host job leaves this to orbax). Paths are made absolute (orbax requires it)
and an existing step is never rewritten.
"""
import os
import shutil
import time
import warnings
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """An intact checkpoint that does not fit the state it is restored into."""


class Checkpointer:
    def __init__(self, directory: str, every_steps: int = 0, keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self.every_steps = every_steps
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._checked = False

    def latest_step(self) -> Optional[int]:
        """The newest step that can be read back (damaged newer ones are moved aside)."""
        if not self._checked:
            self._drop_unreadable_steps()
            self._checked = True
        return self.manager.latest_step()

    def _drop_unreadable_steps(self) -> None:
        if jax.process_count() > 1:
            return  # every host would read and move the same folder; left to orbax there
        while (step := self.manager.latest_step()) is not None:
            error = unreadable(os.path.join(self.directory, str(step)))
            if error is None:
                return
            moved = self._move_aside(step)
            remaining = [s for s in self.manager.all_steps() if s != step]
            fallback = (f"resuming from step {max(remaining)}" if remaining
                        else "no intact step is left: starting from step 0")
            warnings.warn(f"checkpoint step {step} in {self.directory} is damaged and cannot "
                          f"be read ({error}); moved it to {moved}; {fallback}.",
                          stacklevel=3)

    def _move_aside(self, step: int) -> str:
        target_root = self.directory + ".corrupt"
        os.makedirs(target_root, exist_ok=True)
        target = os.path.join(target_root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        return target

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
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except ValueError as error:
            damage = unreadable(os.path.join(self.directory, str(step)))
            if damage:
                raise ValueError(f"checkpoint step {step} in {self.directory} is damaged "
                                 f"({damage})") from error
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} is intact but does not fit the "
                f"state being restored ({str(error).splitlines()[0]}): it was written by a run "
                "with another model or other settings. Start fresh (python run.py ... "
                "--fresh) or use another workdir.") from error

    def close(self):
        self.manager.close()


def unreadable(step_directory: str) -> Optional[str]:
    """None when every array of an orbax step reads back; else what failed, in one line.
    Arrays are read as host numpy arrays, so a checkpoint written on other devices is not
    mistaken for a damaged one."""
    item = os.path.join(step_directory, "default")
    checkpointer = ocp.StandardCheckpointer()
    try:
        tree = checkpointer.metadata(item).item_metadata.tree
        target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype)
                              if hasattr(m, "shape") and hasattr(m, "dtype") else m, tree)
        checkpointer.restore(item, target)
        return None
    except Exception as error:  # noqa: BLE001  tensorstore, json and orbax raise many types
        lines = [line for line in str(error).splitlines() if line.strip()]
        return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"
    finally:
        checkpointer.close()


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
