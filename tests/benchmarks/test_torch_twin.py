"""The PyTorch twin of our ResNet-20 computes the same logits as the Flax model, and the
Torch-Pruning comparison runs end to end on a tiny budget with FLOPs on target.

Needs torch (``pip install -r benchmarks/requirements.txt``); the torch-free checks of the
twin's padding are in test_torch_twin_shared.py and always run."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_resnet20  # noqa: E402
from experiments import preamble as teacher_lib  # noqa: E402
from core.configs import train_teacher  # noqa: E402
from data import pipeline  # noqa: E402
from models import zoo  # noqa: E402


@pytest.fixture(scope="module")
def teacher_or_random():
    """The trained teacher when it is cached (no training here), else a random full-size
    ResNet-20 from the zoo."""
    config = train_teacher.get_config()
    cached = os.path.join(teacher_lib.cache_root(), teacher_lib.teacher_key(config),
                          "summary.json")
    if os.path.exists(cached):
        module, variables, _ = teacher_lib.get_teacher(config, show_progress=False)
        return module, variables, "trained"
    module = zoo.ZOO["resnet20"].build()
    _, variables, _ = zoo.instantiate("resnet20", tiny=False, batch=1, seed=0)
    return module, variables, "random"


def test_twin_gives_the_same_logits_on_fashion_mnist(teacher_or_random):
    module, variables, _ = teacher_or_random
    dataset = pipeline.load_dataset("fashion_mnist", 5000, 0, limit=64)
    x = pipeline.normalize(dataset.test[0][:64], dataset.mean, dataset.std)
    expected = np.asarray(module.apply(variables, x, train=False))
    twin = torch_resnet20.from_flax(module, variables, x.shape)
    with torch.no_grad():
        got = twin(torch_resnet20.nchw(x)).numpy()
    assert got.shape == expected.shape == (64, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert np.array_equal(np.argmax(got, -1), np.argmax(expected, -1))


def test_twin_loading_is_not_vacuous(teacher_or_random):
    """Perturbing one loaded weight changes the logits: the loaded weights are used."""
    module, variables, _ = teacher_or_random
    x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
    twin = torch_resnet20.from_flax(module, variables, x.shape)
    with torch.no_grad():
        before = twin(torch_resnet20.nchw(x)).numpy()
        twin.stage2_block2.conv2.conv.weight.mul_(0.0)
        after = twin(torch_resnet20.nchw(x)).numpy()
    assert np.abs(after - before).max() > 1e-3


def test_twin_weights_read_back_into_the_same_flax_tree(teacher_or_random):
    """``to_flax_variables`` inverts ``load_flax_variables`` leaf for leaf: what lets the
    benchmark export Torch-Pruning's models with our exporter."""
    import jax
    module, variables, _ = teacher_or_random
    twin = torch_resnet20.from_flax(module, variables, (1, 28, 28, 1))
    back = torch_resnet20.to_flax_variables(twin)
    expected = jax.tree_util.tree_flatten_with_path(variables)[0]
    got = jax.tree_util.tree_flatten_with_path(back)[0]
    assert [p for p, _ in got] == [p for p, _ in expected]
    for (path, a), (_, b) in zip(got, expected):
        np.testing.assert_array_equal(a, np.asarray(b), err_msg=str(path))


@pytest.mark.slow
def test_benchmark_smoke_has_every_row_on_target(tmp_path):
    pytest.importorskip("torch_pruning")
    from benchmarks import prune_vs_torch_pruning as bench
    out = tmp_path / "results"
    bench.main(["--quick", f"--workdir={tmp_path / 'runs'}", f"--results={out}"])
    with open(out / "prune_vs_torch_pruning.json") as f:
        result = json.load(f)
    rows = {(r["method"], r["target"]): r for r in result["rows"]}
    for method in bench.METHODS:
        # After 3 gate steps the rank-spread logits are still equal across groups of the
        # same size, so each global threshold cuts all of them at once and the nearest
        # keep-set can sit a little further from the target (2.10x measured for 2x).
        tolerance = bench.FLOPS_TOLERANCE * (2 if method == "ours_learned_ranked" else 1)
        for target in (2, 4):
            row = rows[(method, target)]
            assert abs(row["flops_reduction"] / target - 1) <= tolerance, row
            assert row["batch1_median_ms"] > 0 and row["batch32_median_ms"] > 0
    assert (out / "prune_vs_torch_pruning.md").read_text().count("|") > 20
    # Torch-Pruning at its recipe: global, progressive, round_to=8 (every pruned width a
    # multiple of 8 except the classifier's fixed 10 outputs).
    for method in ("tp_groupnorm", "tp_magnitude"):
        row = rows[(method, 4)]
        assert row["global_pruning"] and row["round_to"] == 8
        assert all(w % 8 == 0 for w in row["channels"]), row["channels"]
    # The one variant of ours named is the best on validation, whatever test says.
    for target in (2, 4):
        ours = {m: rows[(m, target)]["validation_accuracy"] for m in bench.OURS}
        assert result["ours_chosen_on_validation"][str(target)] == max(ours, key=ours.get)
    # The accuracies of a 3-step smoke run are near chance, but each must be the accuracy
    # of the model it exported (Torch-Pruning's read back into JAX and exported by ours:
    # its PyTorch accuracy must survive that), and the twin
    # must score exactly what the JAX teacher scores (measured: equal on every row).
    dataset = pipeline.load_dataset("fashion_mnist", 5000, 0, limit=2000)
    tolerance = 3 / len(dataset.test[1])
    for row in result["rows"]:
        assert abs(row["accuracy_after_finetune"] - onnx_accuracy(row["onnx"], dataset)) \
            <= tolerance, row
    teachers = {r["method"]: r["accuracy_after_finetune"] for r in result["rows"]}
    assert abs(teachers["teacher_jax"] - teachers["teacher_torch"]) <= tolerance


def onnx_accuracy(path, dataset):
    """Test accuracy of an exported model (NHWC from JAX, NCHW from PyTorch)."""
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    x = pipeline.normalize(dataset.test[0], dataset.mean, dataset.std)
    if spec.shape[1] == 1:
        x = x.transpose(0, 3, 1, 2)
    logits = session.run(None, {spec.name: np.ascontiguousarray(x, np.float32)})[0]
    return float(np.mean(np.argmax(logits, -1) == dataset.test[1]))
