"""Sigma schedules: the token-dependent shifted `LTX2Scheduler` and the distilled tables.

The arithmetic replays the reference's float32 tensor ops bit for bit (torch's fused linspace, `a / t`
evaluated as `reciprocal(t) * a`), so schedules match the reference exactly, not just closely.
"""

import math

import mlx.core as mx
import numpy as np

BASE_SHIFT_ANCHOR = 1024
MAX_SHIFT_ANCHOR = 4096

# Distilled checkpoints were trained on these exact noise levels (8 steps, then 3 for stage 2).
DISTILLED_SIGMA_VALUES = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)
STAGE_2_DISTILLED_SIGMA_VALUES = (0.909375, 0.725, 0.421875, 0.0)

_f32 = np.float32


def _linspace_1_to_0(n: int) -> np.ndarray:
    # torch.linspace(1, 0, n + 1) in float32: float32 step, each value one fused multiply-add from the nearer end.
    count = n + 1
    step = float(_f32(-1.0) / _f32(n))
    half = count // 2
    values = [1.0 + step * i if i < half else -step * (count - 1 - i) for i in range(count)]
    return np.array(values, dtype=np.float64).astype(np.float32)


def _token_count(latent) -> int:
    shape = tuple(latent) if isinstance(latent, (tuple, list)) else tuple(latent.shape)
    if len(shape) < 3:
        raise ValueError(
            f"LTX2Scheduler needs an unpatchified latent (B, C, F, H, W) or its shape to count tokens, got shape "
            f"{shape}; pass the video latent shape, or no latent for the pipelines' 4096-token default."
        )
    return math.prod(shape[2:])


class LTX2Scheduler:
    """Shifted schedule `e^s / (e^s + 1/t - 1)` whose shift grows with the token count, stretched to `terminal`."""

    def execute(
        self,
        steps: int,
        latent=None,
        max_shift: float = 2.05,
        base_shift: float = 0.95,
        stretch: bool = True,
        terminal: float = 0.1,
        default_number_of_tokens: int = MAX_SHIFT_ANCHOR,
    ) -> mx.array:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}.")
        tokens = _token_count(latent) if latent is not None else default_number_of_tokens
        slope = (max_shift - base_shift) / (MAX_SHIFT_ANCHOR - BASE_SHIFT_ANCHOR)
        shift = tokens * slope + (base_shift - slope * BASE_SHIFT_ANCHOR)
        exp_shift = _f32(math.exp(shift))

        t = _linspace_1_to_0(int(steps))
        nonzero = t != 0
        with np.errstate(divide="ignore"):
            odds = _f32(1.0) / t - _f32(1.0)
            shifted = (_f32(1.0) / (odds + exp_shift)) * exp_shift
        sigmas = np.where(nonzero, shifted, _f32(0.0)).astype(np.float32)

        if stretch:
            sigmas = _stretch(sigmas, terminal)
        return mx.array(sigmas)


def _stretch(sigmas: np.ndarray, terminal: float) -> np.ndarray:
    nonzero = sigmas != 0
    one_minus = _f32(1.0) - sigmas[nonzero]
    scale = one_minus[-1] / _f32(1.0 - terminal)
    if scale == 0 or not np.isfinite(scale):
        raise ValueError(
            f"Cannot stretch a {len(sigmas) - 1}-step schedule to terminal {terminal}: its last non-zero sigma is "
            "already 1. Use more steps or stretch=False."
        )
    out = sigmas.copy()
    out[nonzero] = _f32(1.0) - one_minus / scale
    return out
