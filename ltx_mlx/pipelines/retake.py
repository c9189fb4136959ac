"""Retake (the reference's `RetakePipeline`): regenerate the time range [start, end) of an existing video. Its
picture and sound are encoded as the initial latents; a TemporalRegionMask per modality leaves denoise mask 1
only on the tokens that overlap the range, so everything outside it is kept. One Euler stage at the video's own
size: guided with a dev checkpoint, the distilled 8-step schedule unguided with a distilled one."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx

from ..conditioning import TemporalRegionMask
from ..diffusion import DISTILLED_SIGMA_VALUES, LTX2Scheduler
from ..media import load_video_conditioning, read_audio
from .common import Generation, GenerationResult, euler_loop, guided, simple


def encode_source_video(g: Generation) -> mx.array:
    """The source frames at their own size → the channels-last video latent, with the video encoder (then
    freed)."""
    settings = g.settings
    with g.stage("video encoding"), g.bar(1, "video encoding", "clip") as bar:
        pixels = load_video_conditioning(settings.retake.path, settings.height, settings.width, settings.num_frames)
        encoder = g.bundle.video_encoder()
        latent = encoder(pixels.astype(g.dtype))
        mx.eval(latent)
        bar.update(1)
        del encoder
        g.free("video_encoder")
    return latent


def run(g: Generation, distilled: bool) -> GenerationResult:
    if distilled:
        g.settings = replace(g.settings, negative_prompt=None)
    settings, r = g.settings, g.settings.retake
    video_tools, audio_tools = g.video_tools(settings.height, settings.width), g.audio_tools()
    region = TemporalRegionMask(r.start_time, r.end_time, settings.frame_rate)

    # 1. The source: video, then its sound (if any; without it the whole soundtrack is generated).
    video = encode_source_video(g)
    sound = read_audio(r.path)
    audio = None if sound is None else g.encode_audio(*sound, audio_tools, pad=True)

    # 2. Text, then one Euler stage at full size over the masked region.
    positive, negative = g.encode_text()
    model = g.load_transformer()
    if distilled:
        sigmas, denoise_fn = DISTILLED_SIGMA_VALUES, simple(model, positive)
    else:
        sigmas = LTX2Scheduler().execute(steps=settings.num_inference_steps)
        denoise_fn = guided(model, positive, negative, settings, g.batch_guidance)
    video, audio = g.denoise("retake", 0, euler_loop(denoise_fn), sigmas, video_tools, audio_tools, [region],
                             initial_video=video, initial_audio=audio,
                             audio_conditionings=[region] if audio is not None else [])
    del model
    g.free("transformer")

    # 3. Audio decode + vocoder, then the video decoded in tiles streamed into the mp4.
    return g.decode(video, audio)
