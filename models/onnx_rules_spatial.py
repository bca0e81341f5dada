"""The importer's rules for ops with a spatial window, computed channels-last (``RULES``):
Conv, ConvTranspose, BatchNormalization, pools and Resize.

Why channels-last: pooling and convolution are NHWC in the rest of the project, and an
NHWC graph exports to ONNX without Transposes. Kernels are brought to HWIO once at import
(``Rule.kernels``); a ConvTranspose kernel is flipped there too, so no flip sits in the graph
to hide its channel groups. Nearest Resize is a broadcast and reshape (an integer factor) or
a strided slice, never a gather; linear Resize is a static interpolation matrix per axis.
"""
import math
from typing import List, Sequence, Tuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from models.onnx_rules import Node, Rule, static_floats, static_ints, window_max, window_mean

_SPECS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
          3: ("NDHWC", "DHWIO", "NDHWC")}


def _conv_kernel(w: np.ndarray, node: Node) -> np.ndarray:
    """ONNX (O, I/g, *K) -> (*K, I/g, O)."""
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def _conv_transpose_kernel(w: np.ndarray, node: Node) -> np.ndarray:
    """ONNX (I, O/g, *K) -> the flipped (*K, I/g, O) of the equivalent dilated conv."""
    group, nd = node.attr("group", 1), w.ndim - 2
    c_in, c_out_g, kernel = w.shape[0], w.shape[1], w.shape[2:]
    w = w.reshape(group, c_in // group, c_out_g, *kernel)
    w = np.flip(w, axis=tuple(range(3, 3 + nd)))
    w = np.transpose(w, (*range(3, 3 + nd), 1, 0, 2))
    return np.ascontiguousarray(w.reshape(*kernel, c_in // group, group * c_out_g))


def _same_pads(size, kernel, stride, dilation, upper: bool) -> Tuple[int, int]:
    effective = dilation * (kernel - 1) + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def _window_pads(node: Node, sizes, kernel, strides, dilations) -> List[Tuple[int, int]]:
    """Begin/end padding per spatial axis from ``pads`` or ``auto_pad``."""
    nd, auto = len(kernel), node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return [_same_pads(s, k, st, d, auto == "SAME_UPPER")
                for s, k, st, d in zip(sizes, kernel, strides, dilations)]
    if auto == "VALID":
        return [(0, 0)] * nd
    pads = node.attr("pads") or [0] * (2 * nd)
    return [(pads[i], pads[i + nd]) for i in range(nd)]


def _strides_dilations(node: Node, nd: int):
    """A window op's ``strides`` and ``dilations``, 1 on each of its ``nd`` axes if absent."""
    return node.attr("strides") or [1] * nd, node.attr("dilations") or [1] * nd


def _dilated_conv(node: Node, x, w, b, pads_of, transposed: bool):
    """Conv or ConvTranspose as one lax conv: a ConvTranspose is the conv of its input
    dilated by the strides (``transposed``), with the padding ``pads_of`` gives."""
    nd = x.ndim - 2
    strides, dilations = _strides_dilations(node, nd)
    pads = pads_of(node, x.shape[1:-1], w.shape[:nd], strides, dilations)
    window_strides, lhs_dilation = (((1,) * nd, tuple(strides)) if transposed
                                    else (tuple(strides), None))
    y = lax.conv_general_dilated(x, w, window_strides, pads, lhs_dilation=lhs_dilation,
                                 rhs_dilation=tuple(dilations), dimension_numbers=_SPECS[nd],
                                 feature_group_count=node.attr("group", 1))
    return y if b is None else y + b


def _conv(node: Node, x, w, b=None):
    return _dilated_conv(node, x, w, b, _window_pads, transposed=False)


def _conv_transpose_pads(node: Node, sizes, kernel, strides, dilations):
    """lax padding of the dilated conv that computes ConvTranspose."""
    nd = len(kernel)
    effective = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    extra = node.attr("output_padding") or [0] * nd
    auto, out_shape = node.attr("auto_pad", "NOTSET"), node.attr("output_shape")
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        outs = out_shape[-nd:] if out_shape else [s * st for s, st in zip(sizes, strides)]
        pads = []
        for s, st, e, o, out in zip(sizes, strides, effective, extra, outs):
            total = st * (s - 1) + o + e - out
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
    elif auto == "VALID":
        pads = [(0, 0)] * nd
    else:
        flat = node.attr("pads") or [0] * (2 * nd)
        pads = [(flat[i], flat[i + nd]) for i in range(nd)]
    return [(e - 1 - b, e - 1 - a + o) for e, (b, a), o in zip(effective, pads, extra)]


def _conv_transpose(node: Node, x, w, b=None):
    return _dilated_conv(node, x, w, b, _conv_transpose_pads, transposed=True)


def _batch_norm(node: Node, x, scale, bias, mean, var):
    """Inference BatchNormalization: sub, rsqrt, mul, add (what pruning's rules expect)."""
    return (x - mean) * (scale * lax.rsqrt(var + node.attr("epsilon", 1e-5))) + bias


def _pool_geometry(node: Node, x):
    nd = x.ndim - 2
    kernel = node.attr("kernel_shape")
    strides, dilations = _strides_dilations(node, nd)
    sizes = x.shape[1:-1]
    pads = _window_pads(node, sizes, kernel, strides, dilations)
    if node.attr("ceil_mode", 0):
        pads = [_ceil_pads(s, k, st, d, p)
                for s, k, st, d, p in zip(sizes, kernel, strides, dilations, pads)]
    return kernel, strides, dilations, pads


def _ceil_pads(size, kernel, stride, dilation, pads):
    """End padding that makes the output size round up (the last window starts inside)."""
    effective = dilation * (kernel - 1) + 1
    span = size + pads[0] + pads[1] - effective
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pads[0]:
        out -= 1
    return pads[0], max(pads[1], (out - 1) * stride + effective - size - pads[0])


def _max_pool(node: Node, x):
    if len(node.outputs) > 1 and node.outputs[1]:
        raise NotImplementedError(f"{node.where()}: MaxPool's indices output is not supported")
    kernel, strides, dilations, pads = _pool_geometry(node, x)
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *kernel, 1), (1, *strides, 1),
                             ((0, 0), *pads, (0, 0)), window_dilation=(1, *dilations, 1))


def _window_counts(size, kernel, stride, dilation, pads, lo, hi) -> np.ndarray:
    """Per output position: how many window taps fall in [lo, hi) (input coordinates)."""
    effective = dilation * (kernel - 1) + 1
    out = (size + pads[0] + pads[1] - effective) // stride + 1
    taps = np.arange(out)[:, None] * stride - pads[0] + np.arange(kernel)[None] * dilation
    return ((taps >= lo) & (taps < hi)).sum(axis=1)


def _average_pool(node: Node, x):
    kernel, strides, dilations, pads = _pool_geometry(node, x)
    summed = lax.reduce_window(x, 0.0, lax.add, (1, *kernel, 1), (1, *strides, 1),
                               ((0, 0), *pads, (0, 0)), window_dilation=(1, *dilations, 1))
    include = node.attr("count_include_pad", 0)
    own = _window_pads(node, x.shape[1:-1], kernel, strides, dilations)
    per_axis = [_window_counts(s, k, st, d, p, -o[0] if include else 0,
                               s + (o[1] if include else 0))
                for s, k, st, d, p, o in zip(x.shape[1:-1], kernel, strides, dilations,
                                             pads, own)]
    counts = per_axis[0]
    for c in per_axis[1:]:
        counts = np.multiply.outer(counts, c)
    if np.all(counts == counts.reshape(-1)[0]):
        return summed / float(counts.reshape(-1)[0])
    return summed / counts.astype(np.float32)[None, ..., None]


def _global_pool(window):
    """Global pooling as a window over the whole image (see ``onnx_rules._whole_window``)."""
    return Rule(lambda node, x: window(x, tuple(range(1, x.ndim - 1))), layout="channels_last")


# -- Resize -------------------------------------------------------------------------------

_COORDINATES = {
    "half_pixel": lambda i, n_in, n_out, s: (i + 0.5) / s - 0.5,
    "pytorch_half_pixel": lambda i, n_in, n_out, s: (
        (i + 0.5) / s - 0.5 if n_out > 1 else 0.0 * i),
    "align_corners": lambda i, n_in, n_out, s: (
        i * np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else 0.0 * i),
    "asymmetric": lambda i, n_in, n_out, s: i / s,
    "tf_half_pixel_for_nn": lambda i, n_in, n_out, s: (i + 0.5) / s,
}
_NEAREST = {"round_prefer_floor": lambda c: np.ceil(c - 0.5),
            "round_prefer_ceil": lambda c: np.floor(c + 0.5),
            "floor": np.floor, "ceil": np.ceil}


def _resize_geometry(node: Node, x, roi, scales, sizes):
    """Output sizes and scales of the spatial axes (batch and channels must not change)."""
    if node.opset < 11:                     # Upsample 7-8: scales is an attribute
        scales = roi if roi is not None else np.asarray(node.attr("scales"), np.float32)
    in_sizes = x.shape[1:-1]
    if sizes is not None and np.size(sizes):
        full = static_ints(sizes, "sizes", node)
        if full[1] != x.shape[-1]:
            raise NotImplementedError(f"{node.where()}: only spatial axes can be resized")
        outs = [int(v) for v in full[2:]]
        return outs, [np.float32(o) / np.float32(i) for o, i in zip(outs, in_sizes)]
    full = static_floats(scales, "scales", node)
    if full[0] != 1.0 or full[1] != 1.0:
        raise NotImplementedError(f"{node.where()}: only spatial axes can be resized "
                                  f"(scales {full})")
    return ([int(math.floor(i * s)) for i, s in zip(in_sizes, full[2:])],
            [np.float32(s) for s in full[2:]])


def _resize(node: Node, x, roi=None, scales=None, sizes=None):
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear") or node.attr("antialias", 0) or node.attr("axes"):
        raise NotImplementedError(
            f"{node.where()}: Resize mode {mode!r} (antialias {node.attr('antialias', 0)}, "
            f"axes {node.attr('axes')}) is not supported; nearest and (bi)linear are")
    outs, factors = _resize_geometry(node, x, roi, scales, sizes)
    transform = "asymmetric" if node.opset < 11 else node.attr(
        "coordinate_transformation_mode", "half_pixel")
    if transform not in _COORDINATES:
        raise NotImplementedError(f"{node.where()}: coordinate_transformation_mode "
                                  f"{transform!r}; supported: {sorted(_COORDINATES)}")
    coords = [_COORDINATES[transform](np.arange(o, dtype=np.float32), n, o, s)
              for n, o, s in zip(x.shape[1:-1], outs, factors)]
    if mode == "linear":
        return _interpolate(x, [_linear_matrix(c, n) for c, n in zip(coords, x.shape[1:-1])])
    rounding = "floor" if node.opset < 11 else node.attr("nearest_mode", "round_prefer_floor")
    indices = [np.clip(_NEAREST[rounding](c), 0, n - 1).astype(np.int64)
               for c, n in zip(coords, x.shape[1:-1])]
    return _select(x, indices)


def _select(x, indices: Sequence[np.ndarray]):
    """x[:, i0][:, :, i1]... for static per-axis indices, without a gather: a broadcast and
    reshape where each index repeats (integer upsampling), a strided slice where the indices
    step evenly, an exact one-hot matrix product otherwise."""
    factors = [_repeat_factor(ix, x.shape[1 + a]) for a, ix in enumerate(indices)]
    if all(f is not None for f in factors):
        return _repeat(x, factors)
    for axis, ix in enumerate(indices):
        if np.array_equal(ix, np.arange(x.shape[1 + axis])):
            continue
        step = ix[1] - ix[0] if ix.size > 1 else 1
        if step > 0 and np.array_equal(ix, ix[0] + step * np.arange(ix.size)):
            index = [slice(None)] * x.ndim
            index[1 + axis] = slice(int(ix[0]), int(ix[-1]) + 1, int(step))
            x = x[tuple(index)]
        elif _repeat_factor(ix, x.shape[1 + axis]) is not None:
            x = _repeat(x, [_repeat_factor(ix, x.shape[1 + axis]) if a == axis else 1
                            for a in range(len(indices))])
        else:
            one_hot = np.zeros((ix.size, x.shape[1 + axis]), np.float32)
            one_hot[np.arange(ix.size), ix] = 1.0
            x = _interpolate_axis(x, axis, one_hot)
    return x


def _repeat_factor(ix: np.ndarray, size: int):
    if ix.size % size:
        return None
    factor = ix.size // size
    return factor if np.array_equal(ix, np.repeat(np.arange(size), factor)) else None


def _repeat(x, factors: Sequence[int]):
    """Nearest upsampling by integer factors: reshape, broadcast, reshape."""
    if all(f == 1 for f in factors):
        return x
    n, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    expanded = [d for s in spatial for d in (s, 1)]
    y = jnp.reshape(x, (n, *expanded, c))
    y = jnp.broadcast_to(y, (n, *[d for s, f in zip(spatial, factors) for d in (s, f)], c))
    return jnp.reshape(y, (n, *[s * f for s, f in zip(spatial, factors)], c))


def _linear_matrix(coords: np.ndarray, size: int) -> np.ndarray:
    """(out, in) weights of linear interpolation at ``coords`` (clamped to the input)."""
    c = np.clip(coords, 0, size - 1)
    low = np.floor(c).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    frac = (c - low).astype(np.float32)
    m = np.zeros((coords.size, size), np.float32)
    np.add.at(m, (np.arange(coords.size), low), 1.0 - frac)
    np.add.at(m, (np.arange(coords.size), high), frac)
    return m


def _interpolate(x, matrices: Sequence[np.ndarray]):
    for axis, m in enumerate(matrices):
        if not (m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(m.shape[0]))):
            x = _interpolate_axis(x, axis, m)
    return x


def _interpolate_axis(x, axis: int, matrix: np.ndarray):
    """Applies an (out, in) matrix along spatial axis ``axis`` (a static dot_general)."""
    letters = "abcdefgh"[:x.ndim]
    source = letters[1 + axis]
    target = letters.replace(source, "z")
    return jnp.einsum(f"{letters},z{source}->{target}", x, matrix)


RULES = {
    "Conv": Rule(_conv, layout="channels_last", kernels={1: _conv_kernel}),
    "ConvTranspose": Rule(_conv_transpose, layout="channels_last",
                          kernels={1: _conv_transpose_kernel}),
    "BatchNormalization": Rule(_batch_norm, layout="channels_last"),
    "MaxPool": Rule(_max_pool, layout="channels_last"),
    "AveragePool": Rule(_average_pool, layout="channels_last"),
    "GlobalAveragePool": _global_pool(window_mean),
    "GlobalMaxPool": _global_pool(window_max),
    "Resize": Rule(_resize, layout="channels_last", static=frozenset({1, 2, 3})),
    "Upsample": Rule(_resize, layout="channels_last", static=frozenset({1})),
}
