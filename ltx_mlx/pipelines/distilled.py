"""Distilled pipeline (the default): 8 Euler steps at half size on the distilled schedule, the spatial x2
upsampler, 3 refining steps at full size; no guidance, so one transformer pass per step."""

from __future__ import annotations

from ..conditioning import combined_image_conditionings
from ..diffusion import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES
from .common import Generation, GenerationResult, euler_loop, simple


def run(g: Generation, distilled_checkpoint: bool = True) -> GenerationResult:
    settings = g.settings
    half, full = (settings.height // 2, settings.width // 2), (settings.height, settings.width)

    # 1. Text: Gemma (freed), then the text projection (freed).
    context, _ = g.encode_text()

    # 2. Image conditionings at both stage sizes (video encoder freed; its statistics kept for the upsampler).
    (cond_1, cond_2), stats = g.encode_images([half, full], combined_image_conditionings)

    # 3. Stage 1 at half size. A dev checkpoint runs here with the distilled LoRA fused.
    loras = None if distilled_checkpoint else [*g.bundle.loras, g.bundle.distilled_lora()]
    model = g.load_transformer(loras)
    audio_tools = g.audio_tools()
    video, audio = g.denoise("stage 1", 0, euler_loop(simple(model, context)), DISTILLED_SIGMA_VALUES,
                             g.video_tools(*half), audio_tools, cond_1)

    # 4. Upsample the video latent x2 (the audio latent carries over as it is).
    video = g.upsample(video, stats)

    # 5. Stage 2 at full size: both latents re-noised to the table's first sigma and refined.
    sigmas = STAGE_2_DISTILLED_SIGMA_VALUES
    video, audio = g.denoise("stage 2", 1, euler_loop(simple(model, context)), sigmas, g.video_tools(*full),
                             audio_tools, cond_2, noise_scale=sigmas[0], initial_video=video, initial_audio=audio)
    del model
    g.free("transformer")

    # 6. Audio decode + vocoder, then the video decoded in tiles streamed into the mp4.
    return g.decode(video, audio)
