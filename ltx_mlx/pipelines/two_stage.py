"""Two-stage pipeline: guided Euler at half size with the dev checkpoint, the spatial x2 upsampler, then 3
unguided steps at full size with the distilled LoRA fused; tiled decode. `keyframes.py` reuses it with every
image appended as a keyframe."""

from __future__ import annotations

from ..conditioning import combined_image_conditionings
from ..diffusion import STAGE_2_DISTILLED_SIGMA_VALUES, LTX2Scheduler
from .common import Generation, GenerationResult, euler_loop, guided, simple


def run(g: Generation, image_conditionings=combined_image_conditionings) -> GenerationResult:
    settings = g.settings
    half, full = (settings.height // 2, settings.width // 2), (settings.height, settings.width)

    # 1. Text: positive and negative prompts.
    positive, negative = g.encode_text()

    # 2. Image conditionings at both stage sizes.
    (cond_1, cond_2), stats = g.encode_images([half, full], image_conditionings)

    # 3. Stage 1: guided, at half size, with the user's LoRAs only.
    model = g.load_transformer()
    audio_tools = g.audio_tools()
    sigmas = LTX2Scheduler().execute(steps=settings.num_inference_steps)
    loop = euler_loop(guided(model, positive, negative, settings, g.batch_guidance))
    video, audio = g.denoise("stage 1", 0, loop, sigmas,
                             g.video_tools(*half), audio_tools, cond_1)
    del model, loop
    g.free("transformer")

    # 4. Upsample the video latent x2.
    video = g.upsample(video, stats)

    # 5. Stage 2: the distilled LoRA fused in, positive prompt only, at full size.
    strength = settings.distilled_lora_strengths[1]
    model = g.load_transformer([*g.bundle.loras, g.bundle.distilled_lora(strength)], "load stage-2 transformer")
    sigmas = STAGE_2_DISTILLED_SIGMA_VALUES
    video, audio = g.denoise("stage 2", 1, euler_loop(simple(model, positive)), sigmas, g.video_tools(*full),
                             audio_tools, cond_2, noise_scale=sigmas[0], initial_video=video, initial_audio=audio)
    del model
    g.free("transformer")

    # 6. Audio decode + vocoder, then the video decoded in tiles streamed into the mp4.
    return g.decode(video, audio)
