"""HQ pipeline: res_2s (second-order, SDE re-noising) in both stages; stage 1 guided at half size on a schedule
shifted by its token count, with the distilled LoRA at 0.25; stage 2 with it at 0.5; tiled decode."""

from __future__ import annotations

from ..conditioning import combined_image_conditionings
from ..diffusion import STAGE_2_DISTILLED_SIGMA_VALUES, LTX2Scheduler
from .common import Generation, GenerationResult, guided, res2s_loop, simple


def run(g: Generation) -> GenerationResult:
    settings = g.settings
    half, full = (settings.height // 2, settings.width // 2), (settings.height, settings.width)
    strength_1, strength_2 = settings.distilled_lora_strengths

    # 1. Text: positive and negative prompts.
    positive, negative = g.encode_text()

    # 2. Image conditionings at both stage sizes.
    (cond_1, cond_2), stats = g.encode_images([half, full], combined_image_conditionings)

    # 3. Stage 1: res_2s, guided, the schedule's shift from the stage-1 latent's token count.
    model = g.load_transformer([*g.bundle.loras, g.bundle.distilled_lora(strength_1)])
    video_tools, audio_tools = g.video_tools(*half), g.audio_tools()
    latent_shape = (1, video_tools.channels, video_tools.frames, video_tools.height, video_tools.width)
    sigmas = LTX2Scheduler().execute(steps=settings.num_inference_steps, latent=latent_shape)
    loop = res2s_loop(guided(model, positive, negative, settings, g.batch_guidance), **g.res2s_noise(0))
    video, audio = g.denoise("stage 1", 0, loop, sigmas, video_tools, audio_tools, cond_1)
    del model, loop
    g.free("transformer")

    # 4. Upsample the video latent x2.
    video = g.upsample(video, stats)

    # 5. Stage 2: res_2s on the stage-2 table, positive prompt only, the distilled LoRA at the stage-2 strength.
    model = g.load_transformer([*g.bundle.loras, g.bundle.distilled_lora(strength_2)], "load stage-2 transformer")
    sigmas = STAGE_2_DISTILLED_SIGMA_VALUES
    loop = res2s_loop(simple(model, positive), **g.res2s_noise(1))
    video, audio = g.denoise("stage 2", 1, loop, sigmas, g.video_tools(*full), audio_tools, cond_2,
                             noise_scale=sigmas[0], initial_video=video, initial_audio=audio)
    del model, loop
    g.free("transformer")

    # 6. Audio decode + vocoder, then the video decoded in tiles streamed into the mp4.
    return g.decode(video, audio)
