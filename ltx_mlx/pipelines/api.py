"""The Python API: `pipe = ltx_mlx.load(...)`, then `result = pipe.generate(prompt=..., ...)`.

    import ltx_mlx
    pipe = ltx_mlx.load("path/to/ltx-2.3-distilled-mlx")
    result = pipe.generate(prompt="a red fox in fresh snow", num_frames=121, seed=3)
    result.save("fox.mp4")            # result.frames: uint8 (F, H, W, 3); result.audio: float32 (2, N)
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from ..weights.load import LTXModelBundle, LoRASpec, cached_conversion
from ..weights.lora import LoRA
from ..weights.load import load as load_bundle
from ..weights.convert import ConvertOptions, quantization_plans
from ..diffusion import MultiModalGuiderParams
from ..weights.folder import resolve_path
from ..models.vae_tiling import TilingConfig
from . import distilled as distilled_pipeline
from . import a2v, hq, keyframes, one_stage, retake, two_stage
from .common import Generation, GenerationResult, bounded_cache
from .settings import check_model, finite, pipeline_spec, resolve_settings

RUNNERS = {"one-stage": one_stage.run, "two-stage": two_stage.run, "hq": hq.run, "keyframes": keyframes.run,
           "a2v": a2v.run}


class Pipeline(LTXModelBundle):
    """A converted LTX model (components built on demand and freed per stage) that generates videos."""

    def generate(self, prompt: str, *, pipeline: str = "distilled", negative_prompt: str | None = None,
                 seed: int | None = None, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None, frame_rate: float | None = None,
                 num_inference_steps: int | None = None, images: Sequence = (),
                 video_guider_params: MultiModalGuiderParams | None = None,
                 audio_guider_params: MultiModalGuiderParams | None = None,
                 video_guidance: dict | None = None, audio_guidance: dict | None = None, audio: bool = True,
                 tiling: TilingConfig | None | str = "default",
                 distilled_lora_strengths: tuple[float | None, float | None] = (None, None),
                 noise: Sequence[dict | None] | None = None, output_path=None, keep_frames: bool = True,
                 distilled: bool | None = None, audio_path=None, audio_start_time: float | None = None,
                 audio_max_duration: float | None = None, video_path=None, start_time: float | None = None,
                 end_time: float | None = None, progress: bool = True, verbose: bool = False,
                 low_memory: bool = False, batch_guidance: bool = False) -> GenerationResult:
        """Generate a video with audio.

        Defaults (steps, guidance, size, frames, seed) follow the model version as the reference's
        `detect_params`. `images`: (path, frame_idx, strength[, crf]) tuples. `video_guidance` /
        `audio_guidance`: overrides of MultiModalGuiderParams fields (cfg_scale, stg_scale, stg_blocks,
        rescale_scale, modality_scale, skip_step). `noise`: per stage, None or
        {"video": (1, T, C), "audio": (1, T', C')} token-space noise (plus "step_noise" / "substep_noise"
        lists for res_2s stages) instead of draws from `seed`, to reproduce a run from another framework.
        `output_path`: stream the mp4 there (frames also kept unless keep_frames=False). `distilled`:
        whether the checkpoint is distilled (default: from its file name). `audio_path` (pipeline="a2v"): the
        soundtrack to generate the video to, read from `audio_start_time` for `audio_max_duration` seconds
        (default: the video's duration); it is returned (and muxed) as read, not re-synthesised. `video_path`,
        `start_time`, `end_time` (pipeline="retake"): the video whose [start, end) seconds are regenerated (its
        size, frames and rate are kept; guided with a dev checkpoint, distilled steps with a distilled one).
        `low_memory`: Gemma's layers and the transformer's blocks are read from the folder one at a time while
        they run (the same output, slower; resident: their other weights and two blocks).
        `batch_guidance`: a guided step's passes (negative prompt, STG, modality isolation) run as one batched
        forward: equal within float32 rounding, fewer and larger matmuls, activations times the passes.
        """
        for name, flag in (("low_memory", low_memory), ("batch_guidance", batch_guidance)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r:.80}")
        is_distilled = check_model(pipeline_spec(pipeline), self.components, self.config, distilled)
        settings = resolve_settings(
            pipeline, self.model_version, int(self.config["config"]["transformer"].get("num_layers", 48)),
            prompt=prompt, negative_prompt=negative_prompt, seed=seed, height=height, width=width,
            num_frames=num_frames, frame_rate=frame_rate, num_inference_steps=num_inference_steps, images=images,
            video_guider_params=video_guider_params, audio_guider_params=audio_guider_params,
            video_guidance=video_guidance, audio_guidance=audio_guidance, audio=audio, tiling=tiling,
            distilled_lora_strengths=distilled_lora_strengths, noise=noise, output_path=output_path,
            audio_path=audio_path, audio_start_time=audio_start_time, audio_max_duration=audio_max_duration,
            video_path=video_path, start_time=start_time, end_time=end_time, distilled_checkpoint=is_distilled)
        g = Generation(self, settings, progress=progress, verbose=verbose, keep_frames=keep_frames,
                       low_memory=low_memory, batch_guidance=batch_guidance)
        try:
            with bounded_cache():
                if pipeline == "distilled":
                    return distilled_pipeline.run(g, distilled_checkpoint=is_distilled)
                if pipeline == "retake":
                    return retake.run(g, distilled=is_distilled)
                return RUNNERS[pipeline](g)
        finally:
            self.free()


def check_lora_specs(loras) -> list:
    """`loras`: a list of LoRA objects, paths / repo ids or (path, strength) pairs with a finite strength."""
    pair = isinstance(loras, tuple) and len(loras) == 2 and isinstance(loras[0], (str, os.PathLike)) \
        and not isinstance(loras[1], (str, os.PathLike, tuple, LoRA))
    if isinstance(loras, (str, bytes, os.PathLike)) or pair or not isinstance(loras, Iterable):
        raise TypeError(f"loras (--lora) must be a list of paths or (path, strength) pairs, got {loras!r:.80}")
    out = list(loras)
    for spec in out:
        if isinstance(spec, (LoRA, str, os.PathLike)):
            continue
        if not isinstance(spec, tuple) or len(spec) != 2 or not isinstance(spec[0], (str, os.PathLike)):
            raise TypeError(f"each of loras (--lora PATH [STRENGTH]) is a path or a (path, strength) tuple, got "
                            f"{spec!r:.80}")
        finite(f"the strength of LoRA {os.fspath(spec[0])!r}", spec[1], "--lora PATH STRENGTH")
    return out


def load(path_or_repo: str | os.PathLike, loras: Iterable[LoRASpec] = (), *, gemma_root: str | None = None,
         spatial_upsamplers: Iterable[str] = (), temporal_upsamplers: Iterable[str] = (),
         distilled_lora: tuple[str, float] | None = None, dtype: str | None = None,
         quantize: int | dict | None = None, progress: bool = True) -> Pipeline:
    """`ltx_mlx.load` (see `ltx_mlx.weights.load.load`) returning a Pipeline; `distilled_lora` (path, strength) is
    stored with an official checkpoint's conversion for the two-stage pipelines."""
    if not isinstance(path_or_repo, (str, os.PathLike)):
        raise TypeError(f"path_or_repo (--model) must be a str or os.PathLike, got {path_or_repo!r:.80}")
    loras = check_lora_specs(loras)
    if distilled_lora is not None:
        if not isinstance(distilled_lora, tuple) or len(distilled_lora) != 2:
            raise TypeError(f"distilled_lora (--distilled-lora) must be a (path, strength) tuple, got "
                            f"{distilled_lora!r:.80}")
        finite("the distilled LoRA strength", distilled_lora[1], "--distilled-lora PATH STRENGTH")
        path = resolve_path(os.fspath(path_or_repo))
        if not path.endswith(".safetensors"):
            raise ValueError(f"{path} is not an official .safetensors checkpoint: the distilled LoRA is stored at "
                             "conversion (convert.py --distilled-lora), so pass it with the official checkpoint")
        plans = quantization_plans(quantize) if isinstance(quantize, int) else dict(quantize or {})
        opts = ConvertOptions(dtype=dtype or "bfloat16", quantize=plans, progress=progress,
                              distilled_lora=(resolve_path(os.fspath(distilled_lora[0])), float(distilled_lora[1])))
        folder = cached_conversion(path, resolve_path(gemma_root) if gemma_root else None,
                                   [resolve_path(p) for p in spatial_upsamplers],
                                   [resolve_path(p) for p in temporal_upsamplers], opts)
        return Pipeline(folder, loras)
    bundle = load_bundle(path_or_repo, loras, gemma_root=gemma_root, spatial_upsamplers=spatial_upsamplers,
                         temporal_upsamplers=temporal_upsamplers, dtype=dtype, quantize=quantize, progress=progress)
    return Pipeline(bundle.folder, bundle.loras)
