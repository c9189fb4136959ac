"""Reductions accurate enough for whole-latent statistics.

A plain float32 `mx.sum` over a full-size latent (millions of elements) drifts by ~1e-4 relative on
MLX's CPU backend, while torch sums hierarchically; summing in blocks of about sqrt(n) and then
summing the partial sums keeps the error near float32 round-off.
"""

import math

import mlx.core as mx


def _axes(x: mx.array, axis) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % x.ndim for a in axis))


def block_sum(x: mx.array, axis=None, keepdims: bool = False) -> mx.array:
    axes = _axes(x, axis)
    kept = [a for a in range(x.ndim) if a not in axes]
    n = math.prod(x.shape[a] for a in axes)
    flat = x.transpose(kept + list(axes)).reshape([x.shape[a] for a in kept] + [n])
    block = 1 << max(0, math.ceil(math.log2(math.sqrt(n))))
    pad = -n % block
    if pad:
        flat = mx.pad(flat, [(0, 0)] * len(kept) + [(0, pad)])
    total = flat.reshape(list(flat.shape[:-1]) + [-1, block]).sum(-1).sum(-1)
    if keepdims:
        total = total.reshape([1 if a in axes else x.shape[a] for a in range(x.ndim)])
    return total


def mean(x: mx.array, axis=None, keepdims: bool = False) -> mx.array:
    n = math.prod(x.shape[a] for a in _axes(x, axis))
    return block_sum(x, axis, keepdims) / n


def centred_std(x: mx.array, axis=None, keepdims: bool = False) -> tuple[mx.array, mx.array]:
    """(x − mean, unbiased std), two-pass, as torch's `x.std()`."""
    n = math.prod(x.shape[a] for a in _axes(x, axis))
    centred = x - mean(x, axis, keepdims=True)
    var = block_sum(centred * centred, axis, keepdims=True) / (n - 1)
    std = mx.sqrt(var)
    return centred, std if keepdims else std.reshape([s for a, s in enumerate(x.shape) if a not in _axes(x, axis)])
