"""Rotary position embeddings of the LTX-2 transformer.

Positions are `[start, end)` bounds per axis, shaped `(B, n_axes, T, 2)` (video: time in seconds, height
and width in pixels; audio: seconds). The angle of frequency k on axis a is `ω_k · (2·p_a/max_pos_a − 1)`,
laid out frequency-major / axis-minor. Two layouts pair the channels of q/k:
`split` (per head, first half with second half; the padding sits at the front of the dim/2 vector, so it
lands in the first head) and `interleaved` (neighbouring channels over the whole inner dim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .activations import maybe_compile

ROPE_TYPES = ("interleaved", "split")


def frequency_grid(theta: float, n_axes: int, dim: int, double_precision: bool) -> mx.array:
    """ω_k = θ^(k/(F−1)) · π/2 for k < F = dim // (2·n_axes), as float32."""
    F = dim // (2 * n_axes)
    if double_precision:
        grid = np.power(theta, np.linspace(0.0, 1.0, F, dtype=np.float64)) * math.pi / 2
        return mx.array(grid.astype(np.float32))
    # float32 grid as torch builds it: linspace from both ends (float32 step, products rounded once), then
    # θ^t and ·π/2 in float32. torch's own pow is within an ulp of this, varying with the CPU's vector units.
    # A single frequency is linspace(0, 1, 1) = [0], i.e. ω = π/2 (counting back from the end would give θ·π/2).
    step = np.float32(1.0) / np.float32(max(F - 1, 1))
    k = np.arange(F)
    t = np.where(k < max(F // 2, 1), k * np.float64(step), 1.0 - (F - 1 - k) * np.float64(step)).astype(np.float32)
    power = np.power(np.float64(np.float32(theta)), t.astype(np.float64)).astype(np.float32)
    return mx.array(power) * math.pi / 2


def _round_to(x: mx.array, dtype: mx.Dtype) -> mx.array:
    return x if dtype == mx.float32 else x.astype(dtype)


def rope_angles(positions: mx.array, grid: mx.array, max_pos, use_middle: bool = True) -> mx.array:
    """Angles `(B, T, F·n_axes)` in float32.

    Low-precision positions keep the reference's arithmetic: each step (middle point, /max_pos, 2f−1) is
    computed in float32 and rounded back to the positions' dtype, as torch does for bf16 tensors.
    """
    dtype = positions.dtype
    if positions.ndim != 4 and use_middle:
        raise ValueError(f"positions must be (B, n_axes, T, 2) [start, end) bounds, got shape {positions.shape}")
    if positions.shape[1] != len(max_pos):
        raise ValueError(f"positions have {positions.shape[1]} axes but max_pos has {len(max_pos)} entries")
    f32 = positions.astype(mx.float32)
    if use_middle:
        p = _round_to(_round_to(f32[..., 0] + f32[..., 1], dtype).astype(mx.float32) / 2.0, dtype)
    else:
        p = f32[..., 0] if positions.ndim == 4 else f32
    p = p.astype(mx.float32)
    frac = mx.stack([_round_to(p[:, a] / float(m), dtype) for a, m in enumerate(max_pos)], axis=-1)
    frac = _round_to(_round_to(frac.astype(mx.float32) * 2, dtype).astype(mx.float32) - 1, dtype)
    angles = grid[None, None, :, None] * frac.astype(mx.float32)[:, :, None, :]  # (B, T, F, n)
    return angles.reshape(*angles.shape[:2], -1)


@dataclass
class RopeTable:
    """cos/sin for q/k of shape (B, T, dim): `x·cos + swap(x)·sin`, with `sin` carrying the pair's sign."""

    cos: mx.array  # split: (B, T, G, 1, d); interleaved: (B, T, dim/2, 1)
    sin: mx.array  # split: (B, T, G, 2, d) = [−s, s]; interleaved: (B, T, dim/2, 2) = [−s, s]
    rope_type: str

    def astype(self, dtype: mx.Dtype) -> "RopeTable":
        return RopeTable(self.cos.astype(dtype), self.sin.astype(dtype), self.rope_type)


def rope_table(positions: mx.array, dim: int, theta: float, max_pos, heads: int, rope_type: str,
               double_precision: bool, use_middle: bool = True, dtype: mx.Dtype = mx.float32) -> RopeTable:
    """The reference's `precompute_freqs_cis`, in a layout ready for `apply_rope`."""
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_type must be one of {ROPE_TYPES}, got {rope_type!r}")
    n = positions.shape[1]
    angles = rope_angles(positions, frequency_grid(theta, n, dim, double_precision), max_pos, use_middle)
    B, T, N = angles.shape
    pad = dim // 2 - N if rope_type == "split" else (dim % (2 * n)) // 2
    cos, sin = mx.cos(angles), mx.sin(angles)
    if pad:
        cos = mx.concatenate([mx.ones((B, T, pad)), cos], axis=-1)
        sin = mx.concatenate([mx.zeros((B, T, pad)), sin], axis=-1)
    if rope_type == "split":
        if (dim // 2) % heads:
            raise ValueError(f"split RoPE needs dim/2 ({dim // 2}) divisible by the head count ({heads})")
        cos = cos.reshape(B, T, heads, 1, -1)
        sin = sin.reshape(B, T, heads, 1, -1)
        signed = mx.concatenate([-sin, sin], axis=3)
    else:
        cos = cos[..., None]
        signed = mx.stack([-sin, sin], axis=-1)
    return RopeTable(cos.astype(dtype), signed.astype(dtype), rope_type)


@maybe_compile
def _rotate(x, swapped, cos, sin):
    return x * cos + swapped * sin


def apply_rope(x: mx.array, table: RopeTable) -> mx.array:
    """Rotate q or k of shape (B, T, dim)."""
    B, T, D = x.shape
    if table.rope_type == "split":
        G, d = table.sin.shape[2], table.sin.shape[4]
        x = x.reshape(B, T, G, 2, d)
        swapped = x[:, :, :, ::-1]
    else:
        x = x.reshape(B, T, D // 2, 2)
        swapped = x[..., ::-1]
    return _rotate(x, swapped, table.cos, table.sin).reshape(B, T, D)
