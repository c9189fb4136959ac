"""Denoising loops over a joint (video, audio) latent state, as generators.

States are dataclasses with `latent`, `denoise_mask` and `clean_latent` in token space (B, T, C);
they are updated with `dataclasses.replace`. `denoise_fn(video_state, audio_state, sigmas, step_index)`
returns `(x0_video, x0_audio)` (see `guiders.guided_denoising_fn`). Each loop yields
`(video_state, audio_state)` once per schedule step — `len(sigmas) - 1` times — so the caller can
`mx.eval` per step under tqdm; the last yield is the final state.
"""

import math
from dataclasses import replace

import mlx.core as mx
import numpy as np

from .noise import as_noise_source, standardize_noise
from .steps import euler_step, post_process_latent, res2s_coefficients, res2s_sde_step, to_denoised, to_velocity

RES2S_FINAL_SIGMA = 0.0011
# The reference seeds its res_2s noise generators with fixed values, not the user seed.
RES2S_STEP_SEED = -1
RES2S_SUBSTEP_SEED_OFFSET = 10000


def _schedule(sigmas) -> np.ndarray:
    s = np.array(sigmas, dtype=np.float32).reshape(-1)
    if s.size < 2:
        raise ValueError(f"A sigma schedule needs at least two values (start and end), got {s.size}.")
    return s


def _denoise_both(denoise_fn, video_state, audio_state, sigmas, step_index):
    x0 = denoise_fn(video_state, audio_state, sigmas, step_index)
    for name, x, state in zip(("video", "audio"), x0, (video_state, audio_state)):
        if tuple(x.shape) != tuple(state.latent.shape):
            raise ValueError(
                f"denoise_fn returned a {name} x0 of shape {tuple(x.shape)} for a latent of shape "
                f"{tuple(state.latent.shape)}; it must return (x0_video, x0_audio) shaped like the latents."
            )
    return tuple(post_process_latent(x, s.denoise_mask, s.clean_latent) for x, s in zip(x0, (video_state, audio_state)))


def euler_denoising_loop(sigmas, video_state, audio_state, denoise_fn, step=euler_step):
    """First-order Euler over `sigmas`; yields after every step."""
    sigmas = _schedule(sigmas)
    for i in range(len(sigmas) - 1):
        x0_v, x0_a = _denoise_both(denoise_fn, video_state, audio_state, sigmas, i)
        video_state = replace(video_state, latent=step(video_state.latent, x0_v, sigmas, i))
        audio_state = replace(audio_state, latent=step(audio_state.latent, x0_a, sigmas, i))
        yield video_state, audio_state


def gradient_estimating_euler_denoising_loop(sigmas, video_state, audio_state, denoise_fn, ge_gamma=2.0):
    """Euler with the velocity extrapolated γ·(v − v_prev) + v_prev; the step to σ = 0 returns x0 directly."""
    sigmas = _schedule(sigmas)
    previous = [None, None]

    def corrected(i, m, x, x0):
        velocity = to_velocity(x, sigmas[i], x0)
        if previous[m] is not None:
            x0 = to_denoised(x, ge_gamma * (velocity - previous[m]) + previous[m], sigmas[i])
        previous[m] = velocity
        return x0

    for i in range(len(sigmas) - 1):
        x0_v, x0_a = _denoise_both(denoise_fn, video_state, audio_state, sigmas, i)
        if sigmas[i + 1] == 0:
            yield replace(video_state, latent=x0_v), replace(audio_state, latent=x0_a)
            return
        x0_v = corrected(i, 0, video_state.latent, x0_v)
        x0_a = corrected(i, 1, audio_state.latent, x0_a)
        video_state = replace(video_state, latent=euler_step(video_state.latent, x0_v, sigmas, i))
        audio_state = replace(audio_state, latent=euler_step(audio_state.latent, x0_a, sigmas, i))
        yield video_state, audio_state


def _sde_inject(state, sample, target, sigma, sigma_next, draw, precision):
    noise = standardize_noise(draw(state.latent.shape, mx.float32))
    x = res2s_sde_step(sample, target, sigma, sigma_next, noise, precision)
    return post_process_latent(x, state.denoise_mask, state.clean_latent)


def _res2s_schedule(sigmas: np.ndarray) -> np.ndarray:
    # A last step to exactly 0 is replaced by a step to 0.0011 and a final plain denoise.
    if sigmas[-1] == 0:
        return np.concatenate([sigmas[:-1], np.array([RES2S_FINAL_SIGMA, 0.0], dtype=np.float32)])
    return sigmas


def res2s_denoising_loop(
    sigmas,
    video_state,
    audio_state,
    denoise_fn,
    *,
    step_noise=None,
    substep_noise=None,
    noise_seed: int = RES2S_STEP_SEED,
    noise_seed_substep: int | None = None,
    bongmath: bool = True,
    bongmath_max_iter: int = 100,
    model_dtype=None,
):
    """res_2s: a 2-stage exponential Runge-Kutta step with SDE re-noising at the midpoint and the end.

    Noise: `step_noise` / `substep_noise` are seeds, MLX keys, callables `(shape, dtype) -> array` or
    sequences of raw normal arrays (drawn per step: substep video, substep audio, step video, step
    audio; each is standardised here). By default they are MLX streams seeded like the reference's
    generators: `noise_seed` (−1, wrapped to 2**64 − 1) and `noise_seed + 10000` (9999) — the reference's
    values, not the user seed; MLX draws differ from torch's, so inject noise to reproduce it exactly.
    Only the reference's legacy post-processing mode (its default) is implemented. Anchors and updates
    are float32 (the reference uses float64; measured drift ~5e-7 relative on a 4096x128 latent and
    ~8e-7 on 6144x128 over 15 steps); latents are handed to the model in `model_dtype` (default: the
    video latent's dtype). As in the reference, the midpoint is evaluated as
    `denoise_fn(..., sigmas=[sub_sigma] (float64), step_index=0)`, so skip-step guidance never skips it.
    """
    sigmas = _schedule(sigmas)
    n_steps = len(sigmas) - 1
    model_dtype = model_dtype or video_state.latent.dtype
    if noise_seed_substep is None:
        noise_seed_substep = noise_seed + RES2S_SUBSTEP_SEED_OFFSET
    draws = (
        as_noise_source(noise_seed_substep if substep_noise is None else substep_noise),
        as_noise_source(noise_seed if step_noise is None else step_noise),
    )
    bong_iters = bongmath_max_iter if bongmath else 0
    ext = _res2s_schedule(sigmas)
    states = (video_state, audio_state)
    for i in range(n_steps):
        nexts = _res2s_step(states, denoise_fn, ext, i, draws, bong_iters, model_dtype)
        states = tuple(replace(s, latent=x.astype(model_dtype)) for s, x in zip(states, nexts))
        if i == n_steps - 1 and sigmas[-1] == 0:
            x0 = _denoise_both(denoise_fn, *states, ext, n_steps)
            states = tuple(replace(s, latent=x.astype(model_dtype)) for s, x in zip(states, x0))
        yield states


def _res2s_step(states, denoise_fn, ext, i, draws, bong_iters, model_dtype):
    """One res_2s step from ext[i] to ext[i+1]; returns the float32 latents (video, audio)."""
    substep_draw, step_draw = draws
    sigma, sigma_next = float(ext[i]), float(ext[i + 1])
    h = -math.log(sigma_next / sigma)
    a21, b1, b2 = res2s_coefficients(h)
    sub_sigma = math.sqrt(sigma * sigma_next)

    # Stage 1 at sigma, a midpoint step to sub_sigma, then SDE re-noising of the midpoint.
    anchors = [s.latent.astype(mx.float32) for s in states]
    x0_1 = [x.astype(mx.float32) for x in _denoise_both(denoise_fn, *states, ext, i)]
    eps_1 = [x0 - xa for x0, xa in zip(x0_1, anchors)]
    mids = [
        _sde_inject(s, xa, xa + h * a21 * e, sigma, sub_sigma, substep_draw, np.float64)
        for s, xa, e in zip(states, anchors, eps_1)
    ]
    # "Bong" refinement: move the anchor so that the noised midpoint is consistent with it.
    if h < 0.5 and sigma > 0.03:
        for _ in range(bong_iters):
            anchors = [xm - h * a21 * e for xm, e in zip(mids, eps_1)]
            eps_1 = [x0 - xa for x0, xa in zip(x0_1, anchors)]

    # Stage 2 at the midpoint, the combined update, then SDE re-noising at sigma_next.
    mid_states = [replace(s, latent=xm.astype(model_dtype)) for s, xm in zip(states, mids)]
    x0_2 = _denoise_both(denoise_fn, *mid_states, np.array([sub_sigma]), 0)
    nexts = [xa + h * (b1 * e1 + b2 * (x0.astype(mx.float32) - xa)) for xa, e1, x0 in zip(anchors, eps_1, x0_2)]
    return [
        _sde_inject(s, xa, xn, ext[i], ext[i + 1], step_draw, np.float32)
        for s, xa, xn in zip(states, anchors, nexts)
    ]
