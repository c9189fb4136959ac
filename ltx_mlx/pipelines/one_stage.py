"""One-stage pipeline: a dev checkpoint at full size, Euler on the token-count-free LTX2Scheduler schedule,
multi-modal guidance (CFG, STG, modality isolation, rescale) for video and audio. Unlike the reference, which
decodes this pipeline's video whole, it decodes in tiles like the others, so memory stays bounded; tile seams are
blended, so frames differ slightly from a whole decode."""

from __future__ import annotations

from ..conditioning import combined_image_conditionings
from ..diffusion import LTX2Scheduler
from .common import Generation, GenerationResult, euler_loop, guided


def run(g: Generation) -> GenerationResult:
    settings = g.settings

    # 1. Text: positive and negative prompts.
    positive, negative = g.encode_text()

    # 2. Image conditionings at full size.
    (conditionings,), _ = g.encode_images([(settings.height, settings.width)], combined_image_conditionings)

    # 3. Guided denoising (the scheduler is called without a latent, as the reference does).
    model = g.load_transformer()
    sigmas = LTX2Scheduler().execute(steps=settings.num_inference_steps)
    loop = euler_loop(guided(model, positive, negative, settings, g.batch_guidance))
    video, audio = g.denoise("denoise", 0, loop, sigmas,
                             g.video_tools(settings.height, settings.width), g.audio_tools(), conditionings)
    del model, loop
    g.free("transformer")

    # 4. Audio decode + vocoder, then the video decoded in tiles streamed into the mp4.
    return g.decode(video, audio)
