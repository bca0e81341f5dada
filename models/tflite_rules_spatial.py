"""TFLite rules over the spatial axes (NHWC): convolutions, pooling, resizing.

Kernels are changed to HWIO once at import (``Rule.kernels``): CONV_2D's OHWI is
transposed, DEPTHWISE_CONV_2D's 1HW(C*M) becomes a grouped HWIO kernel, and transposed
convolutions (TRANSPOSE_CONV and MediaPipe's custom Convolution2DTransposeBias) are flipped
spatially there, so the graph holds a plain input-dilated convolution and no flip. Padding
follows TensorFlow's SAME (extra cell at the end), which is lax's 'SAME'. Resizing is a pair
of static interpolation matrices (or a repeat for integer nearest upsampling), never a
gather, so the exported ONNX has no Gather/Where clusters.
"""
import struct
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from models import tflite_rules
from models.tflite_rules import Rule, fused, mean, static_ints

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
PADDING = {0: "SAME", 1: "VALID"}


def ohwi_to_hwio(w):
    return np.transpose(w, (1, 2, 3, 0))


def depthwise_to_hwio(w):
    """[1, KH, KW, C*M] -> [KH, KW, 1, C*M]: output channel c*M+m reads input channel c,
    which is lax's channel order for feature_group_count=C."""
    return np.transpose(w, (1, 2, 0, 3))


def transposed_to_hwio(w):
    """[O, KH, KW, I] of a transposed conv -> the flipped [KH, KW, I, O] kernel of the
    equivalent input-dilated convolution."""
    return np.transpose(w[:, ::-1, ::-1, :], (1, 2, 3, 0))


def _conv(op, x, w, b=None, groups=None):
    o = op.options
    y = jax.lax.conv_general_dilated(
        x, w, window_strides=(int(o.strideH), int(o.strideW)), padding=PADDING[int(o.padding)],
        rhs_dilation=(int(o.dilationHFactor), int(o.dilationWFactor)),
        dimension_numbers=DIMENSIONS,
        feature_group_count=groups or x.shape[-1] // w.shape[2])
    return fused(op, y if b is None else y + b)


def _depthwise(op, x, w, b=None):
    return _conv(op, x, w, b, groups=x.shape[-1])


def _transposed_padding(n: int, out: int, k: int, s: int, same: bool) -> Tuple[int, int]:
    """(before, after) padding of the stride-``s``-dilated input so that a k-wide valid
    correlation gives ``out`` cells: TensorFlow's transposed-conv padding."""
    total = max((n - 1) * s + k - out, 0) if same else 0
    before = k - 1 - total // 2
    after = out - ((n - 1) * s + 1) + k - 1 - before
    return before, after


def transposed_conv(x, w, b, out_hw, strides, same: bool):
    """Transposed convolution of NHWC ``x`` with a flipped HWIO kernel ``w``."""
    pads = [_transposed_padding(n, o, k, s, same)
            for n, o, k, s in zip(x.shape[1:3], out_hw, w.shape[:2], strides)]
    y = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=pads,
                                     lhs_dilation=tuple(strides),
                                     dimension_numbers=DIMENSIONS)
    return y if b is None else y + b


def _transpose_conv(op, output_shape, w, x, b=None):
    o = op.options
    out_hw = tuple(static_ints(output_shape, "output shape", op)[1:3])
    y = transposed_conv(x, w, b, out_hw, (int(o.strideH), int(o.strideW)),
                        PADDING[int(o.padding)] == "SAME")
    return fused(op, y)


def _transpose_conv_bias(op, x, w, b):
    """MediaPipe's custom Convolution2DTransposeBias: custom options are the C struct
    TfLiteTransposeConvParams {padding (1 SAME, 2 VALID), stride_width, stride_height}."""
    padding, stride_w, stride_h = struct.unpack("<3i", op.custom_options[:12])
    if padding not in (1, 2):
        raise NotImplementedError(f"Convolution2DTransposeBias (operator {op.index}): "
                                  f"padding code {padding}")
    return transposed_conv(x, w, b, op.out_shapes[0][1:3], (stride_h, stride_w), padding == 1)


def _window(op):
    o = op.options
    return ((1, int(o.filterHeight), int(o.filterWidth), 1),
            (1, int(o.strideH), int(o.strideW), 1), PADDING[int(o.padding)])


def _average_pool(op, x):
    dims, strides, padding = _window(op)
    if padding == "VALID" and tuple(dims[1:3]) == tuple(x.shape[1:3]):
        return fused(op, mean(x, (1, 2), keepdims=True))     # global pooling
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, padding)
    if padding == "VALID":
        return fused(op, total / float(dims[1] * dims[2]))
    ones = np.ones((1,) + tuple(x.shape[1:3]) + (1,), np.float32)
    counts = jax.lax.reduce_window(jnp.asarray(ones), 0.0, jax.lax.add, dims, strides, padding)
    return fused(op, total / counts)        # SAME: the mean of the cells inside the image


def _max_pool(op, x):
    dims, strides, padding = _window(op)
    return fused(op, jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, padding))


def _source_coordinates(n_in: int, n_out: int, align_corners: bool, half_pixel: bool):
    if align_corners and n_out > 1:
        scale = (n_in - 1) / (n_out - 1)
    else:
        scale = n_in / n_out
    out = np.arange(n_out, dtype=np.float64)
    return (out + 0.5) * scale - 0.5 if half_pixel else out * scale


def bilinear_matrix(n_in: int, n_out: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """[n_out, n_in] weights of TFLite's RESIZE_BILINEAR along one axis."""
    src = _source_coordinates(n_in, n_out, align_corners, half_pixel)
    floor = np.floor(src)
    lower = np.maximum(floor, 0).astype(int)
    upper = np.minimum(np.ceil(src), n_in - 1).astype(int)
    frac = src - floor
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lower), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), upper), frac)
    return m.astype(np.float32)


def nearest_indices(n_in: int, n_out: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """Source index of each output cell for TFLite's RESIZE_NEAREST_NEIGHBOR."""
    src = _source_coordinates(n_in, n_out, align_corners, False)
    if half_pixel:
        src = (np.arange(n_out) + 0.5) * (n_in / n_out)
    idx = np.round(src) if align_corners else np.floor(src)
    return np.minimum(idx.astype(int), n_in - 1)


def _apply_axis(x, matrix: np.ndarray, axis: int):
    if matrix.shape[0] == matrix.shape[1] and np.array_equal(matrix, np.eye(matrix.shape[0])):
        return x
    spec = "oh,nhwc->nowc" if axis == 1 else "ow,nhwc->nhoc"
    return jnp.einsum(spec, jnp.asarray(matrix, x.dtype), x)


def _resize_options(op):
    o = op.options
    return bool(o.alignCorners), bool(getattr(o, "halfPixelCenters", False))


def _resize_bilinear(op, x, size):
    out = static_ints(size, "size", op)
    align, half = _resize_options(op)
    for axis, (n_in, n_out) in zip((1, 2), zip(x.shape[1:3], out)):
        x = _apply_axis(x, bilinear_matrix(n_in, n_out, align, half), axis)
    return x


def _resize_nearest(op, x, size):
    out = static_ints(size, "size", op)
    align, half = _resize_options(op)
    for axis, (n_in, n_out) in zip((1, 2), zip(x.shape[1:3], out)):
        idx = nearest_indices(n_in, n_out, align, half)
        if n_out % n_in == 0 and np.array_equal(idx, np.arange(n_out) // (n_out // n_in)):
            x = jnp.repeat(x, n_out // n_in, axis=axis)      # integer upsampling
        else:
            x = _apply_axis(x, np.eye(n_in, dtype=np.float32)[idx], axis)
    return x


SPATIAL: Dict[str, Rule] = {
    "CONV_2D": Rule(_conv, {1: ohwi_to_hwio}),
    "DEPTHWISE_CONV_2D": Rule(_depthwise, {1: depthwise_to_hwio}),
    "TRANSPOSE_CONV": Rule(_transpose_conv, {1: transposed_to_hwio}),
    "Convolution2DTransposeBias": Rule(_transpose_conv_bias, {1: transposed_to_hwio}),
    "AVERAGE_POOL_2D": Rule(_average_pool), "MAX_POOL_2D": Rule(_max_pool),
    "RESIZE_BILINEAR": Rule(_resize_bilinear), "RESIZE_NEAREST_NEIGHBOR": Rule(_resize_nearest),
}
if hasattr(tflite_rules, "RULES"):      # this module was imported first: see tflite_rules
    tflite_rules.RULES.update(SPATIAL)
