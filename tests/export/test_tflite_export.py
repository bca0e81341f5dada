""".tflite export (``export.tflite_export.to_tflite``) and the LiteRT runner (``litert-cpu-1t``).

The independent reference is LiteRT itself: every exported model is run here in
ai-edge-litert's interpreter (XNNPACK) on real images (data/real_images.py) and compared
with the JAX function, not with the export's own parity report. Tests that convert need
TensorFlow, an extra (requirements-tflite.txt), and skip without it; the runner tests need
only ai-edge-litert and the cached real .tflite model.

Measured (jax 0.10.2, tensorflow-cpu 2.21.0, ai-edge-litert 2.3.0), max |LiteRT - JAX|
relative to the output's scale: tiny mobilenetv2 on real images 2.3e-7, selfie segmenter
(imported from .tflite) 2.7e-5 on its mask, ppocr classifier (imported from ONNX) 1.2e-6;
0 TRANSPOSE ops in the NHWC zoo nets; the round trip through models.from_tflite 0.0.
"""
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from data import real_images
from export import ExportParityError, get_runner, litert_runner, tflite_export
from export.runners import measure_interleaved
from models import real_tflite_models, zoo

NO_TENSORFLOW = ("to_tflite converts through TensorFlow, an extra: "
                 "`.venv/bin/pip install -r requirements-tflite.txt`")
ZOO_RTOL = 1e-5          # measured 2.3e-7 (mobilenetv2), 2.0e-7 (resnet20), real images
SELFIE_ATOL = 3e-4       # the mask in [0, 1]; measured 2.7e-5 (the importer vs XNNPACK:
                         # up to 2.0e-4, tests/models/test_tflite_import.py)


def _tensorflow():
    return pytest.importorskip("tensorflow", reason=NO_TENSORFLOW)


def _real_images(size, limit, channels=3) -> np.ndarray:
    try:
        images = real_images.load("evaluation", size=size, limit=limit, dtype=np.float32)
    except real_images.RealImagesUnavailable as error:
        pytest.skip(f"no real images here: {error}")
    return images if channels == 3 else images.mean(axis=-1, keepdims=True)


def _selfie_path():
    try:
        return real_tflite_models.path("selfie_segmentation")
    except real_tflite_models.ModelNotFetched as error:
        pytest.skip(str(error))


@functools.lru_cache(maxsize=None)
def _zoo(name="mobilenetv2"):
    """A tiny zoo conv net (NHWC, one channel) and 4 real grey images of its input size."""
    fn, variables, example = zoo.instantiate(name, tiny=True, batch=1)
    return fn, variables, _real_images(example.shape[1:3], 4, channels=1)


def _litert(model, *inputs):
    """The outputs of ``model`` in LiteRT, inputs and outputs in signature-name order."""
    runtime = litert_runner.interpreter(model)
    names = [f"input_{i}" for i in range(len(inputs))]
    outs = tflite_export.signature_tensors(model)["outputs"]
    return tflite_export.run_named(model, runtime, names, sorted(outs, key=lambda n: int(
        n.split("_")[1])), [np.asarray(x) for x in inputs])


def _relative(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# --- the runner (ai-edge-litert only) -------------------------------------------------------

def test_litert_runner_is_registered():
    runner = get_runner("litert-cpu-1t", runs=7)
    assert isinstance(runner, litert_runner.LiteRTCpuRunner)
    assert runner.threads == 1 and runner.runs == 7 and runner.name == "litert-cpu-1t"


def test_litert_runner_measures_a_real_model_from_path_and_bytes():
    path = _selfie_path()
    runner = get_runner("litert-cpu-1t", runs=6, warmup=1)
    for model in (str(path), path.read_bytes()):
        m = runner.measure(model)
        assert m.device == "litert-cpu-1t" and m.runs == 6 and len(m.samples_ms) == 6
        assert 0 < min(m.samples_ms) <= m.median_ms <= m.p90_ms <= max(m.samples_ms)
        assert m.median_ms == pytest.approx(np.median(m.samples_ms))
        assert m.peak_memory_bytes is None or m.peak_memory_bytes >= 0


def test_litert_runner_interleaved_at_two_batches():
    path = _selfie_path()
    runner = get_runner("litert-cpu-1t", warmup=1)
    timed = measure_interleaved(runner, [str(path), path.read_bytes()], batches=(1, 2),
                                runs=3, rounds=2)
    assert len(timed) == 2
    for per_batch in timed:
        assert sorted(per_batch) == [1, 2]
        for m in per_batch.values():
            assert m.runs == 6 and m.median_ms > 0 and m.p90_ms >= m.median_ms


def test_litert_runner_runs_the_given_inputs():
    """Real images through the runner's run() give the importer's JAX mask."""
    path = _selfie_path()
    images = _real_images((256, 256), 2)
    runtime = litert_runner.interpreter(path)
    litert_runner.resize_batch(runtime, 2)
    (mask,) = litert_runner.run(runtime, [images])
    fn, variables, _ = models.from_tflite(path)
    want = np.asarray(jax.jit(fn)(variables, images))
    assert mask.shape == want.shape == (2, 256, 256, 1)
    np.testing.assert_allclose(mask, want, atol=SELFIE_ATOL)
    m = get_runner("litert-cpu-1t", runs=3, warmup=1).measure(path, inputs=[images])
    assert m.runs == 3 and m.median_ms > 0


# --- export (needs TensorFlow) --------------------------------------------------------------

def test_zoo_conv_net_matches_jax_in_litert_on_real_images():
    _tensorflow()
    fn, variables, images = _zoo()
    result = tflite_export.to_tflite(fn, variables, images)
    (got,) = _litert(result.model, images)
    want = np.asarray(fn(variables, images))
    assert got.shape == want.shape == (4, 10)
    assert _relative(got, want) <= ZOO_RTOL
    assert result.parity.ok and result.parity.max_relative_error <= ZOO_RTOL
    assert result.batch == 4 and result.input_names == ["input_0"]
    assert result.op_counts["CONV_2D"] >= 4 and result.op_counts["DEPTHWISE_CONV_2D"] >= 1
    assert result.transpose_count == 0, result.op_counts     # NHWC in, NHWC kernels


def test_pytree_inputs_and_outputs_are_matched_by_name():
    """Dict in, dict out with leaves of different shapes: LiteRT's tensor order is not the
    pytree order, the signature names are."""
    _tensorflow()
    images = _real_images((8, 8), 2)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)

    def fn(variables, inputs):
        h = inputs["image"] @ variables["w"]
        return {"z_mean": h.mean(axis=(1, 2)), "a_map": h * inputs["gain"][:, None, None, None]}

    inputs = {"image": images, "gain": np.asarray([2.0, -3.0], np.float32)}
    result = tflite_export.to_tflite(fn, {"w": w}, inputs)
    got = _litert(result.model, inputs["gain"], inputs["image"])   # leaves: gain, image
    want = fn({"w": w}, inputs)
    assert [g.shape for g in got] == [(2, 8, 8, 5), (2, 5)]          # a_map, z_mean
    np.testing.assert_allclose(got[0], want["a_map"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want["z_mean"], rtol=1e-5, atol=1e-5)
    assert [o.path for o in result.parity.outputs] == ["['a_map']", "['z_mean']"]


def test_bfloat16_model_exports_in_float32():
    _tensorflow()
    images = _real_images((8, 8), 2)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.bfloat16)
    fn = lambda v, x: jax.nn.relu(x.astype(jnp.bfloat16) @ v["w"])
    result = tflite_export.to_tflite(fn, {"w": w}, images)
    assert result.notes and "float32" in result.notes[0]
    (got,) = _litert(result.model, images)
    assert got.dtype == np.float32
    want = np.maximum(images @ np.asarray(w, np.float32), 0)     # numpy, in float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_parity_mismatch_raises():
    _tensorflow()
    fn, variables, images = _zoo()
    result = tflite_export.to_tflite(fn, variables, images, parity=False)
    assert result.parity is None
    shifted = lambda v, x: fn(v, x) + 0.01
    with pytest.raises(ExportParityError, match="does not reproduce"):
        tflite_export.check_parity(result.model, shifted, variables, [images],
                                   result.input_names, result.output_names)


def test_without_tensorflow_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    fn, variables, images = _zoo()
    with pytest.raises(ImportError, match="requirements-tflite.txt"):
        tflite_export.to_tflite(fn, variables, images)


def test_round_trip_through_the_tflite_importer(tmp_path):
    _tensorflow()
    fn, variables, images = _zoo()
    path = tmp_path / "mobilenetv2.tflite"
    tflite_export.to_tflite(fn, variables, images, path=str(path))
    fn2, variables2, example = models.from_tflite(path)
    assert example.shape == images.shape
    got, want = np.asarray(fn2(variables2, images)), np.asarray(fn(variables, images))
    assert _relative(got, want) <= 1e-5


def test_pruned_model_exports_and_runs_in_litert():
    _tensorflow()
    import pruning
    from pruning import importance
    fn, variables, images = _zoo("resnet20")
    groups = pruning.find_groups(fn, variables, images)
    keep = importance.select(groups, importance.magnitude(groups, variables, p=1), 0.5)
    pruned = pruning.prune(fn, variables, images, keep=keep, analysis=groups)
    full = tflite_export.to_tflite(fn, variables, images, parity=False)
    small = tflite_export.to_tflite(pruned.fn, pruned.variables, images)
    assert len(small.model) < len(full.model)                  # fewer weights stored
    (got,) = _litert(small.model, images)
    want = np.asarray(pruned.fn(pruned.variables, images))
    assert _relative(got, want) <= ZOO_RTOL
    m = get_runner("litert-cpu-1t", runs=5, warmup=1).measure(small.model, batch=4)
    assert m.runs == 5 and m.median_ms > 0


@pytest.mark.slow
def test_imported_selfie_segmenter_exports_with_parity_on_real_images(tmp_path):
    """The real MediaPipe model, imported to JAX, exported back to .tflite: LiteRT gives
    the JAX mask on real images, and the file imports again to the same function."""
    _tensorflow()
    fn, variables, _ = models.from_tflite(_selfie_path())
    images = _real_images((256, 256), 2)
    path = tmp_path / "selfie.tflite"
    result = tflite_export.to_tflite(fn, variables, images, path=str(path))
    (mask,) = _litert(result.model, images)
    want = np.asarray(jax.jit(fn)(variables, images))
    np.testing.assert_allclose(mask, want, atol=SELFIE_ATOL)
    person = want > 0.5                                          # real masks, not noise
    assert 0.01 < person.mean() < 0.99
    assert np.mean((mask > 0.5) == person) > 0.999
    assert result.parity.max_relative_error <= SELFIE_ATOL
    fn2, variables2, _ = models.from_tflite(path)
    np.testing.assert_allclose(np.asarray(jax.jit(fn2)(variables2, images)), want, atol=1e-5)


@pytest.mark.slow
def test_imported_onnx_classifier_exports_with_parity_on_real_images():
    """The real PP-OCR orientation classifier (NCHW, imported from ONNX) in LiteRT."""
    _tensorflow()
    from models import real_models
    try:
        real_models.path("ppocr_cls_mobile_v2")
    except real_models.ModelNotFetched as error:
        pytest.skip(str(error))
    fn, variables, _ = real_models.load("ppocr_cls_mobile_v2", (3, 3, 48, 192))
    images = _real_images((48, 192), 3)
    x = real_models.preprocess("ppocr_cls_mobile_v2", images * 255)
    result = tflite_export.to_tflite(fn, variables, x)
    (got,) = _litert(result.model, x)
    want = np.asarray(jax.jit(fn)(variables, x))
    assert got.shape == want.shape == (3, 2)
    assert _relative(got, want) <= 1e-5                     # measured 1.2e-6
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
