"""A pruned model saved with ``pruning.portable`` reloads in a fresh Python process that
has neither the model's source nor this project on its path, and gives identical outputs,
at the saved batch size and another one (the batch dimension is symbolic)."""
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np

from pruning import portable
from tests.pruning.test_prune_transforms import _pruned
from tests.pruning.test_prune_zoo import _model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = textwrap.dedent("""
    import importlib.util, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location("portable", sys.argv[1])
    portable = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(portable)
    for name in ("models", "core", "pruning"):
        try:
            __import__(name)
        except ImportError:
            continue
        raise SystemExit(f"{name} should not be importable here")
    model = portable.load(sys.argv[2])
    inputs = np.load(sys.argv[3])
    outs = {k: np.asarray(model(inputs[k])) for k in inputs.files}
    outs.update({"call_" + k: np.asarray(model.call(model.variables, inputs[k]))
                 for k in inputs.files})
    np.savez(sys.argv[4], **outs)
    assert "flax" not in sys.modules, "loading must not need flax"
""")


def test_save_and_reload_in_a_fresh_process(tmp_path):
    _, _, x, _ = _model("resnet20")
    pruned, _ = _pruned("resnet20")
    directory = portable.save(str(tmp_path / "model"), pruned.fn, pruned.variables, x)
    x3 = jnp.concatenate([x, -x[:1]], axis=0)
    np.savez(tmp_path / "inputs.npz", x=np.asarray(x), x3=np.asarray(x3))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, str(script), os.path.join(ROOT, "pruning", "portable.py"),
         directory, str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outs = np.load(tmp_path / "outputs.npz")
    for key, xs in (("x", x), ("x3", x3)):
        want = np.asarray(pruned.fn(pruned.variables, xs))
        np.testing.assert_allclose(outs[key], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(outs[key], outs["call_" + key])
