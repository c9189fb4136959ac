"""Pipeline defaults by model version (the reference's `PipelineParams`, `detect_params`) and the names of the
pipelines with what each needs from the converted model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..weights.checkpoint import is_ltx_2_3  # only the pipeline defaults read the version string
from ..diffusion import MultiModalGuiderParams


DEFAULT_NEGATIVE_PROMPT = (
    "blurry, out of focus, overexposed, underexposed, low contrast, washed out colors, excessive noise, "
    "grainy texture, poor lighting, flickering, motion blur, distorted proportions, unnatural skin tones, "
    "deformed facial features, asymmetrical face, missing facial features, extra limbs, disfigured hands, "
    "wrong hand count, artifacts around text, inconsistent perspective, camera shake, incorrect depth of "
    "field, background too sharp, background clutter, distracting reflections, harsh shadows, inconsistent "
    "lighting direction, color banding, cartoonish rendering, 3D CGI look, unrealistic materials, uncanny "
    "valley effect, incorrect ethnicity, wrong gender, exaggerated expressions, wrong gaze direction, "
    "mismatched lip sync, silent or muted audio, distorted voice, robotic voice, echo, background noise, "
    "off-sync audio, incorrect dialogue, added dialogue, repetitive speech, jittery movement, awkward "
    "pauses, incorrect timing, unnatural transitions, inconsistent framing, tilted camera, flat lighting, "
    "inconsistent tone, cinematic oversaturation, stylized filters, or AI artifacts."
)


def _guider(cfg: float, stg: float, rescale: float, blocks: list[int]) -> MultiModalGuiderParams:
    return MultiModalGuiderParams(cfg_scale=cfg, stg_scale=stg, stg_blocks=list(blocks), rescale_scale=rescale,
                                  modality_scale=3.0, skip_step=0)


@dataclass(frozen=True)
class PipelineParams:
    seed: int = 10
    stage_1_height: int = 512
    stage_1_width: int = 768
    num_frames: int = 121
    frame_rate: float = 24.0
    num_inference_steps: int = 40
    video_guider_params: MultiModalGuiderParams = field(default_factory=lambda: _guider(3.0, 1.0, 0.7, [29]))
    audio_guider_params: MultiModalGuiderParams = field(default_factory=lambda: _guider(7.0, 1.0, 0.7, [29]))

    @property
    def stage_2_height(self) -> int:
        return 2 * self.stage_1_height

    @property
    def stage_2_width(self) -> int:
        return 2 * self.stage_1_width


LTX_2_PARAMS = PipelineParams()
LTX_2_3_PARAMS = replace(LTX_2_PARAMS, num_inference_steps=30,
                         video_guider_params=replace(LTX_2_PARAMS.video_guider_params, stg_blocks=[28]),
                         audio_guider_params=replace(LTX_2_PARAMS.audio_guider_params, stg_blocks=[28]))
LTX_2_3_HQ_PARAMS = PipelineParams(num_inference_steps=15, stage_1_height=1088 // 2, stage_1_width=1920 // 2,
                                   video_guider_params=_guider(3.0, 0.0, 0.45, []),
                                   audio_guider_params=_guider(7.0, 0.0, 1.0, []))

# HQ stage strengths of the distilled LoRA (the reference's hq parser defaults).
HQ_DISTILLED_LORA_STRENGTHS = (0.25, 0.5)


def detect_params(model_version: str | None, pipeline: str = "distilled") -> PipelineParams:
    """Defaults for a pipeline: HQ has its own; the others follow the checkpoint's `model_version`."""
    if pipeline == "hq":
        return LTX_2_3_HQ_PARAMS
    return LTX_2_3_PARAMS if is_ltx_2_3(model_version) else LTX_2_PARAMS


@dataclass(frozen=True, kw_only=True)
class PipelineSpec:
    """What a pipeline is and what it needs from the converted model."""

    name: str
    description: str
    guided: bool  # CFG / STG / modality guidance against a negative prompt: needs a dev checkpoint
    two_stage: bool  # stage 1 at half size, the spatial x2 upsampler, stage 2 at full size
    stage_2_distilled_lora: bool  # stage 2 fuses the distilled LoRA into the dev checkpoint
    encodes_audio: bool = False  # the audio VAE encoder turns a given soundtrack into the audio latent
    runs_distilled: bool = False  # a guided pipeline that also runs, unguided, on a distilled checkpoint

    @property
    def size_multiple(self) -> int:
        return 64 if self.two_stage else 32


PIPELINES = {spec.name: spec for spec in (
    PipelineSpec(name="distilled", guided=False, two_stage=True, stage_2_distilled_lora=False,
                 description="distilled checkpoint (or a dev one converted with --distilled-lora): 8 steps at half "
                             "size, x2 upsampler, 3 steps at full size"),
    PipelineSpec(name="one-stage", guided=True, two_stage=False, stage_2_distilled_lora=False,
                 description="dev checkpoint, guided, one stage at full size"),
    PipelineSpec(name="two-stage", guided=True, two_stage=True, stage_2_distilled_lora=True,
                 description="dev checkpoint + distilled LoRA: guided stage 1 at half size, x2 upsampler, "
                             "distilled-LoRA stage 2"),
    PipelineSpec(name="hq", guided=True, two_stage=True, stage_2_distilled_lora=True,
                 description="dev checkpoint + distilled LoRA: res_2s sampler both stages, the LoRA at 0.25 / 0.5"),
    PipelineSpec(name="keyframes", guided=True, two_stage=True, stage_2_distilled_lora=True,
                 description="dev checkpoint + distilled LoRA: keyframe interpolation between --image frames "
                             "(two-stage, guided)"),
    PipelineSpec(name="a2v", guided=True, two_stage=True, stage_2_distilled_lora=True, encodes_audio=True,
                 description="dev checkpoint + distilled LoRA: audio-to-video, the video generated (two-stage, "
                             "guided) to the --audio-path audio, which is kept as the soundtrack"),
    PipelineSpec(name="retake", guided=True, two_stage=False, stage_2_distilled_lora=False, encodes_audio=True,
                 runs_distilled=True,
                 description="regenerate [--start-time, --end-time) of --video-path (picture and sound) from the "
                             "prompt; guided with a dev checkpoint, 8 steps with a distilled one"),
)}
