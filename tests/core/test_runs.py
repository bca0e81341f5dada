"""Runs and their workdirs: settings recorded and checked on resume, degenerate settings
refused before any work, damaged checkpoints skipped, one process per workdir, clear errors
for broken config files, and experiments that write only under their workdir."""
import glob
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import run
from core import checkpoint, config as config_lib, train, workdir as workdir_lib
from experiments import preamble as teacher
from experiments import registry
from data import pipeline

ROOT = registry.ROOT
TINY = [("train.steps", "2"), ("train.augment", "false")]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private teacher cache, so tests never read or fill runs/teachers."""
    path = tmp_path / "teachers"
    monkeypatch.setenv("TEACHER_CACHE", str(path))
    return path


class Linear(nn.Module):
    """A stand-in teacher that compiles in a moment (the run machinery is under test)."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.fixture
def small_teacher(monkeypatch):
    monkeypatch.setattr(teacher, "build_module", lambda name, tiny=False: Linear())


def cli(workdir, *overrides, fresh=False):
    args = ["--exp=train_teacher_tiny", f"--workdir={workdir}"]
    args += [f"--exp.{k}={v}" for k, v in overrides] + (["--fresh"] if fresh else [])
    return run.main(args)


# --- settings recorded in the workdir ----------------------------------------------------

def test_changed_settings_are_refused_and_fresh_starts_over(tmp_path, cache, small_teacher,
                                                            capsys):
    workdir = tmp_path / "run"
    assert cli(workdir, *TINY) == 0
    record = json.loads((workdir / "config.json").read_text())
    assert record["settings"]["train.steps"] == 2
    assert record["hash"] == config_lib.config_hash(registry.load("train_teacher_tiny", TINY))
    before = sorted(os.listdir(workdir))
    capsys.readouterr()

    # Other settings: refused, naming each changed key with its old and new value.
    changed = [("train.steps", "3"), ("train.augment", "false"), ("train.seed", "5")]
    assert cli(workdir, *changed) == 2
    error = capsys.readouterr().err
    assert "train.steps: 2 -> 3" in error and "train.seed: 0 -> 5" in error
    assert "train.augment" not in error and "--fresh" in error
    assert sorted(os.listdir(workdir)) == before, "nothing may change before the check"

    # --fresh moves the old run aside and trains the new settings from step 0.
    assert cli(workdir, *changed, fresh=True) == 0
    moved = glob.glob(f"{workdir}.old-*")
    assert len(moved) == 1
    assert json.loads(open(os.path.join(moved[0], "config.json")).read())[
        "settings"]["train.steps"] == 2
    result = json.loads((workdir / "result.json").read_text())
    assert result["steps"] == 3 and result["cached"] is False
    assert "resumed from step" not in capsys.readouterr().out
    assert json.loads((workdir / "config.json").read_text())["settings"]["train.seed"] == 5


def test_result_neutral_settings_may_change(tmp_path):
    base = registry.load("train_teacher_tiny", TINY)
    neutral = registry.load("train_teacher_tiny", TINY + [
        ("train.log_every", "1"), ("train.checkpoint_every", "1"),
        ("train.eval_every_epochs", "3")])
    assert config_lib.config_hash(base) == config_lib.config_hash(neutral)
    assert config_lib.changed_settings(config_lib.result_settings(base),
                                       config_lib.result_settings(neutral)) == []
    workdir_lib.check_settings(base, str(tmp_path))
    workdir_lib.check_settings(neutral, str(tmp_path))      # no error
    other = registry.load("train_teacher_tiny", TINY + [("train.learning_rate", "0.2")])
    with pytest.raises(workdir_lib.SettingsChangedError, match="train.learning_rate: 0.1 -> 0.2"):
        workdir_lib.check_settings(other, str(tmp_path))


# --- degenerate settings ---------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    ([("train.batch_size", "0")], "train.batch_size=0: must be a positive integer"),
    ([("train.batch_size", "-4")], "train.batch_size=-4: must be a positive integer"),
    ([("train.steps", "0"), ("train.epochs", "0.0")], "a teacher must train at least one step"),
    ([("train.steps", "-1")], "train.steps=-1: must be an integer >= 0"),
    ([("train.epochs", "-1.0")], "train.epochs=-1.0: must be a finite number >= 0"),
    ([("train.epochs", "0.01")], "rounds to 0 steps"),
    ([("train.batch_size", "600")], "train.batch_size=600: larger than the 512 training"),
    ([("validation_size", "60000")], "validation_size=60000: fashion_mnist has only 60000"),
    ([("data_limit", "-1")], "data_limit=-1: must be an integer >= 0"),
    ([("model", "resnet21")], "model='resnet21': unknown model; the zoo has .*resnet20"),
    ([("dataset", "mnist")], "dataset='mnist': unknown dataset .*'fashion_mnist'"),
])
def test_degenerate_settings_fail_before_any_work(tmp_path, cache, capsys, overrides,
                                                  expected):
    with pytest.raises(config_lib.ConfigError, match=expected):
        registry.load("train_teacher_tiny", overrides)
    assert cli(tmp_path / "run", *overrides) == 2
    assert "invalid settings" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not cache.exists()


def test_every_experiment_passes_validation():
    for name in registry.experiment_paths():
        registry.validate(registry.load(name))   # load validates too; explicit here


def _tiny_model_and_data(size=64):
    x = np.random.default_rng(0).integers(0, 255, (size, 8, 8, 1), dtype=np.uint8)
    y = (np.arange(size) % 10).astype(np.int32)
    data = pipeline.ImageDataset((x, y), (x[:16], y[:16]), (x[:16], y[:16]), 0.5, 0.3, 10, "r")
    params = {"w": jnp.zeros((64, 10))}
    apply_eval = lambda v, x: x.reshape(len(x), -1) @ v["params"]["w"]  # noqa: E731
    model = train.TrainableModel({"params": params},
                                 lambda v, x, rng: (apply_eval(v, x), {}), apply_eval)
    return model, data


def _train_cfg(**changes):
    cfg = registry.load("train_teacher_tiny").train
    cfg.update(dict(steps=4, augment=False, checkpoint_every=2, log_every=1), **changes)
    return cfg


def test_training_checks_its_settings_against_the_data(tmp_path):
    model, data = _tiny_model_and_data(size=40)
    with pytest.raises(config_lib.ConfigError, match="batch_size=64: larger than the 40"):
        train.train(model, data, _train_cfg(batch_size=64), str(tmp_path), show_progress=False)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("result", [
    {"steps": 0, "validation": {"accuracy": 0.1, "loss": 2.3}, "test": {"accuracy": 0.1,
                                                                          "loss": 2.3}},
    {"steps": 2, "validation": {"accuracy": 0.1, "loss": math.nan},
     "test": {"accuracy": 0.1, "loss": math.inf}},
], ids=["no-step", "diverged"])
def test_an_untrained_teacher_is_not_cached(cache, small_teacher, monkeypatch, result):
    config = registry.load("train_teacher_tiny", TINY)
    monkeypatch.setattr(teacher.train_lib, "train",
                        lambda model, *a, **k: dict(result, variables=model.variables))
    with pytest.raises(teacher.UntrainedTeacherError):
        teacher.get_teacher(config, show_progress=False)
    assert not glob.glob(str(cache / "*" / "summary.json"))
    assert not glob.glob(str(cache / "*" / "variables"))


# --- damaged checkpoints -----------------------------------------------------------------

def _saved_steps(directory, steps=(1, 2)):
    state = {"a": jnp.arange(1000.0), "b": {"c": jnp.ones((20, 30))}}
    saver = checkpoint.Checkpointer(str(directory), every_steps=1)
    for step in steps:
        saver.maybe_save(step, jax.tree.map(lambda v: v + step, state))
    saver.close()
    return state


def _largest_file(step_directory):
    files = [p for p in glob.glob(f"{step_directory}/**", recursive=True) if os.path.isfile(p)]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path, damage):
    directory = tmp_path / "checkpoints"
    state = _saved_steps(directory)
    victim = _largest_file(directory / "2")
    if damage == "truncate":
        os.truncate(victim, os.path.getsize(victim) // 2)
    else:
        os.remove(victim)
    assert checkpoint.unreadable(str(directory / "2"))
    assert checkpoint.unreadable(str(directory / "1")) is None
    loader = checkpoint.Checkpointer(str(directory))
    with pytest.warns(UserWarning, match=r"checkpoint step 2 .* damaged.*resuming from step 1"):
        assert loader.latest_step() == 1
    restored = loader.restore(state)
    np.testing.assert_array_equal(restored["a"], state["a"] + 1)
    loader.close()
    assert not (directory / "2").exists()
    assert [os.path.basename(p).split("-")[0] for p in glob.glob(f"{directory}.corrupt/*")] \
        == ["2"], "the damaged step is kept aside, not deleted"


def test_a_checkpoint_of_another_model_is_not_mistaken_for_damage(tmp_path):
    directory = tmp_path / "checkpoints"
    _saved_steps(directory)
    loader = checkpoint.Checkpointer(str(directory))
    assert loader.latest_step() == 2
    with pytest.raises(checkpoint.CheckpointMismatchError, match="does not fit"):
        loader.restore({"a": jnp.arange(10.0), "b": {"c": jnp.ones((20, 30))}})
    loader.close()
    assert (directory / "2").exists() and not os.path.exists(f"{directory}.corrupt")


def test_training_resumes_past_a_damaged_step_to_the_same_parameters(tmp_path):
    model, data = _tiny_model_and_data()
    cfg = _train_cfg(batch_size=8, steps=4)      # checkpoints at steps 2 and 4
    reference = train.train(model, data, cfg, str(tmp_path / "a"), show_progress=False)
    workdir = tmp_path / "b"
    train.train(model, data, cfg, str(workdir), show_progress=False)
    os.remove(_largest_file(workdir / "checkpoints" / "4"))
    with pytest.warns(UserWarning, match="checkpoint step 4 .* damaged.*resuming from step 2"):
        resumed = train.train(model, data, cfg, str(workdir), show_progress=False)
    # Batches are a function of the step, so resuming at step 2 ends where the
    # uninterrupted run ended; the final step is saved again, intact.
    np.testing.assert_allclose(resumed["variables"]["params"]["w"],
                               reference["variables"]["params"]["w"], rtol=1e-6)
    assert np.abs(reference["variables"]["params"]["w"]).max() > 0, "it trained"
    assert checkpoint.unreadable(str(workdir / "checkpoints" / "4")) is None


# --- one process per workdir -------------------------------------------------------------

def _hold_lock(directory):
    """A child process that takes the workdir lock, says so, and waits to be killed."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from core import workdir
        with workdir.locked({str(directory)!r}):
            print("locked", flush=True)
            time.sleep(300)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_run_on_a_busy_workdir_fails_clearly(tmp_path, cache, capsys):
    workdir = tmp_path / "run"
    child = _hold_lock(workdir)
    try:
        assert cli(workdir, *TINY) == 2
        error = capsys.readouterr().err
        assert f"{workdir} is in use" in error and f"pid {child.pid}" in error
        assert not (workdir / "config.json").exists()
        model, data = _tiny_model_and_data()
        with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {child.pid}"):
            train.train(model, data, _train_cfg(batch_size=8), str(workdir),
                        show_progress=False)
        assert not (workdir / "metrics.jsonl").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # A killed holder leaves no stale lock.
    with workdir_lib.locked(str(workdir)):
        with workdir_lib.locked(str(workdir)):      # re-entrant within one process
            pass


def test_a_teacher_in_training_elsewhere_is_waited_for(tmp_path, capsys):
    directory = tmp_path / "entry"
    child = _hold_lock(directory)
    import threading
    killing = threading.Event()

    def kill():
        killing.set()      # before the kill: the lock cannot be free while this is unset
        child.kill()
    threading.Timer(1.0, kill).start()
    with workdir_lib.locked(str(directory), wait=True, what="training of this teacher"):
        # The holder's lock is released inside its exit, a moment before the process can
        # be reaped, so poll() may still say None here: ask whether it was killed.
        assert killing.is_set(), "the lock was taken while the holder lived"
    child.wait()
    assert "waiting for another training of this teacher" in capsys.readouterr().err


# --- config files and names --------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    ("X = 1\n", r"defines no get_config\(\) \(it defines: X\)"),
    ("def get_config():\n    return {'program': 'core.teacher'}\n",
     "returned dict, not an ml_collections.ConfigDict"),
    ("import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict()\n",
     "no 'program' key"),
])
def test_broken_config_files_say_what_a_config_must_hold(tmp_path, capsys, body, expected):
    path = tmp_path / "my_experiment.py"
    path.write_text(body)
    with pytest.raises(config_lib.ConfigError, match=expected):
        registry.load(str(path))
    assert run.main([f"--exp={path}", f"--workdir={tmp_path / 'run'}"]) == 2
    assert str(path) in capsys.readouterr().err


def test_unknown_model_names_the_zoo():
    with pytest.raises(config_lib.ConfigError, match="unknown model 'resnet21'.*resnet20"):
        teacher.build_module("resnet21")


# --- experiments write only under their workdir -----------------------------------------

def _canned_lowrank_report(config):
    method = {"isolated": 0.1, "isolated_vs_svd": 1.0, "in_network": 0.2,
              "in_network_vs_svd": 1.0}
    return {"model": config.teacher.model, "config": config.to_dict(), "seconds": 1.0,
            "machine": {"cpu": "c", "cores": 2, "onnxruntime": "v",
                        "load_average_at_start": 0.0},
            "original": {"test_accuracy": 0.5, "latency": {"median_ms": 1.0}},
            "equal_rank": {"rank_fraction": 0.5, "mean": {"svd": method}}, "budgets": []}


def test_lowrank_publishes_only_from_its_default_workdir(tmp_path, monkeypatch):
    import experiments
    from experiments import lowrank_study as lowrank
    published = tmp_path / "published"
    monkeypatch.setattr(registry, "RESULTS", str(published))
    monkeypatch.setattr(lowrank, "run_model", lambda c, w: _canned_lowrank_report(c))
    monkeypatch.chdir(tmp_path)
    for name, publishes in (("lowrank_tiny", False), ("lowrank_resnet20", True)):
        config = registry.load(name)
        elsewhere = tmp_path / "elsewhere" / name
        elsewhere.mkdir(parents=True)
        experiments.run(config, str(elsewhere))
        assert (elsewhere / "result.json").exists() and (elsewhere / "result.md").exists()
        assert not published.exists(), f"{name} with --workdir must not publish"
        default = tmp_path / registry.default_workdir(config)
        default.mkdir(parents=True)
        experiments.run(config, str(default))
        assert published.exists() == publishes, name
    assert sorted(os.listdir(published)) == ["lowrank.json", "lowrank.md",
                                             "lowrank_resnet20.json", "lowrank_resnet20.md"]


def test_pruning_publishes_only_from_its_default_workdir(tmp_path):
    config = registry.load("prune_resnet20_2x")
    assert registry.publishes(config, "runs/prune_resnet20_2x")
    assert not registry.publishes(config, str(tmp_path))
    assert not registry.publishes(registry.load("prune_resnet20_tiny"),
                                    "runs/prune_resnet20_tiny")


@pytest.mark.slow
def test_lowrank_tiny_writes_nothing_into_the_repository(tmp_path):
    """End to end, in a child process: every file it writes lies under the workdir or the
    (redirected) teacher cache."""
    before = {p: os.path.getmtime(p) for p in glob.glob(f"{ROOT}/benchmarks/results/*")}
    env = dict(os.environ, TEACHER_CACHE=str(tmp_path / "teachers"), JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "--exp=lowrank_tiny",
                    f"--workdir={tmp_path / 'x'}"], cwd=tmp_path, env=env, check=True,
                   timeout=850)
    with open(tmp_path / "x" / "result.json") as f:
        report = json.load(f)
    # Equal budgets: learned's 10 refinement steps + 5 fine-tune = the others' 15 fine-tune.
    assert {r["method"]: r["training_steps"] for r in report["budgets"]} == {
        "svd": 15, "data": 15, "learned": 15}
    assert all(r["latency"]["median_ms"] > 0 for r in report["budgets"])
    assert not glob.glob(f"{ROOT}/benchmarks/results/lowrank_tiny*")
    assert not os.path.exists(os.path.join(ROOT, "runs", "lowrank_tiny"))
    changed = [p for p, t in before.items() if os.path.exists(p) and
               os.path.getmtime(p) != t and os.path.basename(p).startswith("lowrank")]
    assert not changed
