"""Single diffusion steps on token-space latents: the Euler step and res_2s's pieces.

Scalars (sigmas, step coefficients) are evaluated in the precision the reference uses for them
(numpy float32 or Python float64); tensors are float32 (the reference's res_2s tensors are float64).
"""

import math

import mlx.core as mx
import numpy as np


def post_process_latent(denoised: mx.array, denoise_mask: mx.array, clean: mx.array) -> mx.array:
    """Keep conditioned tokens: x0·mask + clean·(1 − mask), in float32, returned in x0's dtype."""
    mask = denoise_mask.astype(mx.float32)
    return (denoised * mask + clean.astype(mx.float32) * (1 - mask)).astype(denoised.dtype)


def to_velocity(sample: mx.array, sigma: float, denoised: mx.array) -> mx.array:
    """(x − x0)/σ in float32, rounded to the sample's dtype (bf16 in the pipelines)."""
    sigma = float(np.float32(sigma))
    if sigma == 0:
        raise ValueError("Sigma can't be 0.0 when converting to a velocity.")
    return ((sample.astype(mx.float32) - denoised.astype(mx.float32)) / sigma).astype(sample.dtype)


def to_denoised(sample: mx.array, velocity: mx.array, sigma: float) -> mx.array:
    sigma = float(np.float32(sigma))
    return (sample.astype(mx.float32) - velocity.astype(mx.float32) * sigma).astype(sample.dtype)


def euler_step(sample: mx.array, denoised: mx.array, sigmas, step_index: int) -> mx.array:
    """x + v·(σ_next − σ) with the velocity rounded to the sample's dtype; scalar σ for every token."""
    sigma, sigma_next = np.float32(sigmas[step_index]), np.float32(sigmas[step_index + 1])
    dt = float(sigma_next - sigma)
    velocity = to_velocity(sample, sigma, denoised)
    return (sample.astype(mx.float32) + velocity.astype(mx.float32) * dt).astype(sample.dtype)


def phi(j: int, neg_h: float) -> float:
    """φ_j(z) = (e^z − Σ_{k<j} z^k/k!) / z^j, with φ_j(0) = 1/j!."""
    if abs(neg_h) < 1e-10:
        return 1.0 / math.factorial(j)
    remainder = sum(neg_h**k / math.factorial(k) for k in range(j))
    return (math.exp(neg_h) - remainder) / neg_h**j


def res2s_coefficients(h: float, c2: float = 0.5) -> tuple[float, float, float]:
    """(a21, b1, b2) of the exponential 2-stage Runge-Kutta step of log-size h (float64)."""
    a21 = c2 * phi(1, -h * c2)
    b2 = phi(2, -h) / c2
    b1 = phi(1, -h) - b2
    return a21, b1, b2


def sde_coefficients(sigma_next, precision=np.float64):
    """(alpha_ratio, sigma_down, sigma_up) for variance-preserving re-noising with σ_up = σ_next/2.

    `precision` is the dtype the reference evaluates them in: float64 at the substep, float32 at the
    step (its schedule tensor is float32).
    """
    one, zero = precision(1.0), precision(0.0)
    sigma_next = precision(sigma_next)
    sigma_up = min(sigma_next * precision(0.5), sigma_next * precision(0.9999))
    residual = np.sqrt(max(sigma_next * sigma_next - sigma_up * sigma_up, zero))
    alpha_ratio = (one - sigma_next) + residual
    sigma_down = residual / alpha_ratio
    if np.isnan(sigma_down):
        sigma_down = sigma_next
    if np.isnan(alpha_ratio):
        alpha_ratio = one
    return alpha_ratio, sigma_down, sigma_up


def res2s_sde_step(sample, denoised, sigma, sigma_next, noise, precision=np.float64) -> mx.array:
    """Move from `sample` at σ towards `denoised` at σ_next, then re-inject `noise` (already standardised)."""
    sigma, sigma_next = precision(sigma), precision(sigma_next)
    alpha_ratio, sigma_down, sigma_up = sde_coefficients(sigma_next, precision)
    if sigma_up == 0 or sigma_next == 0:
        return denoised
    eps = (sample - denoised) / float(sigma - sigma_next)
    x0 = sample - float(sigma) * eps
    return float(alpha_ratio) * (x0 + float(sigma_down) * eps) + float(sigma_up) * noise
