"""One generation's settings: user options resolved against the pipeline's defaults and checked before any
heavy work (every check here reads at most the converted model's config.json and the conditioning images)."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import av
import numpy as np

from ..weights.checkpoint import CheckpointError, checkpoint_kind
from ..conditioning import check_strength
from ..diffusion import MultiModalGuiderParams
from ..media import DEFAULT_IMAGE_CRF, check_output_path, check_readable, decode_image, read_audio
from ..models.vae_tiling import TilingConfig
from .params import DEFAULT_NEGATIVE_PROMPT, HQ_DISTILLED_LORA_STRENGTHS, PIPELINES, PipelineSpec, detect_params

FRAMES_PER_LATENT = 8
SPATIAL_X2 = "spatial_upsampler_x2"  # the converted folder's name for the x2 spatial upsampler
# Up-front bounds (until a memory model decides what fits a given machine): the video tokens of the full-size
# stage, (F-1)/8+1 x H/32 x W/32 (4K at 121 frames is 130,560), and the clip's duration (the audio latents,
# 25 a second, must be at least one and the audio at most ten minutes).
MAX_VIDEO_TOKENS = 131_072
MAX_SECONDS = 600.0
AUDIO_LATENTS_PER_SECOND = 25.0


def _where(name: str, flag: str | None) -> str:
    return f"{name} ({flag})" if flag else name


def finite(name: str, value, flag: str | None = None) -> float:
    """`value` as a float if it is a real number other than nan and +-inf, else an error naming the argument
    by its Python `name` and its command-line `flag`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_where(name, flag)} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{_where(name, flag)} must be a finite number, got {value!r}")
    return float(value)


def integer(name: str, value, flag: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{_where(name, flag)} must be an integer, got {value!r}")
    return int(value)


def pipeline_spec(name: str) -> PipelineSpec:
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose one of: {', '.join(PIPELINES)}")
    return PIPELINES[name]


def check_num_frames(num_frames: int):
    integer("num_frames", num_frames, "--num-frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer of the form 8k+1 (1, 9, 17, ..., 121), "
                         f"got {num_frames!r}")
    if (num_frames - 1) % FRAMES_PER_LATENT:
        below = (num_frames - 1) // FRAMES_PER_LATENT * FRAMES_PER_LATENT + 1
        raise ValueError(f"num_frames {num_frames} is not of the form 8k+1 (the VAE packs 8 frames per latent "
                         f"after the first); use {below} or {below + FRAMES_PER_LATENT}")


def check_size(height: int, width: int, spec: PipelineSpec):
    m = spec.size_multiple
    why = "it runs stage 1 at half size" if spec.two_stage else "the VAE works on 32-pixel blocks"
    for name, v in (("height", height), ("width", width)):
        integer(name, v, f"--{name}")
        if v <= 0:
            raise ValueError(f"{name} (--{name}) must be a positive multiple of {m}, got {v}")
        if v % m:
            near = max(m, round(v / m) * m)
            raise ValueError(f"{name} {v!r} is not a multiple of {m}, which the {spec.name} pipeline needs "
                             f"({why}); use e.g. {near}")


def check_budget(height: int, width: int, num_frames: int, frame_rate: float):
    """The up-front bounds: at most MAX_VIDEO_TOKENS video tokens, and between one audio latent and
    MAX_SECONDS of clip."""
    tokens = ((num_frames - 1) // FRAMES_PER_LATENT + 1) * (height // 32) * (width // 32)
    if tokens > MAX_VIDEO_TOKENS:
        raise ValueError(f"{width}x{height} with {num_frames} frames is {tokens:,} video tokens, more than the "
                         f"{MAX_VIDEO_TOKENS:,} this port accepts (e.g. 3840x2176 with 121 frames); use a smaller "
                         "--height/--width or fewer --num-frames")
    seconds = num_frames / frame_rate
    if round(seconds * AUDIO_LATENTS_PER_SECOND) < 1 or seconds > MAX_SECONDS:
        low, high = num_frames / MAX_SECONDS, 2 * AUDIO_LATENTS_PER_SECOND * num_frames
        raise ValueError(f"{num_frames} frames at {frame_rate:g} fps last {seconds:.4g} s; the clip must last "
                         f"from 1/{2 * AUDIO_LATENTS_PER_SECOND:g} s (one audio latent) to {MAX_SECONDS:g} s, so "
                         f"give a --frame-rate in [{low:.4g}, {high:g}) for {num_frames} frames")


class ImageConditioningInput(NamedTuple):
    """An --image: the file, the (pixel) frame it is placed at, its strength and the CRF of its H.264 round trip."""

    path: str
    frame_idx: int
    strength: float
    crf: int = DEFAULT_IMAGE_CRF


def as_image_inputs(images: Sequence) -> tuple[ImageConditioningInput, ...]:
    """(path, frame_idx, strength[, crf]) tuples or ImageConditioningInput → checked-type inputs."""
    if images is None:
        return ()
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        raise TypeError(f"images (--image) must be a list of (path, frame_idx, strength[, crf]) tuples, got "
                        f"{images!r:.80}")
    out = []
    for item in images:
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise TypeError(f"each of images (--image) is (path, frame_idx, strength[, crf]), got {item!r:.80}")
        path, frame, strength, *crf = item
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"an image path (--image PATH) must be a str or os.PathLike, got {path!r:.80}")
        name = f"image {os.fspath(path)!r}"
        out.append(ImageConditioningInput(
            os.fspath(path), integer(f"{name}: frame_idx", frame, "--image FRAME_IDX"),
            finite(f"{name}: strength", strength, "--image STRENGTH"),
            integer(f"{name}: crf", crf[0], "--image CRF") if crf else DEFAULT_IMAGE_CRF))
    return tuple(out)


def check_images(images: Sequence[ImageConditioningInput], num_frames: int, spec: PipelineSpec):
    for img in images:
        check_readable(img.path, "conditioning image")
        if not 0 <= img.frame_idx < num_frames:
            raise ValueError(f"Image {img.path!r} is placed at frame {img.frame_idx}, outside the video's frames "
                             f"0..{num_frames - 1}.")
        check_strength(img.strength)
        if not 0 <= img.crf <= 51:
            raise ValueError(f"image {img.path!r}: CRF {img.crf} is outside libx264's 0..51 (0 = no loss, "
                             f"default {DEFAULT_IMAGE_CRF})")
        image = decode_image(img.path)  # unreadable or not an image: fail now, not after text encoding
        if img.crf > 0 and min(image.shape[:2]) < 2:
            raise ValueError(f"image {img.path!r} is {image.shape[1]}x{image.shape[0]}: too small for the H.264 "
                             f"round trip at CRF {img.crf} (it needs 2x2 or more); give CRF 0 (--image PATH "
                             "FRAME_IDX STRENGTH 0) or a larger image")
    if spec.name == "keyframes" and not images:
        raise ValueError("the keyframes pipeline interpolates between images: give at least one --image PATH "
                         "FRAME_IDX STRENGTH")


@dataclass(frozen=True)
class AudioInput:
    """The a2v soundtrack: read from `start_time` for `max_duration` seconds (None: the video's duration)."""

    path: str
    start_time: float = 0.0
    max_duration: float | None = None


def _seconds(name: str, value, allow_zero: bool, flag: str | None = None) -> float:
    value = finite(name, value, flag)
    if value < 0 or (value == 0 and not allow_zero):
        need = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number of seconds {need}, got {value!r}")
    return float(value)


def read_audio_input(audio: AudioInput, seconds: float) -> tuple[np.ndarray, int]:
    """The soundtrack as float32 (channels, samples) and its rate, checked to be mono or stereo and to last
    the `seconds` the video needs."""
    try:
        read = read_audio(audio.path, audio.start_time, audio.max_duration or seconds)
    except av.FFmpegError as e:
        raise ValueError(f"could not read audio from {audio.path!r} ({e}); give a readable audio or video file "
                         "with an audio stream") from None
    if read is None:
        if audio.start_time > 0 and read_audio(audio.path, 0.0, seconds) is not None:
            raise ValueError(f"{audio.path!r} has no audio after {audio.start_time} s (the start time is past its "
                             "end); use an earlier --audio-start-time")
        raise ValueError(f"{audio.path!r} has no audio stream; give a file with sound as --audio-path")
    waveform, rate = read
    if waveform.shape[0] not in (1, 2):
        raise ValueError(f"{audio.path!r} has {waveform.shape[0]} audio channels; the audio VAE takes mono or "
                         "stereo, so mix it down to stereo first")
    got = waveform.shape[1] / rate
    if got < seconds - 1e-3:
        raise ValueError(f"{audio.path!r} has only {got:.3f} s of audio from {audio.start_time} s, but the video "
                         f"lasts {seconds:.3f} s; use an earlier --audio-start-time, a longer audio file, or fewer "
                         "frames / a higher frame rate")
    return waveform, rate


def check_audio_input(pipeline: str, audio_path, start_time, max_duration, seconds: float) -> AudioInput | None:
    """--audio-path & co.: only for a2v, where they are required; the file read and long enough."""
    if pipeline != "a2v":
        if audio_path is not None:
            raise ValueError(f"--audio-path is for the a2v pipeline, not {pipeline}; add --pipeline a2v")
        return None
    if audio_path is None:
        raise ValueError("the a2v pipeline generates a video to an audio track: give it with --audio-path FILE")
    check_readable(audio_path, "audio file")
    start = _seconds("the audio start time", 0.0 if start_time is None else start_time, allow_zero=True,
                     flag="audio_start_time, --audio-start-time")
    duration = None if max_duration is None else _seconds(
        "the audio max duration", max_duration, allow_zero=False, flag="audio_max_duration, --audio-max-duration")
    if duration is not None and duration < seconds - 1e-3:
        raise ValueError(f"the audio max duration {duration} s is shorter than the video ({seconds:.3f} s); "
                         "raise --audio-max-duration or leave it out (default: the video's duration)")
    audio = AudioInput(os.fspath(audio_path), start, duration)
    read_audio_input(audio, seconds)
    return audio


@dataclass(frozen=True)
class RetakeInput:
    """The source video and the time range to regenerate, with the video's own size, frame count and rate."""

    path: str
    start_time: float
    end_time: float
    height: int
    width: int
    num_frames: int
    frame_rate: float


def read_video_metadata(path) -> tuple[float, int, int, int]:
    """(frame rate, frames, height, width) of the first video stream (frames counted when not stored)."""
    check_readable(path, "video")
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{os.fspath(path)!r} has no video stream; give a video file as --video-path")
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for _ in container.decode(stream))
            rate = stream.average_rate
            channels = [a.codec_context.channels for a in container.streams.audio[:1]]
            if channels and channels[0] > 2:
                raise ValueError(f"the sound of {os.fspath(path)!r} has {channels[0]} channels; the audio VAE takes "
                                 "mono or stereo, so mix it down to stereo first")
            return float(rate) if rate else 0.0, frames, stream.codec_context.height, stream.codec_context.width
    except av.FFmpegError as e:
        raise ValueError(f"could not read the video {os.fspath(path)!r} ({e}); give a readable video file") from None


def check_retake_input(pipeline: str, video_path, start_time, end_time, sizes: dict, images) -> RetakeInput | None:
    """--video-path, --start-time, --end-time: only for retake, where they are required and the size, frame count
    and frame rate are the video's own (8k+1 frames, multiples of 32)."""
    if pipeline != "retake":
        if video_path is not None or start_time is not None or end_time is not None:
            raise ValueError(f"--video-path / --start-time / --end-time are for the retake pipeline, not {pipeline}; "
                             "add --pipeline retake")
        return None
    if video_path is None or start_time is None or end_time is None:
        raise ValueError("the retake pipeline regenerates part of a video: give --video-path FILE --start-time S "
                         "--end-time S")
    given = [k for k, v in sizes.items() if v is not None]
    if given or images:
        what = ", ".join(f"--{k.replace('_', '-')}" for k in given) or "--image"
        raise ValueError(f"retake keeps the source video's size, frames and frame rate and takes no images; leave "
                         f"out {what}")
    start = _seconds("the start time", start_time, allow_zero=True, flag="start_time, --start-time")
    end = _seconds("the end time", end_time, allow_zero=False, flag="end_time, --end-time")
    fps, frames, height, width = read_video_metadata(video_path)
    if fps <= 0 or frames < 1:
        raise ValueError(f"{os.fspath(video_path)!r} has no frames or no frame rate; give a decodable video")
    if (frames - 1) % FRAMES_PER_LATENT:
        below = (frames - 1) // FRAMES_PER_LATENT * FRAMES_PER_LATENT + 1
        raise ValueError(f"the video {os.fspath(video_path)!r} has {frames} frames; retake needs 8k+1 (the VAE packs "
                         f"8 frames per latent after the first): trim it to {below} frames")
    if height % 32 or width % 32:
        raise ValueError(f"the video {os.fspath(video_path)!r} is {width}x{height}; retake needs a width and height "
                         "that are multiples of 32: crop or resize it")
    duration = frames / fps
    if end <= start or start >= duration or end > duration + 1e-6:
        raise ValueError(f"the time range [{start}, {end}) s is not inside the video (0 to {duration:.3f} s, "
                         f"{frames} frames at {fps:g} fps); give 0 <= --start-time < --end-time <= {duration:.3f}")
    return RetakeInput(os.fspath(video_path), start, end, height, width, frames, fps)


GUIDANCE_FLAGS = {"cfg_scale": "--{m}-cfg-guidance-scale", "stg_scale": "--{m}-stg-guidance-scale",
                  "rescale_scale": "--{m}-rescale-scale", "stg_blocks": "--{m}-stg-blocks",
                  "modality_scale": "--{mod}-guidance-scale", "skip_step": "--{m}-skip-step"}


def guidance_flag(modality: str, key: str) -> str:
    return GUIDANCE_FLAGS[key].format(m=modality, mod="a2v" if modality == "video" else "v2a")


def _given_guidance(modality: str, params, overrides) -> dict:
    """The guidance fields a caller set: `{modality}_guidance` overrides that are not None (the CLI passes
    every flag, None when not given); a whole `{modality}_guider_params` counts as all of them."""
    if overrides is not None and not isinstance(overrides, dict):
        raise TypeError(f"{modality}_guidance must be a dict of MultiModalGuiderParams fields, got {overrides!r:.80}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(GUIDANCE_FLAGS))
    if unknown:
        raise ValueError(f"{modality}_guidance has unknown keys {unknown}; use {', '.join(GUIDANCE_FLAGS)}")
    if params is not None:
        given = {**{k: getattr(params, k, None) for k in GUIDANCE_FLAGS}, **given}
    return given


def check_used(spec: PipelineSpec, *, negative_prompt=None, num_inference_steps=None, video_guidance=None,
               audio_guidance=None, video_guider_params=None, audio_guider_params=None,
               distilled_lora_strengths=(None, None), audio_start_time=None, audio_max_duration=None,
               distilled_checkpoint: bool = False):
    """An option the chosen pipeline would ignore is an error, not a run that quietly differs from the request.
    `distilled_checkpoint`: retake then runs the distilled schedule unguided, like the distilled pipeline."""
    if (not isinstance(distilled_lora_strengths, (tuple, list)) or len(distilled_lora_strengths) != 2):
        raise TypeError("distilled_lora_strengths must be a pair (stage 1, stage 2) of numbers or None, got "
                        f"{distilled_lora_strengths!r:.80}")
    for i, v in enumerate(distilled_lora_strengths, 1):
        if v is not None:
            finite(f"distilled_lora_strengths[{i - 1}]", v, f"--distilled-lora-strength-stage-{i}")
    video = _given_guidance("video", video_guider_params, video_guidance)
    audio = _given_guidance("audio", audio_guider_params, audio_guidance)
    ignored = []  # (flag, Python name)
    unguided_retake = spec.name == "retake" and distilled_checkpoint
    if not spec.guided or unguided_retake:
        ignored += [(f, n) for f, n, v in (("--negative-prompt", "negative_prompt", negative_prompt),
                                           ("--num-inference-steps", "num_inference_steps", num_inference_steps))
                    if v is not None]
        ignored += [(guidance_flag(m, k), f"{m}_guidance[{k!r}]") for m, g in (("video", video), ("audio", audio))
                    for k in g]
    if ignored:
        flags = ", ".join(f"{f} ({n})" for f, n in ignored)
        if unguided_retake:
            raise ValueError(f"retake on a distilled checkpoint runs the distilled schedule unguided and would ignore "
                             f"{flags}; drop them, or retake with a dev checkpoint to guide it")
        raise ValueError(f"the distilled pipeline runs fixed, unguided steps (8 + 3) and would ignore {flags}; "
                         "drop them, or use a guided pipeline (one-stage, two-stage, hq) with a dev checkpoint")
    if spec.name == "a2v" and audio:
        flags = ", ".join(f"{guidance_flag('audio', k)} (audio_guidance[{k!r}])" for k in audio)
        raise ValueError(f"the a2v pipeline keeps the given audio (its guider stays at the defaults) and would "
                         f"ignore {flags}; drop them")
    if spec.name != "a2v" and (audio_start_time is not None or audio_max_duration is not None):
        raise ValueError(f"--audio-start-time / --audio-max-duration (audio_start_time, audio_max_duration) are for "
                         f"the a2v pipeline, not {spec.name}; drop them or add --pipeline a2v --audio-path FILE")
    if spec.name != "hq" and distilled_lora_strengths[0] is not None:
        raise ValueError("--distilled-lora-strength-stage-1 applies to the hq pipeline only (the others run stage 1 "
                         "without the distilled LoRA); drop it or use --pipeline hq")
    if spec.name == "distilled" and distilled_lora_strengths[1] is not None:
        raise ValueError("the distilled pipeline uses the distilled LoRA strength stored at conversion; "
                         "--distilled-lora-strength-stage-2 applies to two-stage, keyframes, a2v and hq")


def check_request(pipeline: str, *, height: int | None = None, width: int | None = None,
                  num_frames: int | None = None, frame_rate: float | None = None, images: Sequence = (),
                  output_path=None, prompt: str | None = None, audio_path=None, audio_start_time=None,
                  audio_max_duration=None, video_path=None, start_time=None, end_time=None,
                  **options) -> tuple[ImageConditioningInput, ...]:
    """The model-independent checks (types and finite numbers, options the pipeline would ignore, sizes, frames,
    the size and duration bounds, images, output path, the a2v audio, the retake video); returns the parsed
    images. `options`: the `check_used` ones."""
    if not isinstance(pipeline, str):
        raise TypeError(f"pipeline (--pipeline) must be a str, one of {', '.join(PIPELINES)}; got {pipeline!r:.80}")
    spec = pipeline_spec(pipeline)
    defaults = detect_params(None, pipeline)
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt (--prompt) must be a str, got {type(prompt).__name__}")
    if prompt is not None and not prompt.strip():
        raise ValueError('the prompt is empty: describe the video to generate (e.g. --prompt "a cat on a beach")')
    negative = options.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise TypeError(f"negative_prompt (--negative-prompt) must be a str, got {type(negative).__name__}")
    if output_path is not None and not isinstance(output_path, (str, os.PathLike)):
        raise TypeError(f"output_path (--output-path) must be a str or os.PathLike, got {output_path!r:.80}")
    check_used(spec, audio_start_time=audio_start_time, audio_max_duration=audio_max_duration, **options)
    sizes = dict(height=height, width=width, num_frames=num_frames, frame_rate=frame_rate)
    retake = check_retake_input(pipeline, video_path, start_time, end_time, sizes, images)
    if retake is not None:
        height, width, num_frames, frame_rate = retake.height, retake.width, retake.num_frames, retake.frame_rate
    frames = defaults.num_frames if num_frames is None else num_frames
    check_num_frames(frames)
    h = (defaults.stage_2_height if spec.two_stage else defaults.stage_1_height) if height is None else height
    w = (defaults.stage_2_width if spec.two_stage else defaults.stage_1_width) if width is None else width
    check_size(h, w, spec)
    if frame_rate is not None and finite("frame_rate", frame_rate, "--frame-rate") <= 0:
        raise ValueError(f"frame_rate (--frame-rate) must be a positive number of frames per second, got "
                         f"{frame_rate!r}")
    fps = defaults.frame_rate if frame_rate is None else frame_rate
    check_budget(h, w, frames, fps)
    parsed = as_image_inputs(images)
    check_images(parsed, frames, spec)
    if output_path is not None:
        check_output_path(output_path)
    check_audio_input(pipeline, audio_path, audio_start_time, audio_max_duration, frames / fps)
    return parsed


@dataclass(frozen=True)
class Settings:
    pipeline: PipelineSpec
    prompt: str
    negative_prompt: str | None
    seed: int
    height: int
    width: int
    num_frames: int
    frame_rate: float
    num_inference_steps: int
    images: tuple[ImageConditioningInput, ...]
    video_guider: MultiModalGuiderParams
    audio_guider: MultiModalGuiderParams
    audio: bool
    tiling: TilingConfig | None
    distilled_lora_strengths: tuple[float | None, float | None]
    noise: tuple
    output_path: str | None
    audio_input: AudioInput | None = None
    retake: RetakeInput | None = None


def _guider(modality: str, base: MultiModalGuiderParams, given, overrides: dict) -> MultiModalGuiderParams:
    """The defaults (or `given`) with the overrides, every number checked finite."""
    p = given if given is not None else base
    if not isinstance(p, MultiModalGuiderParams):
        raise TypeError(f"{modality}_guider_params must be MultiModalGuiderParams, got {type(p).__name__}")
    p = replace(p, **{k: v for k, v in overrides.items() if v is not None})
    for key in ("cfg_scale", "stg_scale", "rescale_scale", "modality_scale"):
        finite(f"{modality}_guidance[{key!r}]", getattr(p, key), guidance_flag(modality, key))
    integer(f"{modality}_guidance['skip_step']", p.skip_step, guidance_flag(modality, "skip_step"))
    blocks = p.stg_blocks or []
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
        raise TypeError(f"{modality}_guidance['stg_blocks'] ({guidance_flag(modality, 'stg_blocks')}) must be a "
                        f"list of block indices, got {blocks!r:.80}")
    for b in blocks:
        integer(f"{modality}_guidance['stg_blocks']", b, guidance_flag(modality, "stg_blocks"))
    return p


def resolve_settings(pipeline: str, model_version: str | None, num_layers: int, *, prompt: str,
                     negative_prompt: str | None = None, seed: int | None = None, height: int | None = None,
                     width: int | None = None, num_frames: int | None = None, frame_rate: float | None = None,
                     num_inference_steps: int | None = None, images: Sequence = (),
                     video_guider_params: MultiModalGuiderParams | None = None,
                     audio_guider_params: MultiModalGuiderParams | None = None, video_guidance: dict | None = None,
                     audio_guidance: dict | None = None, audio: bool = True,
                     tiling: TilingConfig | None | str = "default",
                     distilled_lora_strengths: tuple[float | None, float | None] = (None, None),
                     noise: Sequence | None = None, output_path=None, audio_path=None, distilled_checkpoint: bool = False,
                     audio_start_time: float | None = None, audio_max_duration: float | None = None,
                     video_path=None, start_time: float | None = None, end_time: float | None = None) -> Settings:
    """Every option with the version's default filled in, checked. `distilled_checkpoint`: retake then runs unguided."""
    spec = pipeline_spec(pipeline)
    guided = spec.guided and not (spec.name == "retake" and distilled_checkpoint)
    parsed = check_request(pipeline, height=height, width=width, num_frames=num_frames, frame_rate=frame_rate,
                           images=images, output_path=output_path, prompt=prompt, audio_path=audio_path,
                           audio_start_time=audio_start_time, audio_max_duration=audio_max_duration,
                           video_path=video_path, start_time=start_time, end_time=end_time,
                           negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                           video_guidance=video_guidance, audio_guidance=audio_guidance,
                           distilled_checkpoint=distilled_checkpoint,
                           video_guider_params=video_guider_params, audio_guider_params=audio_guider_params,
                           distilled_lora_strengths=distilled_lora_strengths)
    retake = check_retake_input(pipeline, video_path, start_time, end_time, {}, ())
    if retake is not None:
        height, width, num_frames, frame_rate = retake.height, retake.width, retake.num_frames, retake.frame_rate
    d = detect_params(model_version, pipeline)
    steps = d.num_inference_steps if num_inference_steps is None else num_inference_steps
    if integer("num_inference_steps", steps, "--num-inference-steps") < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
    vg = _guider("video", d.video_guider_params, video_guider_params, video_guidance or {})
    ag = _guider("audio", d.audio_guider_params, audio_guider_params, audio_guidance or {})
    if spec.name == "a2v":  # the audio is given, not denoised: its guider stays at the defaults, as the reference
        ag = MultiModalGuiderParams()
    given = {"video": (video_guider_params, video_guidance), "audio": (audio_guider_params, audio_guidance)}
    for name, g in (("video", vg), ("audio", ag)):
        bad = [b for b in (g.stg_blocks or []) if not 0 <= b < num_layers]
        if bad and g.stg_scale != 0 and guided:
            params, overrides = given[name]
            default = params is None and (overrides or {}).get("stg_blocks") is None
            raise ValueError(
                f"{name} STG blocks {bad}{' (the default for this model version)' if default else ''} do not exist: "
                f"this transformer has blocks 0..{num_layers - 1}; choose others with --{name}-stg-blocks "
                f"(Python: {name}_guidance={{'stg_blocks': [...]}}) or turn {name} STG off with "
                f"--{name}-stg-guidance-scale 0 ({name}_guidance={{'stg_scale': 0}})")
        if g.skip_step < 0:
            raise ValueError(f"{name} skip_step ({guidance_flag(name, 'skip_step')}) must be >= 0, got {g.skip_step}")
    if seed is not None:
        integer("seed", seed, "--seed")
    if tiling != "default" and tiling is not None and not isinstance(tiling, TilingConfig):
        raise TypeError(f"tiling must be a TilingConfig, None or 'default', got {tiling!r:.80}")
    if spec.name == "hq":
        distilled_lora_strengths = tuple(HQ_DISTILLED_LORA_STRENGTHS[i] if s is None else float(s)
                                         for i, s in enumerate(distilled_lora_strengths))
    check_noise(noise, 2 if spec.two_stage else 1)
    negative = negative_prompt if negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT
    return Settings(
        pipeline=spec, prompt=prompt, negative_prompt=negative if spec.guided else None,
        seed=d.seed if seed is None else seed,
        height=height or (d.stage_2_height if spec.two_stage else d.stage_1_height),
        width=width or (d.stage_2_width if spec.two_stage else d.stage_1_width),
        num_frames=d.num_frames if num_frames is None else num_frames,
        frame_rate=float(d.frame_rate if frame_rate is None else frame_rate), num_inference_steps=steps,
        images=parsed, video_guider=vg, audio_guider=ag, audio=bool(audio),
        tiling=TilingConfig.default() if tiling == "default" else tiling,
        distilled_lora_strengths=tuple(distilled_lora_strengths), noise=tuple(noise or ()),
        output_path=None if output_path is None else os.fspath(output_path),
        audio_input=None if audio_path is None else AudioInput(
            os.fspath(audio_path), float(audio_start_time or 0.0),
            None if audio_max_duration is None else float(audio_max_duration)),
        retake=retake)


NOISE_KEYS = ("video", "audio", "step_noise", "substep_noise")


def check_noise(noise: Sequence | None, stages: int):
    """Injected noise: per stage None or {"video": ..., "audio": ...} (+ res_2s "step_noise"/"substep_noise")."""
    if noise is None:
        return
    if isinstance(noise, dict) or len(noise) > stages:
        raise ValueError(f"noise is a list with one entry per stage ({stages} here), each None or a dict with "
                         "'video' and 'audio' token-space arrays")
    for i, entry in enumerate(noise):
        if entry is None:
            continue
        if not isinstance(entry, dict) or not {"video", "audio"} <= set(entry) or set(entry) - set(NOISE_KEYS):
            raise ValueError(f"noise for stage {i + 1} must be a dict with 'video' and 'audio' arrays (and optionally "
                             f"'step_noise'/'substep_noise' for res_2s), got {entry!r:.80}")


def is_distilled_checkpoint(config: dict) -> bool:
    """Whether the converted model came from a distilled checkpoint: as recorded at conversion, else (folders of
    earlier versions) from the official file name; the files' metadata does not tell."""
    kind = config.get("checkpoint_kind")
    if kind is None:
        source = config.get("source") or {}
        kind = checkpoint_kind(source.get("checkpoint", "") if isinstance(source, dict) else str(source))
    if kind is None:
        raise ValueError("cannot tell whether this model is a distilled or a dev checkpoint (the official file name "
                         "says it, this one does not): pass --checkpoint-kind distilled or --checkpoint-kind dev "
                         "(Python: distilled=True/False), or convert it with convert.py --checkpoint-kind")
    return kind == "distilled"


def check_model(spec: PipelineSpec, components: Sequence[str], config: dict, distilled: bool | None = None):
    """The converted model has what the pipeline needs: the right checkpoint kind, Gemma, the upsampler,
    the distilled LoRA."""
    distilled = is_distilled_checkpoint(config) if distilled is None else distilled
    has_lora = "distilled_lora" in components
    if "gemma" not in components:
        raise CheckpointError("this converted model has no Gemma text encoder; convert it again with "
                              "--gemma-root (google/gemma-3-12b-it-qat-q4_0-unquantized)")
    if spec.guided and distilled and not spec.runs_distilled:
        raise ValueError(f"the {spec.name} pipeline is guided and needs a dev checkpoint, but this model is a "
                         "distilled checkpoint; use --pipeline distilled, or a dev checkpoint")
    if not spec.guided and not distilled and not has_lora:
        raise ValueError("the distilled pipeline needs a distilled checkpoint, or a dev checkpoint converted with "
                         "--distilled-lora; this model is a dev checkpoint without the distilled LoRA (or use "
                         "--pipeline one-stage)")
    if spec.stage_2_distilled_lora and not has_lora:
        raise ValueError(f"the {spec.name} pipeline refines stage 2 with the distilled LoRA, which this model lacks; "
                         "convert it with --distilled-lora ltx-2.3-22b-distilled-lora-384.safetensors")
    if spec.encodes_audio and "audio_encoder" not in components:
        raise CheckpointError(f"the {spec.name} pipeline encodes the given audio with the audio VAE encoder, which "
                              "this converted model lacks; convert it again from the full official checkpoint")
    if spec.two_stage and SPATIAL_X2 not in components:
        raise ValueError(f"the {spec.name} pipeline upsamples stage 1 with the spatial x2 upsampler, which this "
                         "model lacks; convert it with --spatial-upsampler-path ltx-2.3-spatial-upscaler-x2-1.0"
                         ".safetensors")
    return distilled
