"""Elementwise pieces shared by the models, fused into one pass where MLX allows."""

import math
import os

import mlx.core as mx


def maybe_compile(fn):
    """Fuse an elementwise chain into one pass (MLX's CPU runs each op as its own single-threaded pass).
    LTX_MLX_COMPILE=0 turns it off; the parity tests hold either way."""
    return mx.compile(fn, shapeless=True) if os.environ.get("LTX_MLX_COMPILE", "1") != "0" else fn


@maybe_compile
def gelu_tanh(x: mx.array) -> mx.array:
    """GELU, tanh approximation, computed in float32 and rounded once, as torch's `gelu(approximate="tanh")`
    does for bf16 inputs (op-by-op bf16 rounding moves ~40% of the values by an ulp)."""
    h = x.astype(mx.float32)
    return (0.5 * h * (1 + mx.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * (h * h * h))))).astype(x.dtype)
