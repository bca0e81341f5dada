"""The six-line recipe in pruning/__init__.py's docstring, run as written: a small Flax CNN
pruned by L1 magnitude loses at least 1.8x of its FLOPs, and the exported ONNX model,
run in onnxruntime on a real photograph, gives the pruned JAX model's outputs."""
import pathlib
import re

import flax.linen as nn
import jax
import numpy as np
import onnxruntime as ort
import pytest

import pruning
from data import real_images


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        for features, stride in ((16, 2), (32, 1), (32, 2), (64, 1)):
            x = nn.Conv(features, (3, 3), strides=stride, use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.relu(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def recipe_code() -> str:
    """The literal block after 'Recipe' in the docstring, dedented."""
    doc = pruning.__doc__
    block = doc[doc.index("Recipe"):].split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def test_the_recipe_has_six_lines_after_its_imports():
    code = [line for line in recipe_code().splitlines()
            if line and not re.match(r"(import|from) ", line)]
    assert len(code) == 6, code


def test_the_readme_shows_the_same_recipe():
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    assert "```python\n" + recipe_code() + "```" in readme


def real_image(size=(48, 48)) -> np.ndarray:
    try:
        return real_images.load("evaluation", size=size, limit=1, dtype=np.float32)
    except real_images.RealImagesUnavailable as error:
        pytest.skip(f"no real images here: {error}")


def test_recipe_halves_flops_and_exports_what_jax_computes(tmp_path, monkeypatch):
    model = SmallCNN()
    x = real_image()
    variables = model.init(jax.random.key(0), x)
    # Running statistics that are not the identity, so BatchNorm's slicing matters.
    rng = np.random.default_rng(0)

    def statistics(path, v):
        name = jax.tree_util.keystr(path)
        if "mean" in name:
            return rng.normal(0.0, 0.05, v.shape).astype(np.float32)
        return np.abs(rng.normal(1.0, 0.3, v.shape)).astype(np.float32) if "var" in name else v
    variables = jax.tree_util.tree_map_with_path(statistics, variables)
    namespace = {"fn": lambda v, inp: model.apply(v, inp), "variables": variables, "x": x}
    monkeypatch.chdir(tmp_path)
    exec(compile(recipe_code(), "pruning/__init__.py recipe", "exec"), namespace)

    before, after, pruned = namespace["before"], namespace["after"], namespace["pruned"]
    assert before / after >= 1.8, (before, after)
    full = [g for g in namespace["groups"] if g.prunable]
    assert all(pruned.sizes[g.id] < g.size for g in full), "every prunable group shrank"

    session = ort.InferenceSession(str(tmp_path / "pruned.onnx"),
                                   providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    jax_out = np.asarray(pruned.fn(pruned.variables, x))
    assert onnx_out.shape == jax_out.shape == (1, 10)
    np.testing.assert_allclose(onnx_out, jax_out, rtol=1e-4, atol=1e-4)
    # The pruned model is not the original: its outputs moved (magnitude pruning, no tuning).
    original = np.asarray(model.apply(variables, x))
    assert np.max(np.abs(original - jax_out)) > 1e-3
