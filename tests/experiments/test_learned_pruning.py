"""experiments/learned_pruning: the pruned model reuses the gates' channel analysis, and the
teacher and pruned model are exported by one exporter and timed in interleaved rounds
(issue 21, item 4)."""
import importlib
import os
from types import SimpleNamespace

import jax
import numpy as np
import onnxruntime as ort
import pytest

from core import cost
from experiments import learned_pruning
from models import zoo
from pruning import find_groups, importance, prune


@pytest.fixture(scope="module")
def tiny():
    """A tiny ResNet-20, its analysis, an L1 keep-set at 0.6 and the pruned model."""
    fn, variables, x = zoo.instantiate("resnet20")
    groups = find_groups(fn, variables, x[:1])
    keep = importance.select(groups, importance.magnitude(groups, variables, p=1), 0.6)
    teacher = SimpleNamespace(fn=fn, variables=variables, example=np.asarray(x[:1]),
                              summary={"test_accuracy": 0.9},
                              teacher_fn=jax.jit(lambda v: fn(variables, v)), dataset=None)
    return teacher, groups, keep, prune(fn, variables, x[:1], keep=keep, analysis=groups)


def test_measure_exports_and_times_both_models_in_one_interleaved_call(tiny, tmp_path,
                                                                        monkeypatch):
    teacher, _, _, pruned = tiny
    calls = []
    real = learned_pruning.export_and_compare

    def spy(models, *args, **kwargs):
        calls.append(sorted(models))
        return real(models, *args, runs=3, rounds=2)
    monkeypatch.setattr(learned_pruning, "export_and_compare", spy)
    config = SimpleNamespace(device="ort-cpu-1t")
    before, after = learned_pruning._measure(
        config, teacher, pruned, {"variables": pruned.variables, "test": {"accuracy": 0.8}},
        str(tmp_path))
    assert calls == [["pruned", "teacher"]], "one call times both models together"
    assert (before["accuracy"], after["accuracy"]) == (0.9, 0.8)
    x = teacher.example
    for measured, fn, variables, name in ((before, teacher.fn, teacher.variables, "teacher"),
                                          (after, pruned.fn, pruned.variables, "pruned")):
        assert measured["onnx"] == os.path.join(str(tmp_path), "onnx", f"{name}.onnx")
        exact = cost.count(fn, variables, x)
        assert (measured["flops"], measured["params"]) == (int(exact.flops), int(exact.params))
        assert measured["batch1_median_ms"] > 0 and measured["batch32_median_ms"] > 0
        session = ort.InferenceSession(measured["onnx"], providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(out, np.asarray(fn(variables, x)), rtol=1e-4, atol=1e-5)
    assert before["flops"] / after["flops"] > 1.3


def test_prune_and_finetune_reuses_the_gate_analysis(tiny, tmp_path, monkeypatch):
    """``prune`` gets the groups the gates were trained on and does not trace the model
    again; the result equals pruning with a fresh analysis."""
    teacher, groups, keep, reference = tiny
    prune_module = importlib.import_module("pruning.prune")

    def no_reanalysis(*args, **kwargs):
        raise AssertionError("prune analysed the model again")
    monkeypatch.setattr(prune_module, "analyze", no_reanalysis)
    monkeypatch.setattr(learned_pruning.train_lib, "evaluate",
                        lambda *a, **k: {"accuracy": 0.5})
    monkeypatch.setattr(learned_pruning.train_lib, "train",
                        lambda model, *a, **k: {"variables": model.variables,
                                                "test": {"accuracy": 0.6}})
    config = SimpleNamespace(finetune=None)
    settings = SimpleNamespace(kd_temperature=4.0, kd_alpha=0.9)
    pruned, after_prune, tuned = learned_pruning._prune_and_finetune(
        config, teacher, settings, keep, teacher.variables, groups, str(tmp_path))
    assert after_prune == {"accuracy": 0.5}
    assert (tmp_path / "keep.json").exists()
    x = teacher.example
    np.testing.assert_allclose(np.asarray(pruned.fn(pruned.variables, x)),
                               np.asarray(reference.fn(reference.variables, x)),
                               rtol=1e-6, atol=1e-6)
    assert jax.tree_util.tree_structure(pruned.variables) == \
        jax.tree_util.tree_structure(reference.variables)
