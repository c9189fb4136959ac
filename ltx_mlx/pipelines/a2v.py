"""Audio-to-video (the reference's `A2VidPipelineTwoStage`): the given audio is encoded to a clean audio latent
(denoise mask 0) and only the video is denoised around it — guided Euler at half size with the audio guider at
its defaults, the x2 upsampler, 3 distilled-LoRA steps at full size. The mp4 keeps the ORIGINAL waveform, not
the audio VAE's round trip."""

from __future__ import annotations

import numpy as np

from ..conditioning import combined_image_conditionings
from ..diffusion import STAGE_2_DISTILLED_SIGMA_VALUES, LTX2Scheduler, guided_denoising_fn
from ..text_encoder import TextContext
from .common import Generation, GenerationResult, euler_loop, simple, transformer_fn
from .settings import read_audio_input


def a2v_guided(model, positive: TextContext, negative: TextContext | None, settings, batch: bool = False):
    """Video guided against the negative prompt; the audio stream keeps the positive audio context in every
    pass (the reference's audio guider has no negative context), which the video sees through cross-attention."""
    if negative is not None:
        negative = TextContext(negative.video, positive.audio, negative.mask)
    return guided_denoising_fn(transformer_fn(model, positive, negative, batch), settings.video_guider,
                               settings.audio_guider)


def stereo(waveform: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(waveform, (2, waveform.shape[-1])), dtype=np.float32)


def run(g: Generation) -> GenerationResult:
    settings = g.settings
    half, full = (settings.height // 2, settings.width // 2), (settings.height, settings.width)
    seconds = settings.num_frames / settings.frame_rate

    # 1. The audio, encoded first: a too-short track fails before the big models are loaded.
    waveform, rate = read_audio_input(settings.audio_input, seconds)
    audio_tools = g.audio_tools()
    audio = g.encode_audio(waveform, rate, audio_tools)

    # 2. Text: positive and negative prompts.
    positive, negative = g.encode_text()

    # 3. Image conditionings at both stage sizes.
    (cond_1, cond_2), stats = g.encode_images([half, full], combined_image_conditionings)

    # 4. Stage 1: video only, guided, at half size.
    model = g.load_transformer()
    sigmas = LTX2Scheduler().execute(steps=settings.num_inference_steps)
    loop = euler_loop(a2v_guided(model, positive, negative, settings, g.batch_guidance))
    video, _ = g.denoise("stage 1", 0, loop, sigmas,
                         g.video_tools(*half), audio_tools, cond_1, initial_audio=audio, freeze_audio=True)
    del model, loop
    g.free("transformer")

    # 5. Upsample x2, then stage 2: video only, the distilled LoRA fused in, positive prompt only.
    video = g.upsample(video, stats)
    model = g.load_transformer([*g.bundle.loras, g.bundle.distilled_lora(settings.distilled_lora_strengths[1])],
                               "load stage-2 transformer")
    sigmas = STAGE_2_DISTILLED_SIGMA_VALUES
    video, _ = g.denoise("stage 2", 1, euler_loop(simple(model, positive)), sigmas, g.video_tools(*full),
                         audio_tools, cond_2, noise_scale=sigmas[0], initial_video=video, initial_audio=audio,
                         freeze_audio=True)
    del model
    g.free("transformer")

    # 6. The video decoded in tiles into the mp4, muxed with the input waveform itself.
    sound, sound_rate = (stereo(waveform), rate) if settings.audio else (None, None)
    frames = g.decode_video(video, settings.tiling, sound, sound_rate)
    return GenerationResult(frames, sound, sound_rate, settings.frame_rate, dict(g.timings), dict(g.peaks),
                            settings.output_path)
