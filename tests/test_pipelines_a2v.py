"""Audio-to-video (`--pipeline a2v`): both video-only stages against the reference's `denoise_video_only` from
injected noise (float32, CPU, within 1e-4 x max|ref|), end to end convert -> generate.py with the mp4's frames,
size, rate and soundtrack (the input audio itself, through AAC), and every bad audio input rejected in one line
before any model is built."""

from fractions import Fraction

import av
import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams as RefGuiderParams
from ltx_core.components.schedulers import LTX2Scheduler as RefScheduler
from ltx_core.conditioning import VideoConditionByLatentIndex as RefLatentIndex
from ltx_core.types import VideoPixelShape
from ltx_pipelines.utils.constants import STAGE_2_DISTILLED_SIGMA_VALUES
from ltx_pipelines.utils.helpers import denoise_video_only, multi_modal_guider_denoising_func, simple_denoising_func
from ltx_pipelines.utils.samplers import euler_denoising_loop
from ltx_pipelines.utils.types import PipelineComponents

import ltx_mlx
from ltx_mlx.cli.generate import main as generate
from ltx_mlx.conditioning import VideoConditionByLatentIndex
from ltx_mlx.diffusion import LTX2Scheduler, MultiModalGuiderParams
from ltx_mlx.media import read_audio, write_mp4
from ltx_mlx.models.transformer import X0Model
from ltx_mlx.pipelines.a2v import a2v_guided
from ltx_mlx.pipelines.common import Generation, euler_loop, simple
from ltx_mlx.pipelines.settings import resolve_settings
from pipeline_fixtures import VIDEO_LATENT_CHANNELS, convert_folder, write_pipeline_checkpoints
from pipeline_parity_fixtures import FPS, FRAMES, H, TOL, W, InjectedNoiser, as_noise, contexts, stage_noise
# The parity fixtures: the tiny dev model + reference transformer, and the reference's audio-shape patch.
from pipeline_parity_fixtures import _reference_setup, models  # noqa: F401
from reference import assert_parity

PROMPT = "a drummer plays in a small room"
SMALL = ["--height", "64", "--width", "64", "--num-frames", "9", "--num-inference-steps", "2",
         "--video-stg-blocks", "1", "--quiet"]
RATE = 44100


def write_wav(path, seconds: float, rate: int = RATE, channels: int = 2):
    """Two different tones (left 330 Hz, right 523 Hz) under a slow swell, s16 PCM."""
    t = np.arange(round(seconds * rate)) / rate
    swell = 0.3 + 0.2 * np.sin(2 * np.pi * 1.5 * t)
    x = np.stack([swell * np.sin(2 * np.pi * f * t) for f in (330.0, 523.25, 740.0)[:channels]])
    pcm = (x * 32767).astype(np.int16)
    layout = {1: "mono", 2: "stereo", 3: "3.0"}[channels]
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=rate)
        s.codec_context.layout = layout
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T).reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*s.encode(frame), *s.encode(None)]:
            c.mux(packet)
    return path


# ---------------------------------------------------------------------------------------------- parity


def test_a2v_stages_match_the_reference_denoise_video_only(models, tmp_path):
    """Stage 1 guided (CFG + STG + modality + rescale on video, audio guider at defaults, an image at frame 0)
    then stage 2 simple at 0.909375 from stage 1's video; the audio latent stays exactly the encoded one."""
    pipe, ref_model, cfg = models
    (rv, ra), ctx = contexts(cfg, 12)
    (nv, _), neg = contexts(cfg, 13)
    shape = VideoPixelShape(batch=1, frames=FRAMES, height=H, width=W, fps=FPS)
    components = PipelineComponents(dtype=torch.float32, device=torch.device("cpu"))
    components.video_latent_channels = VIDEO_LATENT_CHANNELS
    gen = torch.Generator().manual_seed(14)
    image = torch.randn(1, VIDEO_LATENT_CHANNELS, 1, H // 32, W // 32, generator=gen)
    video_params = dict(cfg_scale=3.0, stg_scale=1.0, stg_blocks=[1], rescale_scale=0.7, modality_scale=3.0)
    wav = write_wav(tmp_path / "a.wav", 1.0)

    def generation(noise):
        settings = resolve_settings("a2v", pipe.model_version, 3, prompt="unused", height=H, width=W,
                                    num_frames=FRAMES, frame_rate=FPS, noise=noise, video_guidance=video_params,
                                    audio_path=wav)
        return Generation(pipe, settings, progress=False)

    g0 = generation(())
    vt, at = g0.video_tools(H, W), g0.audio_tools()
    audio = torch.randn(1, at.channels, at.frames, at.mel_bins, generator=gen)  # the reference's layout
    n1, n2 = stage_noise(15, vt.token_count, at.token_count), stage_noise(16, vt.token_count, at.token_count)
    g = generation((as_noise(*n1), as_noise(*n2)))
    assert g.settings.audio_guider == MultiModalGuiderParams()

    def ref_guided(sigmas, v, a, stepper):
        fn = multi_modal_guider_denoising_func(MultiModalGuider(RefGuiderParams(**video_params), nv),
                                               MultiModalGuider(RefGuiderParams()), rv, ra, ref_model)
        return euler_denoising_loop(sigmas, v, a, stepper, fn)

    def ref_simple(sigmas, v, a, stepper):
        return euler_denoising_loop(sigmas, v, a, stepper, simple_denoising_func(rv, ra, ref_model))

    cpu = torch.device("cpu")
    with torch.no_grad():
        s1 = RefScheduler().execute(steps=3).to(torch.float32)
        ref_1 = denoise_video_only(shape, [RefLatentIndex(image, 0.9, 0)], InjectedNoiser(n1), s1,
                                   EulerDiffusionStep(), ref_guided, components, torch.float32, cpu,
                                   initial_audio_latent=audio)
        s2 = torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES)
        ref_2 = denoise_video_only(shape, [], InjectedNoiser(n2), s2, EulerDiffusionStep(), ref_simple, components,
                                   torch.float32, cpu, noise_scale=s2[0], initial_video_latent=ref_1.latent,
                                   initial_audio_latent=audio)
    model = X0Model(pipe.transformer())
    conds = [VideoConditionByLatentIndex(mx.array(image.numpy().transpose(0, 2, 3, 4, 1)), 0.9, 0)]
    initial_audio = mx.array(audio.numpy().transpose(0, 2, 3, 1))
    loop = euler_loop(a2v_guided(model, ctx, neg, g.settings))
    v1, a1 = g.denoise("stage 1", 0, loop, LTX2Scheduler().execute(steps=3), vt, at, conds,
                       initial_audio=initial_audio, freeze_audio=True)
    e1 = assert_parity(np.array(v1).transpose(0, 4, 1, 2, 3), ref_1.latent, TOL, "a2v stage 1 video latent")
    v2, a2 = g.denoise("stage 2", 1, euler_loop(simple(model, ctx)), STAGE_2_DISTILLED_SIGMA_VALUES, vt, at,
                       noise_scale=STAGE_2_DISTILLED_SIGMA_VALUES[0], initial_video=v1, initial_audio=initial_audio,
                       freeze_audio=True)
    e2 = assert_parity(np.array(v2).transpose(0, 4, 1, 2, 3), ref_2.latent, TOL, "a2v stage 2 video latent")
    kept = np.array(initial_audio)
    assert np.array_equal(np.array(a1), kept) and np.array_equal(np.array(a2), kept)
    print(f"a2v stage 1: {e1:.2e}, stage 2: {e2:.2e} (max|ref| {ref_1.latent.abs().max():.2f} / "
          f"{ref_2.latent.abs().max():.2f}); audio latent unchanged")


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def a2v_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("a2v")
    distilled, dev, gemma, upsampler, lora = write_pipeline_checkpoints(tmp)
    silent = tmp / "silent.mp4"
    write_mp4(silent, np.zeros((3, 32, 32, 3), np.uint8), 24)
    return {"dev": convert_folder(dev, tmp / "dev-mlx", gemma, upsampler, lora),
            "distilled": convert_folder(distilled, tmp / "distilled-mlx", gemma, upsampler),
            "wav": write_wav(tmp / "music.wav", 1.2), "mono": write_wav(tmp / "mono.wav", 1.2, 22050, 1),
            "three": write_wav(tmp / "three.wav", 1.2, channels=3), "short": write_wav(tmp / "short.wav", 0.3),
            "silent": silent, "tmp": tmp}


def read_mp4(path):
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video)])
        rate = video.average_rate
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        audio = np.concatenate([f.to_ndarray() for f in c.decode(stream)], axis=-1)
        return frames, rate, stream.codec_context.name, stream.rate, audio


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 2048) -> float:
    """Highest normalised correlation of b against a over lags 0..max_lag (AAC's encoder delay)."""
    n = len(a) - max_lag
    scores = [np.dot(a[:n], b[lag:lag + n]) / (np.linalg.norm(a[:n]) * np.linalg.norm(b[lag:lag + n]) + 1e-12)
              for lag in range(0, min(max_lag, len(b) - n) + 1)]
    return float(max(scores))


def test_generate_a2v_keeps_the_input_audio(a2v_models, capsys):
    out = a2v_models["tmp"] / "a2v.mp4"
    argv = ["--model", str(a2v_models["dev"]), "--pipeline", "a2v", "--prompt", PROMPT, "--frame-rate", "24",
            "--audio-path", str(a2v_models["wav"]), "--audio-start-time", "0.25", "--output-path", str(out),
            "--seed", "3", *SMALL]
    assert generate(argv) == 0, capsys.readouterr().err
    frames, rate, codec, sample_rate, audio = read_mp4(out)
    assert frames.shape == (9, 64, 64, 3) and rate == Fraction(24) and (codec, sample_rate) == ("aac", RATE)
    source, _ = read_audio(a2v_models["wav"], 0.25, 9 / 24)
    assert audio.shape[0] == 2 and audio.shape[1] >= source.shape[1]
    scores = [best_correlation(source[c], audio[c]) for c in range(2)]
    assert min(scores) > 0.99, scores
    print(f"a2v: 9 frames 64x64 @ 24, aac {sample_rate} Hz, correlation with the input (L, R) "
          f"{scores[0]:.4f}, {scores[1]:.4f}")


def test_python_api_returns_the_waveform_as_read(a2v_models):
    pipe = ltx_mlx.load(a2v_models["dev"])
    kw = dict(pipeline="a2v", height=64, width=128, num_frames=9, frame_rate=25.0, num_inference_steps=1,
              video_guidance={"stg_blocks": [0]}, audio_path=a2v_models["mono"], audio_start_time=0.1,
              audio_max_duration=0.5, seed=2, progress=False, verbose=True)
    with pytest.warns(UserWarning, match="mono"):
        result = pipe.generate(PROMPT, **kw)
    source, rate = read_audio(a2v_models["mono"], 0.1, 0.5)
    assert result.frames.shape == (9, 64, 128, 3) and result.sample_rate == rate == 22050
    assert result.audio.shape == (2, source.shape[1]) and np.array_equal(result.audio, np.repeat(source, 2, 0))
    assert {"audio encoding", "text", "stage 1", "upsample", "stage 2", "video decode"} <= set(result.timings)
    assert "audio decode" not in result.timings and pipe._loaded == {}
    with pytest.warns(UserWarning, match="mono"):
        other = pipe.generate(PROMPT, **{**kw, "audio_start_time": 0.6})
    assert not np.array_equal(other.frames, result.frames)  # the audio steers the video


BAD = [  # (model, args, words the one-line error must contain)
    ("dev", [], ["--audio-path"]),
    ("dev", ["--audio-path", "MISSING"], ["does not exist"]),
    ("dev", ["--audio-path", "NOT_MEDIA"], ["could not read audio"]),
    ("dev", ["--audio-path", "SILENT"], ["no audio stream"]),
    ("dev", ["--audio-path", "SHORT"], ["0.300 s", "0.375 s"]),
    ("dev", ["--audio-path", "WAV", "--audio-start-time", "1.0"], ["0.200 s", "0.375 s"]),
    ("dev", ["--audio-path", "WAV", "--audio-start-time", "5"], ["past its end"]),
    ("dev", ["--audio-path", "WAV", "--audio-start-time", "-1"], ["start time", ">= 0"]),
    ("dev", ["--audio-path", "WAV", "--audio-max-duration", "0"], ["max duration", "> 0"]),
    ("dev", ["--audio-path", "WAV", "--audio-max-duration", "0.2"], ["0.2 s", "shorter than the video"]),
    ("dev", ["--audio-path", "THREE"], ["3 audio channels", "stereo"]),
    ("distilled", ["--audio-path", "WAV"], ["dev checkpoint"]),
    ("dev", ["--pipeline", "two-stage", "--audio-path", "WAV"], ["--pipeline a2v"]),
    # a2v keeps the given audio: audio guidance would be ignored
    ("dev", ["--audio-path", "WAV", "--audio-stg-guidance-scale", "1"],
     ["keeps the given audio", "--audio-stg-guidance-scale (audio_guidance['stg_scale'])"]),
    ("dev", ["--audio-path", "WAV", "--audio-cfg-guidance-scale", "7", "--v2a-guidance-scale", "2"],
     ["--audio-cfg-guidance-scale (audio_guidance['cfg_scale'])", "--v2a-guidance-scale"]),
]


@pytest.mark.parametrize("model,args,words", BAD, ids=[" ".join(a) or "no audio" for _, a, _ in BAD])
def test_bad_audio_input_is_one_clear_line_before_any_work(a2v_models, no_heavy_work, model, args, words, capsys):
    tmp = a2v_models["tmp"]
    (tmp / "not-media.wav").write_text("hello")
    subst = {"MISSING": str(tmp / "missing.wav"), "NOT_MEDIA": str(tmp / "not-media.wav"),
             "SILENT": str(a2v_models["silent"]), "SHORT": str(a2v_models["short"]), "WAV": str(a2v_models["wav"]),
             "THREE": str(a2v_models["three"])}
    pipeline = [] if "--pipeline" in args else ["--pipeline", "a2v"]
    base = ["--model", str(a2v_models[model]), *pipeline, "--prompt", PROMPT, "--output-path", str(tmp / "bad.mp4"),
            "--frame-rate", "24", *SMALL]
    rc = generate(base + [subst.get(a, a) for a in args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and err.startswith("generate.py: error: "), err
    for w in words:
        assert w in err, (w, err)
    assert "Traceback" not in err and not (tmp / "bad.mp4").exists()
