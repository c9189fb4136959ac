"""Pipeline denoising stages against the reference's own helpers, float32 on CPU, from injected noise.

A tiny official LTX-2.3 checkpoint built from the reference is converted with convert.py and opened with
`ltx_mlx.load`; the reference transformer gets the same weights. Both sides run `denoise_audio_video`-style
stages from the same noise and random text contexts: the distilled pair of stages (simple denoising, the
distilled tables, stage 2 re-noised at 0.909375 from stage 1's latents) and a guided stage (CFG + STG +
modality isolation + rescale, with an image at frame 0 and a keyframe), and the HQ res_2s stage (guided, token-
shifted schedule, the reference's fixed-seed SDE noise replayed). Final video and audio latents must
agree within 1e-4 × max|ref|.
"""

import mlx.core as mx
import numpy as np
import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep, Res2sDiffusionStep
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams as RefGuiderParams
from ltx_core.components.guiders import create_multimodal_guider_factory
from ltx_core.components.schedulers import LTX2Scheduler as RefScheduler
from ltx_core.conditioning import VideoConditionByKeyframeIndex as RefKeyframe
from ltx_core.conditioning import VideoConditionByLatentIndex as RefLatentIndex
from ltx_core.types import VideoPixelShape
from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES
from ltx_pipelines.utils.helpers import (denoise_audio_video, multi_modal_guider_denoising_func,
                                         multi_modal_guider_factory_denoising_func, simple_denoising_func)
from ltx_pipelines.utils.samplers import euler_denoising_loop, res2s_audio_video_denoising_loop
from ltx_pipelines.utils.types import PipelineComponents

from ltx_mlx.conditioning import VideoConditionByKeyframeIndex, VideoConditionByLatentIndex
from ltx_mlx.diffusion import LTX2Scheduler
from ltx_mlx.models.transformer import X0Model
from ltx_mlx.pipelines.common import Generation, euler_loop, guided, res2s_loop, simple
from ltx_mlx.pipelines.settings import resolve_settings
from pipeline_fixtures import AUDIO_TOKEN_WIDTH, VIDEO_LATENT_CHANNELS
from pipeline_parity_fixtures import FPS, FRAMES, H, TOL, W, InjectedNoiser, as_noise, contexts, stage_noise
# The parity fixtures: the tiny dev model + reference transformer, and the reference's audio-shape patch.
from pipeline_parity_fixtures import _reference_setup, models  # noqa: F401
from reference import assert_parity


def generation(pipe, pipeline, noise, **kw):
    settings = resolve_settings(pipeline, pipe.model_version, 3, prompt="unused", height=H, width=W,
                                num_frames=FRAMES, frame_rate=FPS, noise=noise, **kw)
    return Generation(pipe, settings, progress=False)


def compare(what, ours, ref):
    video = np.array(ours[0]).transpose(0, 4, 1, 2, 3)  # channels-last -> (B, C, F, H, W)
    audio = np.array(ours[1]).transpose(0, 3, 1, 2)  # channels-last -> (B, C, T, M)
    ev = assert_parity(video, ref[0].latent, TOL, f"{what} video latent")
    ea = assert_parity(audio, ref[1].latent, TOL, f"{what} audio latent")
    print(f"{what}: video {ev:.2e}, audio {ea:.2e} (max|ref| {ref[0].latent.abs().max():.2f} / "
          f"{ref[1].latent.abs().max():.2f})")


def test_distilled_stages_match_the_reference(models):
    pipe, ref_model, cfg = models
    (rv, ra), ctx = contexts(cfg, 1)
    shape = VideoPixelShape(batch=1, frames=FRAMES, height=H, width=W, fps=FPS)
    components = PipelineComponents(dtype=torch.float32, device=torch.device("cpu"))
    components.video_latent_channels = VIDEO_LATENT_CHANNELS
    g0 = generation(pipe, "distilled", ())
    vt, at = g0.video_tools(H, W), g0.audio_tools()
    n1, n2 = stage_noise(2, vt.token_count, at.token_count), stage_noise(3, vt.token_count, at.token_count)
    g = generation(pipe, "distilled", (as_noise(*n1), as_noise(*n2)))
    model = X0Model(pipe.transformer())

    def ref_loop(sigmas, v, a, stepper):
        return euler_denoising_loop(sigmas, v, a, stepper, simple_denoising_func(rv, ra, ref_model))

    with torch.no_grad():
        s1 = torch.tensor(DISTILLED_SIGMA_VALUES)
        ref_1 = denoise_audio_video(shape, [], InjectedNoiser(n1), s1, EulerDiffusionStep(), ref_loop, components,
                                    torch.float32, torch.device("cpu"))
        s2 = torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES)
        ref_2 = denoise_audio_video(shape, [], InjectedNoiser(n2), s2, EulerDiffusionStep(), ref_loop, components,
                                    torch.float32, torch.device("cpu"), noise_scale=s2[0],
                                    initial_video_latent=ref_1[0].latent, initial_audio_latent=ref_1[1].latent)
    ours_1 = g.denoise("stage 1", 0, euler_loop(simple(model, ctx)), DISTILLED_SIGMA_VALUES, vt, at)
    compare("distilled stage 1", ours_1, ref_1)
    ours_2 = g.denoise("stage 2", 1, euler_loop(simple(model, ctx)), STAGE_2_DISTILLED_SIGMA_VALUES, vt, at,
                       noise_scale=STAGE_2_DISTILLED_SIGMA_VALUES[0], initial_video=ours_1[0],
                       initial_audio=ours_1[1])
    compare("distilled stage 2", ours_2, ref_2)


def test_guided_stage_matches_the_reference(models):
    pipe, ref_model, cfg = models
    (rv, ra), ctx = contexts(cfg, 4)
    (nv, na), neg = contexts(cfg, 5)
    shape = VideoPixelShape(batch=1, frames=FRAMES, height=H, width=W, fps=FPS)
    components = PipelineComponents(dtype=torch.float32, device=torch.device("cpu"))
    components.video_latent_channels = VIDEO_LATENT_CHANNELS
    gen = torch.Generator().manual_seed(6)
    image, key = (torch.randn(1, VIDEO_LATENT_CHANNELS, 1, H // 32, W // 32, generator=gen) for _ in range(2))
    ref_conds = [RefLatentIndex(image, 0.9, 0), RefKeyframe(key, 16, 0.8)]
    conds = [VideoConditionByLatentIndex(mx.array(image.numpy().transpose(0, 2, 3, 4, 1)), 0.9, 0),
             VideoConditionByKeyframeIndex(mx.array(key.numpy().transpose(0, 2, 3, 4, 1)), 16, 0.8)]
    video_params = dict(cfg_scale=3.0, stg_scale=1.0, stg_blocks=[1], rescale_scale=0.7, modality_scale=3.0)
    audio_params = dict(cfg_scale=7.0, stg_scale=0.5, stg_blocks=[2], rescale_scale=0.7, modality_scale=2.0)
    g0 = generation(pipe, "one-stage", (), video_guidance=video_params, audio_guidance=audio_params)
    vt, at = g0.video_tools(H, W), g0.audio_tools()
    noise = stage_noise(7, vt.token_count + (H // 32) * (W // 32), at.token_count)  # + the appended keyframe
    g = generation(pipe, "one-stage", (as_noise(*noise),), video_guidance=video_params, audio_guidance=audio_params)
    steps = 4

    def ref_loop(sigmas, v, a, stepper):
        fn = multi_modal_guider_factory_denoising_func(
            create_multimodal_guider_factory(RefGuiderParams(**video_params), negative_context=nv),
            create_multimodal_guider_factory(RefGuiderParams(**audio_params), negative_context=na), rv, ra, ref_model)
        return euler_denoising_loop(sigmas, v, a, stepper, fn)

    with torch.no_grad():
        sigmas = RefScheduler().execute(steps=steps).to(torch.float32)
        ref = denoise_audio_video(shape, ref_conds, InjectedNoiser(noise), sigmas, EulerDiffusionStep(), ref_loop,
                                  components, torch.float32, torch.device("cpu"))
    model = X0Model(pipe.transformer())
    ours = g.denoise("guided", 0, euler_loop(guided(model, ctx, neg, g.settings)), LTX2Scheduler().execute(steps=steps),
                     vt, at, conds)
    compare("guided stage (CFG+STG+modality+rescale, I2V + keyframe)", ours, ref)


def test_hq_res2s_stage_matches_the_reference(models):
    """HQ stage 1: res_2s with guidance (HQ-style CFG + modality + rescale) on the token-shifted schedule; the
    reference draws its SDE noise from its fixed-seed generators, which we replay and inject."""
    pipe, ref_model, cfg = models
    (rv, ra), ctx = contexts(cfg, 8)
    (nv, na), neg = contexts(cfg, 9)
    shape = VideoPixelShape(batch=1, frames=FRAMES, height=H, width=W, fps=FPS)
    components = PipelineComponents(dtype=torch.float32, device=torch.device("cpu"))
    components.video_latent_channels = VIDEO_LATENT_CHANNELS
    gen = torch.Generator().manual_seed(10)
    image = torch.randn(1, VIDEO_LATENT_CHANNELS, 1, H // 32, W // 32, generator=gen)
    video_params = dict(cfg_scale=3.0, stg_scale=0.0, stg_blocks=[], rescale_scale=0.45, modality_scale=3.0)
    audio_params = dict(cfg_scale=7.0, stg_scale=0.0, stg_blocks=[], rescale_scale=1.0, modality_scale=3.0)
    g0 = generation(pipe, "hq", ())
    vt, at = g0.video_tools(H, W), g0.audio_tools()
    steps = 3
    noise = stage_noise(11, vt.token_count, at.token_count)

    def replay(seed):  # the reference's generator draws: per step, video then audio, float64
        generator = torch.Generator().manual_seed(seed)
        shapes = [(1, vt.token_count, VIDEO_LATENT_CHANNELS), (1, at.token_count, AUDIO_TOKEN_WIDTH)]
        return [mx.array(torch.randn(s, generator=generator, dtype=torch.float64).float().numpy())
                for _ in range(steps) for s in shapes]

    injected = {**as_noise(*noise), "step_noise": replay(-1), "substep_noise": replay(9999)}
    g = generation(pipe, "hq", (injected,), video_guidance=video_params, audio_guidance=audio_params)

    def ref_loop(sigmas, v, a, stepper):
        fn = multi_modal_guider_denoising_func(MultiModalGuider(RefGuiderParams(**video_params), nv),
                                               MultiModalGuider(RefGuiderParams(**audio_params), na), rv, ra, ref_model)
        return res2s_audio_video_denoising_loop(sigmas, v, a, stepper, fn, model_dtype=torch.float32)

    latent_shape = (1, VIDEO_LATENT_CHANNELS, vt.frames, vt.height, vt.width)
    with torch.no_grad():
        sigmas = RefScheduler().execute(steps=steps, latent=torch.empty(latent_shape)).to(torch.float32)
        ref = denoise_audio_video(shape, [RefLatentIndex(image, 1.0, 0)], InjectedNoiser(noise), sigmas,
                                  Res2sDiffusionStep(), ref_loop, components, torch.float32, torch.device("cpu"))
    model = X0Model(pipe.transformer())
    conds = [VideoConditionByLatentIndex(mx.array(image.numpy().transpose(0, 2, 3, 4, 1)), 1.0, 0)]
    loop = res2s_loop(guided(model, ctx, neg, g.settings), **g.res2s_noise(0))
    ours = g.denoise("stage 1", 0, loop, LTX2Scheduler().execute(steps=steps, latent=latent_shape), vt, at, conds)
    compare("hq stage 1 (res_2s, guided, token-shifted schedule)", ours, ref)
