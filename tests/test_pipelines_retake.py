"""Retake (`--pipeline retake`): the masked Euler stage against the reference's own `noise_video_state` /
`noise_audio_state` with its `TemporalRegionMask` and its denoising functions from injected noise (guided with a
dev checkpoint, the distilled schedule unguided), float32 on CPU within 1e-4 x max|ref|, with the tokens outside
the range kept exactly; end to end convert -> generate.py keeping the source's frames, size and rate; and every
bad input rejected in one line before any model is built."""

from dataclasses import replace
from fractions import Fraction

import av
import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams as RefGuiderParams
from ltx_core.components.schedulers import LTX2Scheduler as RefScheduler
from ltx_core.types import VideoPixelShape
from ltx_pipelines.retake import TemporalRegionMask as RefTemporalRegionMask
from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES
from ltx_pipelines.utils.helpers import (multi_modal_guider_denoising_func, noise_audio_state, noise_video_state,
                                         simple_denoising_func)
from ltx_pipelines.utils.samplers import euler_denoising_loop
from ltx_pipelines.utils.types import PipelineComponents

from ltx_mlx.weights.load import LTXModelBundle
from ltx_mlx.cli.generate import main as generate
from ltx_mlx.conditioning import TemporalRegionMask
from ltx_mlx.diffusion import LTX2Scheduler
from ltx_mlx.media import write_mp4
from ltx_mlx.models.transformer import X0Model
from ltx_mlx.pipelines.common import Generation, euler_loop, guided, simple
from ltx_mlx.pipelines.settings import resolve_settings
from pipeline_fixtures import VIDEO_LATENT_CHANNELS, convert_folder, write_pipeline_checkpoints
from pipeline_parity_fixtures import FPS, FRAMES, H, TOL, W, InjectedNoiser, as_noise, contexts, stage_noise
# The parity fixtures: the tiny dev model + reference transformer, and the reference's audio-shape patch.
from pipeline_parity_fixtures import _reference_setup, models  # noqa: F401
from reference import assert_parity

PROMPT = "the cat jumps onto the table"
SMALL = ["--num-inference-steps", "2", "--video-stg-blocks", "1", "--audio-stg-blocks", "2", "--quiet"]


def write_source(path, frames: int, height: int, width: int, fps=24, audio: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    video = (rng.random((frames, height, width, 3)) * 255).astype(np.uint8)
    n = round(frames / fps * 44100)
    sound = (0.3 * np.sin(2 * np.pi * np.outer([330.0, 523.25], np.arange(n) / 44100))).astype(np.float32)
    write_mp4(path, video, fps, sound if audio else None, 44100 if audio else None)
    return path


def write_three_channel_source(path, frames: int = 9, size: int = 64, fps: int = 24):
    with av.open(str(path), "w", format="matroska") as c:
        v = c.add_stream("libx264", rate=fps)
        v.height = v.width = size
        v.pix_fmt = "yuv420p"
        a = c.add_stream("pcm_s16le", rate=16000)
        a.codec_context.layout = "3.0"
        pcm = np.zeros((1, round(frames / fps * 16000) * 3), np.int16)
        sound = av.AudioFrame.from_ndarray(pcm, format="s16", layout="3.0")
        sound.sample_rate, sound.pts = 16000, 0
        for packet in [*a.encode(sound), *a.encode(None)]:
            c.mux(packet)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * i, np.uint8), format="rgb24")
            c.mux(v.encode(frame))
        c.mux(v.encode(None))
    return path


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("mode", ["guided", "distilled"])
def test_retake_stage_matches_the_reference(models, tmp_path, mode):
    pipe, ref_model, cfg = models
    (rv, ra), ctx = contexts(cfg, 20)
    (nv, na), neg = contexts(cfg, 21)
    start, end = 0.2, 0.5
    shape = VideoPixelShape(batch=1, frames=FRAMES, height=H, width=W, fps=FPS)
    components = PipelineComponents(dtype=torch.float32, device=torch.device("cpu"))
    components.video_latent_channels = VIDEO_LATENT_CHANNELS
    video_params = dict(cfg_scale=3.0, stg_scale=1.0, stg_blocks=[1], rescale_scale=0.7, modality_scale=3.0)
    audio_params = dict(cfg_scale=7.0, stg_scale=0.5, stg_blocks=[2], rescale_scale=0.7, modality_scale=2.0)
    source = write_source(tmp_path / "source.mp4", FRAMES, H, W, FPS)
    settings = resolve_settings("retake", pipe.model_version, 3, prompt="unused", video_path=source,
                                start_time=start, end_time=end, video_guidance=video_params,
                                audio_guidance=audio_params)
    assert (settings.height, settings.width, settings.num_frames, settings.frame_rate) == (H, W, FRAMES, FPS)
    g0 = Generation(pipe, settings, progress=False)
    vt, at = g0.video_tools(H, W), g0.audio_tools()
    gen = torch.Generator().manual_seed(22)
    video = torch.randn(1, VIDEO_LATENT_CHANNELS, vt.frames, vt.height, vt.width, generator=gen)
    audio = torch.randn(1, at.channels, at.frames, at.mel_bins, generator=gen)  # the reference's layout
    noise = stage_noise(23, vt.token_count, at.token_count)
    g = Generation(pipe, replace(settings, noise=(as_noise(*noise),)), progress=False)

    if mode == "guided":
        ref_fn = multi_modal_guider_denoising_func(MultiModalGuider(RefGuiderParams(**video_params), nv),
                                                   MultiModalGuider(RefGuiderParams(**audio_params), na), rv, ra,
                                                   ref_model)
        ref_sigmas, sigmas = RefScheduler().execute(steps=3).to(torch.float32), LTX2Scheduler().execute(steps=3)
    else:
        ref_fn = simple_denoising_func(rv, ra, ref_model)
        ref_sigmas, sigmas = torch.tensor(DISTILLED_SIGMA_VALUES), DISTILLED_SIGMA_VALUES
    cpu, noiser = torch.device("cpu"), InjectedNoiser(noise)
    with torch.no_grad():
        v, v_tools = noise_video_state(shape, noiser, [RefTemporalRegionMask(start, end, FPS)], components,
                                       torch.float32, cpu, initial_latent=video)
        a, a_tools = noise_audio_state(shape, noiser, [RefTemporalRegionMask(start, end, FPS)], components,
                                       torch.float32, cpu, initial_latent=audio)
        v, a = euler_denoising_loop(ref_sigmas, v, a, EulerDiffusionStep(), ref_fn)
        ref_video = v_tools.unpatchify(v_tools.clear_conditioning(v)).latent
        ref_audio = a_tools.unpatchify(a_tools.clear_conditioning(a)).latent
    model = X0Model(pipe.transformer())
    fn = guided(model, ctx, neg, g.settings) if mode == "guided" else simple(model, ctx)
    region = TemporalRegionMask(start, end, FPS)
    ours_video, ours_audio = g.denoise("retake", 0, euler_loop(fn), sigmas, vt, at, [region],
                                       initial_video=mx.array(video.numpy().transpose(0, 2, 3, 4, 1)),
                                       initial_audio=mx.array(audio.numpy().transpose(0, 2, 3, 1)),
                                       audio_conditionings=[region])
    ours_video = np.array(ours_video).transpose(0, 4, 1, 2, 3)  # channels-last -> the reference's layout
    ours_audio = np.array(ours_audio).transpose(0, 3, 1, 2)
    ev = assert_parity(ours_video, ref_video, TOL, f"retake ({mode}) video latent")
    ea = assert_parity(ours_audio, ref_audio, TOL, f"retake ({mode}) audio latent")
    # Outside [start, end) the source latents come back untouched; inside they are regenerated.
    kept_v = np.all(ours_video == video.numpy(), axis=(0, 1, 3, 4))
    kept_a = np.all(ours_audio == audio.numpy(), axis=(0, 1, 3))
    assert 0 < kept_v.sum() < len(kept_v) and 0 < kept_a.sum() < len(kept_a), (kept_v, kept_a)
    print(f"retake ({mode}): video {ev:.2e}, audio {ea:.2e}; latent frames kept {kept_v.astype(int)}, "
          f"audio frames kept {kept_a.sum()}/{len(kept_a)}")


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def retake_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retake")
    distilled, dev, gemma, upsampler, lora = write_pipeline_checkpoints(tmp)
    return {"dev": convert_folder(dev, tmp / "dev-mlx", gemma, upsampler, lora),
            "distilled": convert_folder(distilled, tmp / "distilled-mlx", gemma, upsampler),
            "source": write_source(tmp / "source.mp4", 9, 64, 96, 25),
            "silent": write_source(tmp / "silent.mp4", 9, 64, 64, 24, audio=False),
            "ten": write_source(tmp / "ten.mp4", 10, 64, 64), "odd": write_source(tmp / "odd.mp4", 9, 48, 64),
            "three": write_three_channel_source(tmp / "three.mkv"),
            "tmp": tmp}


def read_mp4(path):
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video)])
        rate = video.average_rate
        audio = c.streams.audio[0]
        return frames, rate, audio.codec_context.name, audio.rate


@pytest.mark.parametrize("model,source", [("dev", "source"), ("distilled", "source"), ("dev", "silent")])
def test_generate_retake_keeps_the_source_format(retake_models, model, source, capsys):
    out = retake_models["tmp"] / f"retake-{model}-{source}.mp4"
    argv = ["--model", str(retake_models[model]), "--pipeline", "retake", "--prompt", PROMPT, "--video-path",
            str(retake_models[source]), "--start-time", "0.1", "--end-time", "0.25", "--output-path", str(out),
            "--seed", "3", *(SMALL if model == "dev" else ["--quiet"])]  # distilled: unguided, no step/STG flags
    assert generate(argv) == 0, capsys.readouterr().err
    frames, rate, codec, sample_rate = read_mp4(out)
    expected = (9, 64, 96, 3) if source == "source" else (9, 64, 64, 3)
    vocoder_rate = LTXModelBundle(retake_models[model]).vocoder().output_sampling_rate
    assert frames.shape == expected and (codec, sample_rate) == ("aac", vocoder_rate)
    assert rate == (Fraction(25) if source == "source" else Fraction(24))
    print(f"retake {model} {source}: {frames.shape} @ {rate}, aac {sample_rate} Hz")


RANGE = ["--start-time", "0.1", "--end-time", "0.2"]
BAD = [  # (args, words the one-line error must contain)
    (["--pipeline", "retake", *RANGE], ["--video-path"]),
    (["--pipeline", "retake", "--video-path", "SOURCE"], ["--start-time"]),
    (["--pipeline", "retake", "--video-path", "MISSING", *RANGE], ["does not exist"]),
    (["--pipeline", "retake", "--video-path", "NOT_MEDIA", *RANGE], ["could not read the video"]),
    (["--pipeline", "retake", "--video-path", "TEN", *RANGE], ["10 frames", "8k+1", "9 frames"]),
    (["--pipeline", "retake", "--video-path", "ODD", *RANGE], ["64x48", "multiples of 32"]),
    (["--pipeline", "retake", "--video-path", "SOURCE", "--start-time", "0.3", "--end-time", "0.2"],
     ["[0.3, 0.2)", "0.360"]),
    (["--pipeline", "retake", "--video-path", "SOURCE", "--start-time", "0.1", "--end-time", "2"],
     ["not inside the video", "0.360"]),
    (["--pipeline", "retake", "--video-path", "SOURCE", "--start-time", "-1", "--end-time", "0.2"],
     ["start time", ">= 0"]),
    (["--pipeline", "retake", "--video-path", "SOURCE", *RANGE, "--height", "128"], ["--height"]),
    (["--pipeline", "retake", "--video-path", "SOURCE", *RANGE, "--num-frames", "17"], ["--num-frames"]),
    (["--pipeline", "two-stage", "--video-path", "SOURCE", *RANGE], ["--pipeline retake"]),
    (["--pipeline", "retake", "--video-path", "THREE", *RANGE], ["3 channels", "stereo"]),
    (["--pipeline", "retake", "--video-path", "SOURCE", *RANGE, "--image", "IMAGE", "0", "1"], ["--image"]),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_retake_input_is_one_clear_line_before_any_work(retake_models, no_heavy_work, args, words, capsys):
    tmp = retake_models["tmp"]
    (tmp / "not-media.mp4").write_text("hello")
    subst = {"MISSING": str(tmp / "missing.mp4"), "NOT_MEDIA": str(tmp / "not-media.mp4"),
             "SOURCE": str(retake_models["source"]), "TEN": str(retake_models["ten"]),
             "ODD": str(retake_models["odd"]), "THREE": str(retake_models["three"]),
             "IMAGE": str(retake_models["source"])}
    base = ["--model", str(retake_models["dev"]), "--prompt", PROMPT, "--output-path", str(tmp / "bad.mp4"), *SMALL]
    rc = generate(base + [subst.get(a, a) for a in args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and err.startswith("generate.py: error: "), err
    for w in words:
        assert w in err, (w, err)
    assert "Traceback" not in err and not (tmp / "bad.mp4").exists()


def test_python_api_guided_with_dev_distilled_schedule_with_distilled(retake_models, monkeypatch):
    import ltx_mlx
    import ltx_mlx.pipelines.common as common

    steps = []
    real = common.Generation.denoise

    def denoise(self, name, stage, loop, sigmas, *args, **kwargs):
        steps.append((len(sigmas) - 1, self.settings.negative_prompt is not None))
        return real(self, name, stage, loop, sigmas, *args, **kwargs)

    monkeypatch.setattr(common.Generation, "denoise", denoise)
    kw = dict(pipeline="retake", video_path=retake_models["source"], start_time=0.0, end_time=0.2, seed=1,
              progress=False)
    guided = dict(num_inference_steps=2, video_guidance={"stg_blocks": [0]}, audio_guidance={"stg_blocks": [0]})
    for model in ("dev", "distilled"):
        pipe = ltx_mlx.load(retake_models[model])
        if model == "distilled":  # unguided: the step and guidance options would be ignored, so they are refused
            for name, value in guided.items():
                with pytest.raises(ValueError, match=f"retake on a distilled checkpoint .* would ignore .*{name}"):
                    pipe.generate(PROMPT, **kw, **{name: value})
            with pytest.raises(ValueError, match="negative_prompt"):
                pipe.generate(PROMPT, **kw, negative_prompt="blurry")
            assert not steps[1:]  # refused before any denoising
        result = pipe.generate(PROMPT, **kw, **(guided if model == "dev" else {}))
        assert result.frames.shape == (9, 64, 96, 3) and result.frame_rate == 25.0
        assert result.audio.shape == (2, round(9 / 25 * result.sample_rate))
        assert {"video encoding", "audio encoding", "text", "retake", "video decode"} <= set(result.timings)
        assert pipe._loaded == {}
    assert steps == [(2, True), (8, False)]
