"""Two processes on one machine as one JAX job (core.distributed, gloo collectives on CPU):
training, checkpoints and blockwise distillation give what a single process with the same
two devices gives.

Each test launches real processes (``python run.py`` for the tiny teacher, distill_child.py
for the tiny distillation) on a free local port, with a timeout, and kills them whatever
happens. References are single processes with two forced CPU devices
(``--xla_force_host_platform_device_count=2``), the same global batch and seeds.
"""
import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from core import checkpoint, distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(ROOT, "run.py")
DISTILL_CHILD = os.path.join(ROOT, "tests", "core", "distill_child.py")
TIMEOUT_S = 240
# A few steps of the tiny teacher, augmented (crops and flips are drawn for the global batch,
# data.pipeline.train_batch, so each process trains on its rows of the same images).
TEACHER = ["--exp=train_teacher_tiny", "--exp.train.steps=4", "--exp.train.checkpoint_every=1"]
# Parameters move by about 0.04 in these steps; a 1-device and a 2-device single process
# differ by about 1e-3 (float summation order, amplified by SGD at learning rate 0.1).
PARAM_TOLERANCE = 3e-3


_PORTS_GIVEN = set()


def free_port() -> int:
    """A port nobody listens on, never the same twice (jobs started together need two)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    env.update(TEACHER_CACHE=str(tmp_path / "teachers"), PYTHONUNBUFFERED="1", **extra)
    return env


def _job_env(tmp_path, processes: int, index: int, port: int) -> dict:
    if processes == 1:      # the reference: one process with the same two devices
        return _env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return _env(tmp_path, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index))


@contextlib.contextmanager
def job(tmp_path, argv, log_name, processes=2):
    """``processes`` local processes forming one JAX job (1: a single process with two CPU
    devices); yields the Popen objects and kills whatever still runs when the block ends
    (on failure too). Output goes to ``tmp_path/<log_name>.<index>.log``."""
    port, running, logs = free_port(), [], []
    try:
        for index in range(processes):
            env = _job_env(tmp_path, processes, index, port)
            logs.append(open(tmp_path / f"{log_name}.{index}.log", "w"))
            running.append(subprocess.Popen([sys.executable, *argv], env=env, cwd=ROOT,
                                            stdout=logs[-1], stderr=subprocess.STDOUT,
                                            start_new_session=True))
        yield running
    finally:
        for process in running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for log in logs:
            log.close()


def wait_all(processes, tmp_path, log_name):
    deadline = time.time() + TIMEOUT_S
    for index, process in enumerate(processes):
        process.wait(timeout=max(1.0, deadline - time.time()))
        log = (tmp_path / f"{log_name}.{index}.log").read_text()
        assert process.returncode == 0, f"process {index} failed:\n{log[-3000:]}"


def run_jobs(*jobs):
    """Runs ``(tmp_path, argv, log_name, processes)`` jobs at the same time (the machine's
    cores are better used while one job waits on another's collectives) until all end."""
    with contextlib.ExitStack() as stack:
        started = [(stack.enter_context(job(*spec)), spec) for spec in jobs]
        for processes, (tmp_path, _, log_name, _) in started:
            wait_all(processes, tmp_path, log_name)


def cached_teacher(tmp_path):
    """The final variables of the teacher trained with TEACHER_CACHE=tmp_path/teachers."""
    (path,) = glob.glob(str(tmp_path / "teachers" / "*" / "variables"))
    return checkpoint.load_pytree(path)


def max_difference(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)))


def _steps_in(metrics_path):
    with open(metrics_path) as f:
        return [json.loads(line)["step"] for line in f if "train_loss" in line]


def kill_after_first_checkpoint(processes, checkpoints, total_steps):
    """SIGKILLs every process once a finished checkpoint exists; returns its step."""
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        steps = [int(s) for s in os.listdir(checkpoints) if s.isdigit()] \
            if os.path.isdir(checkpoints) else []
        if steps:
            for process in processes:
                os.killpg(process.pid, signal.SIGKILL)
            assert max(steps) < total_steps, "the run finished before it could be killed"
            return max(steps)
        assert all(p.poll() is None for p in processes), "a process ended before a checkpoint"
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
      "JAX_PROCESS_ID": "3"},
     {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),         # one task: stay alone
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, {}),          # srun: JAX detects
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({"COMPRESS_DISTRIBUTED": "1"}, {}),
    ({"COMPRESS_DISTRIBUTED": "0", "SLURM_NTASKS": "16"}, None),
])
def test_the_environment_decides_whether_processes_join(env, expected):
    assert distributed.launch_arguments(env) == expected


def test_a_partial_explicit_setting_is_an_error():
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        distributed.launch_arguments({"JAX_COORDINATOR_ADDRESS": "h:1",
                                      "JAX_NUM_PROCESSES": "2"})


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_sigkill(tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    for path in (one, two, killed):
        path.mkdir()
    argv = [RUN, *TEACHER, f"--workdir={killed / 'run'}"]
    with contextlib.ExitStack() as stack:    # the three jobs at once, one killed midway
        reference = stack.enter_context(job(one, [RUN, *TEACHER, f"--workdir={one / 'run'}"],
                                            "run", processes=1))
        pair = stack.enter_context(job(two, [RUN, *TEACHER, f"--workdir={two / 'run'}"], "run"))
        doomed = stack.enter_context(job(killed, argv, "killed"))
        step = kill_after_first_checkpoint(doomed, killed / "run" / "train" / "checkpoints",
                                           total_steps=4)
        wait_all(reference, one, "run")
        wait_all(pair, two, "run")
    reference, variables = cached_teacher(one), cached_teacher(two)
    differences = {c: max_difference(reference[c], variables[c]) for c in reference}
    print(f"2 processes vs 1 process with 2 devices, max difference: {differences}")
    assert max(differences.values()) < PARAM_TOLERANCE
    # Process 0 alone logs: each step once in metrics.jsonl, the summary printed once.
    assert _steps_in(two / "run" / "train" / "metrics.jsonl") == [4]
    assert "trained teacher" in (two / "run.0.log").read_text()
    assert "trained teacher" not in (two / "run.1.log").read_text()

    run_jobs((killed, argv, "resumed", 2))
    assert f"resumed from step {step}" in (killed / "resumed.0.log").read_text()
    resumed = max_difference(cached_teacher(killed), variables)
    print(f"killed at step {step} of 4 and resumed vs uninterrupted: max difference {resumed}")
    assert resumed == 0.0


@pytest.mark.slow
def test_two_processes_distill_the_students_of_one(tmp_path):
    run_jobs((tmp_path, [DISTILL_CHILD, str(tmp_path / "one"), str(tmp_path / "one.npz")],
              "one", 1),
             (tmp_path, [DISTILL_CHILD, str(tmp_path / "two"), str(tmp_path / "two.npz")],
              "two", 2))
    reference, students = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(students.files) == sorted(reference.files)
    nsr = [float(students[k]) for k in students.files if k.endswith("val_nsr")]
    assert len(nsr) == 2 and nsr[0] != nsr[1]     # two members, one on each process
    for key in reference.files:
        np.testing.assert_allclose(students[key], reference[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    # A value each process computes differently (a measured latency) is process 0's in both.
    for index in range(2):
        with open(tmp_path / "two" / f"agreed-{index}.json") as f:
            assert json.load(f) == {"process": 0}
