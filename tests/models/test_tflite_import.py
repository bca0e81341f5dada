"""The TFLite importer (``models.from_tflite``) against LiteRT on the real MediaPipe selfie
segmentation models (portrait 256x256 and landscape 144x256), on real evaluation images.

LiteRT is the independent reference: its default CPU path (XNNPACK, the only one that runs
MediaPipe's custom Convolution2DTransposeBias) for the whole model, and its reference kernels
(``OpResolverType.BUILTIN_REF``, tensors preserved) for every builtin operator before the
custom op. Each operator's output is compared twice: chained (the importer run end to end)
and isolated (the operator's rule fed LiteRT's own input tensors), relative to the scale of
that tensor, so a wrong rule shows up at its own operator.

Measured (jax 0.10.2, ai-edge-litert 2.3.0, 4 evaluation images), portrait / landscape:
- mask, max |JAX - XNNPACK|: 1.4e-4 / 4.4e-5 (2.7e-4 / 5.0e-5 before the mean fix below);
  over 16 images at most 2.0e-4 / 1.1e-4. This is float32 rounding amplified by the model,
  not an importer error: against the float64 evaluation of the same graph the importer is
  at most 1.2e-4 / 9.1e-5 off and LiteRT's XNNPACK 1.4e-4 / 1.1e-4 (16 images), so no two
  float32 implementations agree to 1e-4 on the mask. Its logits (scale 130..1000) reach the
  sigmoid with an error of a few 1e-6 of their scale, about 1e-3 near the mask boundary.
- logits vs XNNPACK, relative to their scale: 4.3e-6 / 3.6e-5 (the landscape figure is
  XNNPACK's: its MEAN kernel is 1.3e-5 off float64, the importer's 2.4e-7).
- every operator vs LiteRT (2 images; reference kernels before the custom op): chained at
  most 6.3e-5 of the tensor's scale, isolated at most 1.3e-5, the reference kernels' own
  sequential float32 sums in the global poolings (1.1e-5 off float64; the importer 1.8e-7).
  A wrong rule is 1e-3 or more isolated (hard-swish with 6.01 instead of 6: 1.7e-3).
- batch 3 and batch 1 give identical masks (0.0).
- the cause of the former 2.7e-4: XLA:CPU summed the 64x64 global average pooling in one
  float32 loop, 4.8e-6 of the scale off float64 (XNNPACK: 7.9e-7), and the network amplified
  it 50x. ``tflite_rules.mean`` sums one axis at a time (1.8e-7); see ``test_global_mean``.
"""
import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from data import real_images
from models import real_tflite_models, tflite_import, tflite_rules

MODELS = tuple(real_tflite_models.MODELS)
IMAGES = 4
PER_OP_IMAGES = 2
MASK_ATOL = 3e-4         # measured at most 1.4e-4 (4 images), 2.0e-4 (16); see above
LOGIT_RTOL = 1e-4        # the 1e-4 of the output scale, at the logits
CHAIN_RTOL = 1e-4        # measured at most 6.3e-5 of the tensor's scale
ISOLATED_RTOL = 3e-5     # measured at most 1.3e-5 (the reference kernels' pooling sums)


def _interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as error:
        pytest.skip(f"ai-edge-litert is not installed: {error}")
    return Interpreter, OpResolverType


def _path(name):
    try:
        return real_tflite_models.path(name)
    except real_tflite_models.ModelNotFetched as error:
        pytest.skip(str(error))


@functools.lru_cache(maxsize=None)
def _images(name, limit=IMAGES) -> np.ndarray:
    try:
        images = real_images.load("evaluation", size=real_tflite_models.MODELS[name].input_hw,
                                  limit=limit)
    except real_images.RealImagesUnavailable as error:
        pytest.skip(str(error))
    return (np.asarray(images) / 255.0).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _graph(name) -> tflite_import.Graph:
    return tflite_import.read(_path(name))


def _edited(path, keep_operators=None, outputs=()) -> bytes:
    """The model's bytes with only its first ``keep_operators`` (raw) operators and with
    ``outputs`` (tensor indices) as its outputs."""
    from ai_edge_litert.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    sub = model.subgraphs[0]
    if keep_operators is not None:
        sub.operators = sub.operators[:keep_operators]
    sub.outputs = np.asarray(list(outputs), np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _litert(content: bytes, x, tensors, reference=False, preserve=False):
    """{tensor index: LiteRT's value over the images} for ``tensors``."""
    Interpreter, OpResolverType = _interpreter()
    kwargs = {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF} if reference else {}
    interpreter = Interpreter(model_content=content, num_threads=1,
                              experimental_preserve_all_tensors=preserve, **kwargs)
    interpreter.allocate_tensors()
    values = collections.defaultdict(list)
    for image in x:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        for t in tensors:
            values[t].append(np.array(interpreter.get_tensor(t)))
    return {t: np.concatenate(v) for t, v in values.items()}


def _output_and_logits(graph):
    """The model's output and, when a LOGISTIC makes it, the logits it reads."""
    out = graph.outputs[0]
    producer = next(op for op in graph.operators if out in op.outputs)
    return out, (producer.inputs[0] if producer.op == "LOGISTIC" else None)


def _relative(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("name", MODELS)
def test_matches_litert_on_real_images(name):
    """(a) The whole model vs LiteRT's default CPU path on real images, and the mask is not
    degenerate: some image has both person and background pixels."""
    path, graph, x = _path(name), _graph(name), _images(name)
    out, logits = _output_and_logits(graph)
    wanted = [out] + ([logits] if logits is not None else [])
    ref = _litert(_edited(path, outputs=wanted), x, wanted)
    names = [graph.tensors[t].name for t in wanted]
    fn, variables, example = models.from_tflite(path, outputs=names)
    got = jax.jit(fn)(variables, x)
    got = [np.asarray(g) for g in (got if isinstance(got, tuple) else (got,))]
    assert got[0].shape == ref[out].shape == (len(x),) + example.shape[1:3] + (1,)
    mask_error = float(np.abs(got[0] - ref[out]).max())
    assert mask_error <= MASK_ATOL, f"{name}: mask off LiteRT by {mask_error:.2e}"
    if logits is not None:
        logit_error = _relative(got[1], ref[logits])
        assert logit_error <= LOGIT_RTOL, f"{name}: logits off by {logit_error:.2e} of scale"
    person = (ref[out] > 0.5).reshape(len(x), -1).mean(axis=1)
    assert np.any((person > 0.01) & (person < 0.99)), \
        f"{name}: no image has both person and background pixels (fractions {person})"


def _first_custom(graph) -> int:
    """Position in ``graph.operators`` of the first operator the reference kernels lack."""
    schema, _ = tflite_import._schema()
    builtin = set(tflite_import._names(schema.BuiltinOperator).values())
    return next((i for i, op in enumerate(graph.operators) if op.op not in builtin),
                len(graph.operators))


def _litert_tensors(name, x):
    """LiteRT's values, per operator position, of each operator's inputs and outputs: from the
    reference kernels (tensors preserved) up to the first custom operator, from the default
    path (inputs and outputs of the later operators made model outputs) after it."""
    path, graph = _path(name), _graph(name)
    k = _first_custom(graph)
    before, after = graph.operators[:k], graph.operators[k:]
    reference, default = {}, {}
    if before:
        content = _edited(path, keep_operators=after[0].index if after else None,
                          outputs=[before[-1].outputs[0]])
        tensors = sorted({t for op in before for t in op.outputs})
        reference = _litert(content, x, tensors, reference=True, preserve=True)
    later = sorted({t for op in after for t in op.inputs + op.outputs
                    if t >= 0 and t not in graph.constants})
    if later:
        default = _litert(_edited(path, outputs=later), x, later)
    return [reference] * len(before) + [default] * len(after)


def _group(failures) -> str:
    """Failures by op type, isolated ones (the rule itself is wrong) first, then those only
    seen chained (inherited from an earlier operator, or accumulated rounding)."""
    lines = []
    for what, heading in (("isolated", "rule wrong on LiteRT's own inputs"),
                          ("chained", "chained only")):
        by_type = collections.defaultdict(list)
        for op, name, kind, error in failures:
            if kind == what:
                by_type[op.op].append((error, f"#{op.index} {name} {error:.1e}"))
        lines += [f"  {heading}:"] + [
            f"    {op}: {len(rows)}, worst " + "; ".join(r for _, r in sorted(rows)[::-1][:4])
            for op, rows in sorted(by_type.items())]
    return "\n".join(lines)


@pytest.mark.parametrize("name", MODELS)
def test_every_operator_matches_litert(name):
    """(b) Per operator, on real images: the importer's value of each operator's output equals
    LiteRT's, chained (whole importer) and isolated (the rule fed LiteRT's inputs)."""
    graph, x = _graph(name), _images(name)[:PER_OP_IMAGES]
    sources = _litert_tensors(name, x)
    names = [graph.tensors[op.outputs[0]].name for op in graph.operators]
    assert len(set(names)) == len(names)
    fn, variables, _ = models.from_tflite(_path(name), outputs=names)
    chained = [np.asarray(v) for v in jax.jit(fn)(variables, x)]
    _, bindings = tflite_import.prepare_variables(graph)
    failures = []
    for op, bound, source, name_, value in zip(graph.operators, bindings, sources, names,
                                               chained):
        expected = source[op.outputs[0]]
        values = {**graph.constants, **source, graph.inputs[0]: x}
        isolated = tflite_import.apply_operator(op, bound, variables, values)[0]
        error = _relative(isolated, expected)
        if error > ISOLATED_RTOL:
            failures.append((op, name_, "isolated", error))
        else:
            error = _relative(value, expected)
            if error > CHAIN_RTOL:
                failures.append((op, name_, "chained", error))
    checked = len(graph.operators)
    assert any(s is not sources[0] for s in sources), "no operator after the custom one"
    assert not failures, (f"{name}: {len(failures)} of {checked} operators beyond isolated "
                          f"{ISOLATED_RTOL} / chained {CHAIN_RTOL} of the tensor's scale, by "
                          f"op type:\n{_group(failures)}")


def test_global_mean(name="selfie_segmentation"):
    """The global average pooling that made the former 2.7e-4: on its real 64x64 input the
    rule is within 5e-7 of the float64 mean (a one-loop float32 sum was 4.8e-6 off)."""
    graph, x = _graph(name), _images(name)
    pool = next(op for op in graph.operators if op.op == "AVERAGE_POOL_2D")
    assert pool.in_shapes[0][1:3] == (64, 64)
    fn, variables, _ = models.from_tflite(_path(name),
                                          outputs=[graph.tensors[pool.inputs[0]].name])
    h = np.asarray(jax.jit(fn)(variables, x))
    exact = h.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    got = np.asarray(jax.jit(lambda a: tflite_import.apply_operator(pool, {}, {}, {
        pool.inputs[0]: a})[0])(h))
    assert _relative(got, exact) <= 5e-7
    # Guards the test: a sequential float32 sum is far off. (XLA's own one-loop mean is
    # CPU-dependent: 4.8e-6 with AVX-512, 4.5e-7 on an AVX2 EPYC, so it cannot be the guard.)
    n, hh, ww, c = h.shape
    sequential = (np.cumsum(h.reshape(n, hh * ww, c), axis=1, dtype=np.float32)[:, -1]
                  / np.float32(hh * ww)).reshape(n, 1, 1, c)
    assert _relative(sequential, exact) > 4 * _relative(got, exact)


def test_unsupported_op_names_op_index_and_supported(monkeypatch):
    """(c) An operator without a rule: the error names the op, its index and what is
    supported."""
    graph = _graph("selfie_segmentation")
    first = next(op for op in graph.operators if op.op == "HARD_SWISH")
    monkeypatch.delitem(tflite_rules.RULES, "HARD_SWISH")
    with pytest.raises(tflite_import.UnsupportedTFLiteOp) as info:
        models.from_tflite(_path("selfie_segmentation"))
    message = str(info.value)
    assert "HARD_SWISH" in message.split(";")[0]
    assert f"operator {first.index}" in message
    supported = message.split("supported ops:")[1]
    assert "CONV_2D" in supported and "Convolution2DTransposeBias" in supported
    assert "HARD_SWISH" not in supported


@pytest.mark.parametrize("name", MODELS)
def test_any_batch(name):
    """(d) One import runs batch 1 and batch 3 with the same per-image outputs."""
    x = _images(name)[:3]
    fn, variables, example = models.from_tflite(_path(name))
    assert example.shape[0] == 1
    run = jax.jit(fn)
    batched = np.asarray(run(variables, x))
    singles = np.concatenate([np.asarray(run(variables, x[i:i + 1])) for i in range(3)])
    assert batched.shape == singles.shape == (3,) + example.shape[1:3] + (1,)
    # Batch 1 and 3 compile to other conv kernels: measured 0.0 on an AVX-512 CPU, 5.4e-5 on
    # an AVX2 EPYC; the mask's float32 limit is about 1.4e-4 (test_matches_litert...).
    np.testing.assert_allclose(batched, singles, rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", MODELS)
def test_variables_named_and_dequantized(name):
    """(e) Variables are the model's weights under their tensor names, float32, and the
    float16 weights' DEQUANTIZE operators are folded away (none left in graph or jaxpr)."""
    from ai_edge_litert.tools import flatbuffer_utils
    path, graph = _path(name), _graph(name)
    raw = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    codes = [flatbuffer_utils.opcode_to_name(raw, op.opcodeIndex)
             for op in raw.subgraphs[0].operators]
    assert codes.count("DEQUANTIZE") == 110          # every weight is stored as float16
    assert all(op.op != "DEQUANTIZE" for op in graph.operators)
    fn, variables, example = models.from_tflite(path)
    layers = [op for op in graph.operators
              if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "Convolution2DTransposeBias")]
    assert len(variables) == 2 * len(layers) == 110
    for key, value in variables.items():
        layer, _, kind = key.rpartition("/")
        assert kind in ("Kernel", "Bias") and layer.replace("_", "").isalnum(), key
        assert value.dtype == jnp.float32
    tensor_names = {t.name for t in graph.tensors}
    assert set(variables) <= tensor_names
    jaxpr = jax.make_jaxpr(fn)(variables, example)
    dtypes = {str(v.aval.dtype) for eqn in jaxpr.eqns for v in eqn.outvars}
    assert dtypes == {"float32"}, dtypes


def test_inner_output_computes_only_what_it_needs(name="selfie_segmentation"):
    """The logits before the final sigmoid (tensor 'segment', what the showcase trains on):
    the sigmoid of them is the model's mask, and the graph stops there: no logistic left
    computed and unused (it would count in core.cost.count)."""
    path = str(_path(name))
    fn, variables, _ = models.from_tflite(path)
    logits_fn, logits_variables, _ = models.from_tflite(path, ["segment"])
    x = jnp.asarray(_images(name)[:2])
    np.testing.assert_allclose(jax.nn.sigmoid(jax.jit(logits_fn)(logits_variables, x)),
                               jax.jit(fn)(variables, x), rtol=0, atol=1e-6)
    def primitives(f, v):
        return collections.Counter(e.primitive.name for e in jax.make_jaxpr(f)(v, x).eqns)
    full, logits = primitives(fn, variables), primitives(logits_fn, logits_variables)
    assert full - logits == collections.Counter({"logistic": 1})   # only the final sigmoid
    with pytest.raises(tflite_import.TFLiteImportError, match="not tensors of the graph"):
        models.from_tflite(path, ["no_such_tensor"])
