"""A run's working directory: one process at a time, never resumed under other settings.

Two processes on one workdir would interleave metrics.jsonl and race orbax on the same
step folders, so a run holds an exclusive ``fcntl.flock`` on a lock file in its workdir;
the kernel releases it when the process ends, however it ends (no stale locks after a
kill). A second run fails at once with the holder's pid and command. A job of several
processes (``core.distributed``) is one run: process 0 takes the lock for all of them and
tells the others whether it got it, so they fail or proceed together; only process 0 moves
old content aside and records the settings.

A workdir also records the settings of the run that made it (``config.json``: the
result-relevant settings and their ``config_hash``). Resuming it with other settings
would continue the old run and report its result as the new one, so a rerun with
different settings is an error naming every changed key with its old and new value;
``fresh=True`` (``python run.py --fresh``) moves the old content aside to
``<workdir>.old-<time>`` (nothing is deleted) and starts an empty run. Settings that do not
change a result (``config.RESULT_NEUTRAL_KEYS``: log_every, checkpoint_every, ...) may
change freely.
"""
import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from typing import Dict, Iterator, Optional

from core import config as config_lib, distributed

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"


class WorkdirBusyError(RuntimeError):
    """Another live process holds the lock of this directory."""


class SettingsChangedError(config_lib.ConfigError):
    """The workdir holds a run made with other result-relevant settings."""


# Locks this process holds: path -> [file, depth]. flock locks belong to an open file, so a
# second open of the same lock file in this process would block on itself; nested users
# (a run and the training inside it) share the first one instead.
_HELD: Dict[str, list] = {}


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or "unknown process"
    except OSError:
        return "unknown process"


def _take(path: str, directory: str, wait: bool, what: str):
    """The open lock file holding the lock, or None when another run holds it (no wait)."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            handle.close()
            return None
        print(f"waiting for another {what} in {directory} ({_holder(path)})", file=sys.stderr)
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def locked(directory: str, name: str = LOCK_NAME, wait: bool = False,
           what: str = "run") -> Iterator[str]:
    """Holds an exclusive lock on ``directory/name`` while the block runs. ``wait``: block
    until the holder finishes (with a message) instead of failing. In a job of several
    processes, process 0 holds it for the job (every process must enter the block)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.realpath(os.path.join(directory, name))
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield path
        finally:
            _HELD[path][1] -= 1
        return
    primary = distributed.is_primary()
    handle = _take(path, directory, wait, what) if primary else None
    if not distributed.broadcast_from_primary(handle is not None or not primary):
        holder = _holder(path) if primary else "see process 0"
        raise WorkdirBusyError(
            f"{directory} is in use by another {what} ({holder}); wait for it to finish or "
            f"use another workdir. The lock ({path}) is released when that process ends.")
    _HELD[path] = [handle, 1]
    try:
        yield path
    finally:
        del _HELD[path]
        if handle:
            handle.close()   # closing the file releases the lock


def move_aside(directory: str) -> Optional[str]:
    """Moves everything in ``directory`` except its lock file to ``<directory>.old-<time>``;
    returns that folder, or None when there was nothing to move."""
    entries = [e for e in os.listdir(directory) if e != LOCK_NAME]
    if not entries:
        return None
    target = f"{directory.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 0
    while os.path.exists(target + (f"-{suffix}" if suffix else "")):
        suffix += 1
    target += f"-{suffix}" if suffix else ""
    os.makedirs(target)
    for entry in entries:
        shutil.move(os.path.join(directory, entry), os.path.join(target, entry))
    return target


def record(config) -> dict:
    return {"experiment": config.get("experiment_name", ""),
            "hash": config_lib.config_hash(config),
            "settings": config_lib.result_settings(config)}


def check_settings(config, directory: str) -> None:
    """Raises SettingsChangedError when ``directory`` holds a run with other settings;
    otherwise records this run's settings there."""
    path = os.path.join(directory, CONFIG_NAME)
    new = record(config)
    if os.path.exists(path):   # every process checks, process 0 records
        with open(path) as f:
            old = json.load(f)
        if old.get("hash") != new["hash"]:
            changes = config_lib.changed_settings(old.get("settings", {}), new["settings"])
            if changes:
                raise SettingsChangedError(
                    f"{directory} holds a run of {old.get('experiment') or '?'} made with "
                    f"other settings; resuming it would continue the old run. Changed "
                    "(workdir -> now):\n  " + "\n  ".join(changes) + "\nRerun with --fresh "
                    f"to move the old content to {directory}.old-<time> and start over, set "
                    "the old values again to resume, or choose another --workdir.")
    elif any(e != LOCK_NAME for e in os.listdir(directory)) and distributed.is_primary():
        print(f"warning: {directory} has no record of the settings it was made with "
              f"({CONFIG_NAME}); recording the current ones", file=sys.stderr)
    if distributed.is_primary():
        with open(path + ".tmp", "w") as f:
            json.dump(new, f, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)
    distributed.barrier("workdir settings recorded")


@contextlib.contextmanager
def prepared(config, directory: str, fresh: bool = False) -> Iterator[str]:
    """The workdir of a run, locked for the block: emptied first when ``fresh``, checked
    against (and then recording) the settings of the run that made it."""
    directory = os.path.abspath(directory)
    with locked(directory):
        if fresh and distributed.is_primary():
            moved = move_aside(directory)
            if moved:
                print(f"--fresh: moved the previous content of {directory} to {moved}")
        distributed.barrier("workdir prepared")
        check_settings(config, directory)
        yield directory
