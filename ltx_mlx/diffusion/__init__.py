"""Diffusion pieces in token space (B, T, C): schedules, noise, steps, samplers and guidance."""

from .guiders import (
    GuidancePass,
    MultiModalGuider,
    MultiModalGuiderFactory,
    MultiModalGuiderParams,
    combine_guidance,
    guidance_passes,
    guided_denoising_fn,
    simple_denoising_fn,
)
from .noise import GaussianNoiser, NoiseStream, add_noise, standardize_noise
from ..models.perturbations import Perturbation, PerturbationType, is_perturbed
from .samplers import euler_denoising_loop, gradient_estimating_euler_denoising_loop, res2s_denoising_loop
from .schedulers import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES, LTX2Scheduler
from .steps import euler_step, post_process_latent

__all__ = [
    "DISTILLED_SIGMA_VALUES", "GaussianNoiser", "GuidancePass", "LTX2Scheduler", "MultiModalGuider",
    "MultiModalGuiderFactory", "MultiModalGuiderParams", "NoiseStream", "Perturbation", "PerturbationType",
    "STAGE_2_DISTILLED_SIGMA_VALUES", "add_noise", "combine_guidance", "euler_denoising_loop", "euler_step",
    "gradient_estimating_euler_denoising_loop", "guidance_passes", "guided_denoising_fn", "is_perturbed",
    "post_process_latent", "res2s_denoising_loop", "simple_denoising_fn", "standardize_noise",
]
