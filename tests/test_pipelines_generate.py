"""End to end: tiny official checkpoints → convert.py → generate.py for every pipeline → the mp4 decoded with
PyAV (frame count, size, frame rate, AAC stereo at the vocoder's rate lasting as long as the video); same seed,
same frames; the Python API; and every bad input rejected with a one-line error before any model is built."""

import os
from fractions import Fraction

import av
import numpy as np
import pytest

import ltx_mlx
import mlx.core as mx
from ltx_mlx.models.vae_tiling import SpatialTilingConfig, TemporalTilingConfig, TilingConfig
from ltx_mlx.weights.load import LTXModelBundle
from ltx_mlx.cli.generate import main as generate
from pipeline_fixtures import convert_folder, write_pipeline_checkpoints

PROMPT = "a cat walks on the beach at sunset"
SMALL_DISTILLED = ["--height", "64", "--width", "64", "--num-frames", "9", "--quiet"]
SMALL = [*SMALL_DISTILLED, "--num-inference-steps", "2", "--video-stg-blocks", "1", "--audio-stg-blocks", "2"]


def small(pipeline: str) -> list[str]:
    """The small-run flags; the distilled pipeline refuses the steps and guidance flags it would ignore."""
    return SMALL_DISTILLED if pipeline == "distilled" else SMALL


def write_png(path, seed=0, size=(48, 80)):
    img = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    with av.open(str(path), "w", format="image2") as c:
        s = c.add_stream("png")
        s.height, s.width = size
        s.pix_fmt = "rgb24"
        for packet in [*s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")), *s.encode(None)]:
            c.mux(packet)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generate")
    distilled, dev, gemma, upsampler, lora = write_pipeline_checkpoints(tmp)
    out = {"distilled": convert_folder(distilled, tmp / "distilled-mlx", gemma, upsampler),
           "dev": convert_folder(dev, tmp / "dev-mlx", gemma, upsampler, lora),
           "dev-no-lora": convert_folder(dev, tmp / "dev-no-lora-mlx", gemma, upsampler),
           "image": write_png(tmp / "image.png"), "tmp": tmp}
    tmp2 = tmp / "ltx2"
    tmp2.mkdir()
    distilled_2, _, gemma_2, upsampler_2, _ = write_pipeline_checkpoints(tmp2, "2")
    out["distilled-2"] = convert_folder(distilled_2, tmp2 / "distilled-mlx", gemma_2, upsampler_2)
    return out


def read_mp4(path):
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video)])
        rate = video.average_rate
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return frames, rate, None
        stream = c.streams.audio[0]
        info = (stream.codec_context.name, stream.codec_context.layout.nb_channels, stream.rate)
        samples = sum(f.samples for f in c.decode(stream))
        duration = float(stream.duration * stream.time_base)
    return frames, rate, (*info, samples, duration)


CASES = [  # model, pipeline, frame rate, extra args
    ("distilled", "distilled", "24", ["--image", "IMAGE", "0", "1.0"]),
    ("dev", "one-stage", str(24000 / 1001), []),
    ("dev", "two-stage", "25", ["--image", "IMAGE", "8", "0.7", "20"]),
    ("dev", "hq", "24", []),
    ("dev", "keyframes", "24", ["--image", "IMAGE", "0", "1.0", "--image", "IMAGE", "8", "0.9"]),
    ("dev", "distilled", "24", []),  # dev checkpoint + its distilled LoRA
    ("distilled-2", "distilled", "30", []),  # LTX-2: HiFi-GAN vocoder at 24 kHz
]


@pytest.mark.parametrize("model,pipeline,fps,extra", CASES, ids=[f"{m}:{p}" for m, p, _, _ in CASES])
def test_generate_writes_the_requested_mp4(models, model, pipeline, fps, extra, capsys):
    out = models["tmp"] / f"{model}-{pipeline}.mp4"
    extra = [str(models["image"]) if a == "IMAGE" else a for a in extra]
    argv = ["--model", str(models[model]), "--pipeline", pipeline, "--prompt", PROMPT, "--frame-rate", fps,
            "--output-path", str(out), "--seed", "3", *small(pipeline), *extra]
    assert generate(argv) == 0, capsys.readouterr().err
    frames, rate, (codec, channels, sample_rate, samples, duration) = read_mp4(out)
    expected_rate = Fraction(float(fps)).limit_denominator(1001)
    assert frames.shape == (9, 64, 64, 3) and rate == expected_rate
    vocoder_rate = LTXModelBundle(models[model]).vocoder().output_sampling_rate
    assert (codec, channels, sample_rate) == ("aac", 2, vocoder_rate)
    video_seconds = 9 / float(expected_rate)
    assert abs(duration - video_seconds) <= 1 / float(expected_rate), (duration, video_seconds)
    assert round(video_seconds * sample_rate) <= samples <= round(video_seconds * sample_rate) + 2048  # AAC framing
    print(f"{model}:{pipeline}: 9 frames @ {rate}, aac {sample_rate} Hz, {duration:.4f} s vs video "
          f"{video_seconds:.4f} s ({samples} decoded samples)")


def test_same_seed_same_frames_other_seed_other_frames(models, capsys):
    runs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        out = models["tmp"] / f"seed-{name}.mp4"
        argv = ["--model", str(models["distilled"]), "--prompt", PROMPT, "--seed", seed, "--output-path", str(out),
                "--no-audio", *SMALL_DISTILLED]
        assert generate(argv) == 0, capsys.readouterr().err
        runs[name], _, audio = read_mp4(out)
        assert audio is None  # --no-audio: no audio stream
    assert np.array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])


def test_python_api(models, tmp_path):
    pipe = ltx_mlx.load(models["distilled"])
    assert isinstance(pipe, LTXModelBundle)
    result = pipe.generate(prompt=PROMPT, height=64, width=128, num_frames=17, frame_rate=24.0, seed=1,
                           progress=False, verbose=True)
    assert result.frames.dtype == np.uint8 and result.frames.shape == (17, 64, 128, 3)
    assert result.audio.dtype == np.float32 and result.audio.shape == (2, round(17 / 24 * result.sample_rate))
    assert {"text", "stage 1", "upsample", "stage 2", "audio decode", "video decode"} <= set(result.timings)
    assert pipe._loaded == {}  # every model freed
    path = result.save(tmp_path / "api.mp4")
    frames, rate, audio = read_mp4(path)
    assert frames.shape == result.frames.shape and rate == 24 and audio[:3] == ("aac", 2, result.sample_rate)
    again = pipe.generate(prompt=PROMPT, height=64, width=128, num_frames=17, seed=1, progress=False)
    assert np.array_equal(again.frames, result.frames) and np.array_equal(again.audio, result.audio)


def test_injected_noise_replaces_the_seed(models):
    pipe = ltx_mlx.load(models["distilled"])
    rng = np.random.default_rng(0)
    # stage 1: 3 latent frames x 1 x 2 tokens at half size; stage 2: 3 x 2 x 4; audio: round(17 / 24 * 25) frames
    noise = [{"video": rng.standard_normal((1, n, 8)).astype(np.float32),
              "audio": rng.standard_normal((1, 18, 32)).astype(np.float32)} for n in (6, 24)]
    runs = [pipe.generate(prompt=PROMPT, height=64, width=128, num_frames=17, seed=s, progress=False,
                          noise=[{k: mx.array(v) for k, v in n.items()} for n in noise]) for s in (1, 2)]
    seeded = pipe.generate(prompt=PROMPT, height=64, width=128, num_frames=17, seed=1, progress=False)
    assert np.array_equal(runs[0].frames, runs[1].frames) and np.array_equal(runs[0].audio, runs[1].audio)
    assert not np.array_equal(runs[0].frames, seeded.frames)
    with pytest.raises(ValueError, match="expected"):
        pipe.generate(prompt=PROMPT, height=64, width=128, num_frames=17, progress=False,
                      noise=[{"video": mx.zeros((1, 5, 8)), "audio": mx.zeros((1, 18, 32))}])
    with pytest.raises(ValueError, match="one entry per stage"):
        pipe.generate(prompt=PROMPT, height=64, width=128, num_frames=17, progress=False, noise=[None, None, None])


def test_tiled_decode_streams_chunks_into_the_writer(models, tmp_path, monkeypatch):
    import ltx_mlx.pipelines.common as common

    chunks = []
    real = common.write_mp4

    def spy(path, video, *args, **kwargs):
        def counted():
            for c in video:
                chunks.append(c.shape)
                yield c
        return real(path, counted(), *args, **kwargs)

    monkeypatch.setattr(common, "write_mp4", spy)
    tiling = TilingConfig(SpatialTilingConfig(64, 32), TemporalTilingConfig(16, 8))
    out = tmp_path / "tiled.mp4"
    result = ltx_mlx.load(models["distilled"]).generate(prompt=PROMPT, height=128, width=128, num_frames=33,
                                                       tiling=tiling, output_path=out, progress=False)
    frames, _, _ = read_mp4(out)
    assert len(chunks) > 1 and sum(c[0] for c in chunks) == 33 and frames.shape == (33, 128, 128, 3)
    assert result.frames.shape == frames.shape


# ---------------------------------------------------------------------------------------------- bad input


BAD = [  # (model, args, words the one-line error must contain)
    ("distilled", ["--num-frames", "120"], ["120", "8k+1", "113", "121"]),
    ("distilled", ["--num-frames", "0"], ["num_frames", "8k+1"]),
    ("dev", ["--pipeline", "one-stage", "--height", "100"], ["height 100", "multiple of 32"]),
    ("distilled", ["--width", "96"], ["width 96", "multiple of 64"]),
    ("dev", ["--pipeline", "two-stage", "--height", "160"], ["height 160", "multiple of 64"]),
    ("distilled", ["--image", "MISSING", "0", "1"], ["does not exist"]),
    ("distilled", ["--image", "NOT_IMAGE", "0", "1"], ["Could not read an image"]),
    ("distilled", ["--image", "IMAGE", "9", "1"], ["frame 9", "0..8"]),
    ("distilled", ["--image", "IMAGE", "-1", "1"], ["frame -1"]),
    ("distilled", ["--image", "IMAGE", "0", "1.5"], ["1.5", "[0, 1]"]),
    ("distilled", ["--image", "IMAGE", "0", "-0.1"], ["-0.1", "[0, 1]"]),
    ("distilled", ["--pipeline", "two-stage"], ["dev checkpoint", "distilled checkpoint"]),
    ("distilled", ["--pipeline", "one-stage"], ["dev checkpoint"]),
    ("dev-no-lora", ["--pipeline", "distilled"], ["distilled checkpoint", "--distilled-lora"]),
    ("dev-no-lora", ["--pipeline", "two-stage"], ["distilled LoRA", "--distilled-lora"]),
    ("dev-no-lora", ["--pipeline", "hq"], ["distilled LoRA"]),
    ("distilled", ["--output-path", "NO_DIR/out.mp4"], ["does not exist"]),
    ("distilled", ["--output-path", "TMP"], ["is a folder"]),
    ("dev", ["--pipeline", "keyframes"], ["at least one --image"]),
    ("distilled", ["--lora", "MISSING"], ["does not exist"]),
    ("dev", ["--pipeline", "one-stage", "--video-stg-blocks", "7"], ["STG blocks [7]", "0..2", "--video-stg-blocks"]),
    ("distilled", ["--frame-rate", "0"], ["frame_rate"]),
    ("dev", ["--pipeline", "two-stage", "--checkpoint-kind", "distilled"], ["dev checkpoint"]),
    ("distilled", ["--checkpoint-kind", "dev"], ["--distilled-lora"]),
    ("dev", ["--pipeline", "two-stage", "--distilled-lora-strength-stage-1", "0.3"], ["hq pipeline only"]),
    ("dev", ["--distilled-lora-strength-stage-2", "0.3"], ["strength stored at conversion"]),
]


@pytest.mark.parametrize("model,args,words", BAD, ids=[" ".join(a) for _, a, _ in BAD])
def test_bad_input_is_one_clear_line_before_any_work(models, no_heavy_work, model, args, words, capsys):
    tmp = models["tmp"]
    (tmp / "not-an-image.png").write_text("hello")
    subst = {"IMAGE": str(models["image"]), "MISSING": str(tmp / "missing.png"), "NOT_IMAGE": str(tmp / "not-an-image.png"),
             "NO_DIR/out.mp4": str(tmp / "no-such-dir" / "out.mp4"), "TMP": str(tmp)}
    pipeline = args[args.index("--pipeline") + 1] if "--pipeline" in args else "distilled"
    base = ["--model", str(models[model]), "--prompt", PROMPT, "--output-path", str(tmp / "bad.mp4"), *small(pipeline)]
    rc = generate(base + [subst.get(a, a) for a in args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and err.startswith("generate.py: error: "), err
    for w in words:
        assert w in err, (w, err)
    assert "Traceback" not in err and not (tmp / "bad.mp4").exists()


BAD_CHECKS = [  # (model, args, words): the checks of reliability issue 12, each a class with several members
    # options the chosen pipeline would ignore
    ("distilled", ["--num-inference-steps", "4"], ["would ignore", "--num-inference-steps (num_inference_steps)"]),
    ("distilled", ["--video-cfg-guidance-scale", "3"], ["--video-cfg-guidance-scale (video_guidance['cfg_scale'])"]),
    ("distilled", ["--audio-stg-blocks", "1"], ["--audio-stg-blocks (audio_guidance['stg_blocks'])"]),
    ("distilled", ["--negative-prompt", "blurry"], ["--negative-prompt (negative_prompt)"]),
    ("dev", ["--pipeline", "two-stage", "--audio-start-time", "1"], ["--audio-start-time", "a2v pipeline"]),
    ("dev", ["--pipeline", "one-stage", "--audio-max-duration", "1"], ["--audio-max-duration", "a2v pipeline"]),
    # degenerate clip durations, sizes beyond the up-front bound, non-positive sizes
    ("distilled", ["--frame-rate", "1000"], ["9 frames at 1000 fps", "[0.015, 450)"]),
    ("distilled", ["--frame-rate", "0.001"], ["9000 s", "600 s"]),
    ("distilled", ["--num-frames", "1", "--frame-rate", "60"], ["1 frames at 60 fps", "[0.001667, 50)"]),
    ("distilled", ["--height", "4096", "--width", "4096", "--num-frames", "257"], ["540,672 video tokens", "131,072"]),
    ("distilled", ["--height", "-64"], ["height (--height) must be a positive multiple of 64"]),
    ("dev", ["--pipeline", "one-stage", "--width", "0"], ["width (--width) must be a positive multiple of 32"]),
    # an image too small for the H.264 round trip
    ("distilled", ["--image", "TINY", "0", "1"], ["1x1", "CRF 33", "CRF 0"]),
    ("distilled", ["--image", "TINY", "0", "1", "20"], ["CRF 20", "CRF 0"]),
    # output extensions
    ("distilled", ["--output-path", "TMP/out.mov"], ["does not end in .mp4"]),
    ("distilled", ["--output-path", "TMP/out"], ["does not end in .mp4"]),
    ("distilled", ["--output-path", "TMP/out.mp4.txt"], ["does not end in .mp4"]),
    # conversion options with a model that is already converted
    ("distilled", ["--gemma-root", "TINY"], ["--gemma-root (gemma_root)", "already converted"]),
    ("distilled", ["--dtype", "float32"], ["--dtype (dtype)", "already converted"]),
    ("distilled", ["--spatial-upsampler-path", "TINY", "--dtype", "float16"],
     ["--spatial-upsampler-path (spatial_upsamplers), --dtype (dtype)", "official .safetensors"]),
    ("dev", ["--pipeline", "one-stage", "--distilled-lora", "TINY"], ["not an official .safetensors", "--distilled-lora"]),
]


@pytest.mark.parametrize("model,args,words", BAD_CHECKS, ids=[" ".join(a) for _, a, _ in BAD_CHECKS])
def test_checks_before_any_work(models, no_heavy_work, model, args, words, capsys):
    tmp = models["tmp"]
    if not (tmp / "tiny.png").exists():
        write_png(tmp / "tiny.png", size=(1, 1))
    subst = {"TINY": str(tmp / "tiny.png")}
    pipeline = args[args.index("--pipeline") + 1] if "--pipeline" in args else "distilled"
    out = [a.replace("TMP", str(tmp)) for a in args[args.index("--output-path"):][:2]] if "--output-path" in args \
        else ["--output-path", str(tmp / "bad.mp4")]
    args = [subst.get(a, a) for a in args if a not in out and not a.startswith("TMP")]
    rc = generate(["--model", str(models[model]), "--prompt", PROMPT, *small(pipeline), *args, *out])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and err.startswith("generate.py: error: "), err
    for w in words:
        assert w in err, (w, err)
    assert "Traceback" not in err and not any(p.name.startswith((".bad.mp4", "bad.mp4", "out")) for p in tmp.iterdir())


NON_FINITE = [  # every number the command line takes: nan and inf are usage errors naming the flag
    ["--frame-rate", "nan"], ["--frame-rate", "inf"], ["--video-cfg-guidance-scale", "nan"],
    ["--audio-rescale-scale=-inf"], ["--a2v-guidance-scale", "nan"], ["--distilled-lora-strength-stage-2", "inf"],
    ["--audio-start-time", "nan"], ["--audio-max-duration", "inf"], ["--start-time", "nan"], ["--end-time", "inf"],
    ["--image", "x.png", "0", "nan"], ["--lora", "a.safetensors", "inf"], ["--seed", "1.5"],
]


@pytest.mark.parametrize("args", NON_FINITE, ids=[" ".join(a) for a in NON_FINITE])
def test_non_finite_numbers_are_usage_errors(models, no_heavy_work, args, capsys):
    out = models["tmp"] / "nonfinite.mp4"
    with pytest.raises(SystemExit) as e:
        generate(["--model", str(models["distilled"]), "--prompt", PROMPT, "--output-path", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("generate.py: error: argument " + args[0].split("=")[0]), err
    assert ("finite" in err[-1] or "invalid int" in err[-1]) and not out.exists()


def test_python_api_checks_before_any_work(models, no_heavy_work):
    """Non-finite numbers, ignored options, type mistakes and degenerate values in the Python API: one
    TypeError / ValueError naming the argument, before any model is built."""
    pipe = ltx_mlx.load(models["distilled"])
    dev = ltx_mlx.load(models["dev"])
    image = str(models["image"])
    out = models["tmp"] / "api-bad.mp4"
    kw = dict(height=64, width=64, num_frames=9, progress=False, output_path=out)
    cases = [
        (pipe, dict(frame_rate=float("nan")), ValueError, "frame_rate (--frame-rate) must be a finite number"),
        (pipe, dict(images=[(image, 0, float("inf"))]), ValueError, "strength (--image STRENGTH) must be a finite"),
        (dev, dict(pipeline="one-stage", video_guidance={"cfg_scale": float("nan")}), ValueError,
         "video_guidance['cfg_scale'] (--video-cfg-guidance-scale) must be a finite number"),
        (dev, dict(pipeline="one-stage", audio_guidance={"rescale_scale": float("-inf")}), ValueError,
         "audio_guidance['rescale_scale'] (--audio-rescale-scale)"),
        (dev, dict(pipeline="two-stage", distilled_lora_strengths=(None, float("nan"))), ValueError,
         "distilled_lora_strengths[1] (--distilled-lora-strength-stage-2) must be a finite"),
        (dev, dict(pipeline="one-stage", seed=1.5), TypeError, "seed (--seed) must be an integer"),
        (pipe, dict(num_inference_steps=4), ValueError, "would ignore --num-inference-steps"),
        (pipe, dict(video_guidance={"stg_scale": 0.0}), ValueError, "video_guidance['stg_scale']"),
        (pipe, dict(prompt=["a", "list"]), TypeError, "prompt (--prompt) must be a str"),
        (pipe, dict(height="64"), TypeError, "height (--height) must be an integer"),
        (pipe, dict(num_frames=9.0), TypeError, "num_frames (--num-frames) must be an integer"),
        (pipe, dict(images=image), TypeError, "images (--image) must be a list of (path, frame_idx, strength"),
        (pipe, dict(images=[image]), TypeError, "each of images (--image) is (path, frame_idx, strength"),
        (pipe, dict(images=[(image, 0.5, 1.0)]), TypeError, "frame_idx (--image FRAME_IDX) must be an integer"),
        (pipe, dict(video_guidance=[1]), TypeError, "video_guidance must be a dict"),
        (dev, dict(pipeline="one-stage", video_guidance={"cfg": 3.0}), ValueError, "unknown keys ['cfg']"),
        (pipe, dict(distilled_lora_strengths=0.5), TypeError, "distilled_lora_strengths must be a pair"),
        (pipe, dict(output_path=3), TypeError, "output_path (--output-path) must be a str"),
        (pipe, dict(output_path=models["tmp"] / "api-bad.avi"), ValueError, "does not end in .mp4"),
        (pipe, dict(frame_rate=2000.0), ValueError, "the clip must last"),
    ]
    for bundle, args, error, words in cases:
        if bundle is dev:  # this tiny transformer has 3 blocks: STG on block 0, not the version's default
            for m in ("video", "audio"):
                if isinstance(args.get(f"{m}_guidance", {}), dict):
                    args[f"{m}_guidance"] = {"stg_blocks": [0], **args.get(f"{m}_guidance", {})}
        args = {"prompt": PROMPT, **kw, **args}
        with pytest.raises(error) as e:
            bundle.generate(**args)
        assert words in str(e.value), (args, str(e.value))
    lora = [("a.safetensors", 1.0, 2)], "a.safetensors", [("a.safetensors", float("nan"))], [3], ("a.safetensors", 1)
    for loras, error in zip(lora, (TypeError, TypeError, ValueError, TypeError, TypeError)):
        with pytest.raises(error, match="lora|LoRA"):
            ltx_mlx.load(models["distilled"], loras)
    assert not out.exists()


def test_result_save_refuses_other_extensions(tmp_path):
    from ltx_mlx.pipelines.common import GenerationResult

    result = GenerationResult(np.zeros((1, 32, 32, 3), np.uint8), None, None, 24.0)
    for name in ("clip.mov", "clip.webm", "clip", "clip.MP4.gif"):
        with pytest.raises(ValueError, match="does not end in .mp4"):
            result.save(tmp_path / name)
    assert os.listdir(tmp_path) == []
    assert result.save(tmp_path / "clip.MP4") and os.listdir(tmp_path) == ["clip.MP4"]


def test_a_second_run_to_the_same_path_is_refused_and_a_dead_runs_leftovers_cleaned(models, capsys):
    import subprocess
    import sys

    from ltx_mlx.media import lock_path

    tmp = models["tmp"]
    out = tmp / "locked.mp4"
    argv = ["--model", str(models["distilled"]), "--prompt", PROMPT, "--output-path", str(out), "--seed", "2",
            *SMALL_DISTILLED]
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(lock_path(out), "w") as f:  # a live run holds the path
            f.write(str(owner.pid))
        assert generate(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"Another run (process {owner.pid}) is writing" in err[0] and not out.exists()
    finally:
        owner.kill()
        owner.wait()
    # The owner died (as if SIGKILLed) with its lock and a partial file left: the next run cleans both.
    partial = tmp / f".locked.mp4.{owner.pid}-0123abcd.partial"
    partial.write_bytes(b"half an mp4")
    mine = tmp / f".locked.mp4.{os.getpid()}-89abcdef.partial"  # a live process's partial is kept
    mine.write_bytes(b"in progress")
    assert generate(argv) == 0, capsys.readouterr().err
    frames, _, _ = read_mp4(out)
    assert frames.shape == (9, 64, 64, 3)
    assert not partial.exists() and not os.path.exists(lock_path(out)) and mine.exists()
    mine.unlink()
    assert sorted(p.name for p in tmp.iterdir() if "locked" in p.name) == ["locked.mp4"]


def test_malformed_flags_are_usage_errors(models, capsys):
    for args in (["--image", "x.png", "zero", "1"], ["--lora", "a.safetensors", "strong"], ["--image", "x.png", "0"]):
        with pytest.raises(SystemExit) as e:
            generate(["--prompt", PROMPT, *args])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("generate.py: error: ")


def test_each_model_is_freed_when_its_stage_is_done(models, monkeypatch):
    import ltx_mlx.pipelines.common as common

    seen = {}
    real_denoise, real_decode = common.Generation.denoise, common.Generation.decode_video

    def denoise(self, name, *args, **kwargs):
        seen[name] = sorted(k[0] for k in self.bundle._loaded)
        return real_denoise(self, name, *args, **kwargs)

    def decode_video(self, *args, **kwargs):
        seen["video decode"] = sorted(k[0] for k in self.bundle._loaded)
        return real_decode(self, *args, **kwargs)

    monkeypatch.setattr(common.Generation, "denoise", denoise)
    monkeypatch.setattr(common.Generation, "decode_video", decode_video)
    pipe = ltx_mlx.load(models["dev"])
    pipe.generate(prompt=PROMPT, pipeline="two-stage", height=64, width=64, num_frames=9, num_inference_steps=1,
                  video_guidance={"stg_blocks": [0]}, audio_guidance={"stg_blocks": [0]}, progress=False)
    # Gemma, the text projection, the video encoder, the upsampler, the audio decoder and vocoder are gone when
    # the transformer runs; only one transformer (stage 1's, then stage 2's with the LoRA) is ever held.
    assert seen == {"stage 1": ["transformer"], "stage 2": ["transformer"], "video decode": []}
    assert pipe._loaded == {}


# -------------------------------------------------------------------------- how each pipeline is put together

def _spy(monkeypatch):
    """Record what each stage runs: the LoRAs fused into the transformer, the sigmas, the re-noise scale, whether
    the previous stage's latents are carried over, the stage size, the conditioning kinds and scheduler calls."""
    from ltx_mlx.diffusion import LTX2Scheduler
    from ltx_mlx.pipelines.common import Generation

    log = {"loads": [], "stages": [], "schedules": []}
    load, denoise, execute = Generation.load_transformer, Generation.denoise, LTX2Scheduler.execute

    def spy_load(self, loras=None, name="load transformer"):
        names = None if loras is None else [("distilled" if "distilled_lora" in lr.path else "user", lr.strength)
                                            for lr in loras]
        log["loads"].append(names)
        return load(self, loras, name)

    def spy_denoise(self, name, stage, loop, sigmas, video_tools, audio_tools, conditionings=(), noise_scale=1.0,
                    initial_video=None, initial_audio=None):
        log["stages"].append({"sigmas": [round(float(s), 6) for s in np.array(sigmas)], "noise_scale": noise_scale,
                              "carried": (initial_video is not None, initial_audio is not None),
                              "size": (video_tools.height, video_tools.width),
                              "conditionings": sorted(type(c).__name__ for c in conditionings)})
        return denoise(self, name, stage, loop, sigmas, video_tools, audio_tools, conditionings, noise_scale,
                       initial_video, initial_audio)

    def spy_execute(self, steps, latent=None, **kw):
        log["schedules"].append((steps, None if latent is None else tuple(getattr(latent, "shape", latent))))
        return execute(self, steps, latent=latent, **kw)

    monkeypatch.setattr(Generation, "load_transformer", spy_load)
    monkeypatch.setattr(Generation, "denoise", spy_denoise)
    monkeypatch.setattr(LTX2Scheduler, "execute", spy_execute)
    return log


DISTILLED = [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0]
STAGE_2 = [0.909375, 0.725, 0.421875, 0.0]
COMPOSITION = {  # pipeline -> (model, LoRAs per transformer load, scheduler calls, stage-1 sigmas or None)
    "distilled": ("distilled", [None], [], DISTILLED),
    "distilled-on-dev": ("dev", [[("distilled", 0.8)]], [], DISTILLED),
    "two-stage": ("dev", [None, [("distilled", 0.8)]], [(2, None)], None),
    "keyframes": ("dev", [None, [("distilled", 0.8)]], [(2, None)], None),
    "hq": ("dev", [[("distilled", 0.25)], [("distilled", 0.5)]], [(2, (1, 8, 2, 1, 1))], None),
}


@pytest.mark.parametrize("case", list(COMPOSITION))
def test_pipeline_composition_follows_the_reference(models, case, monkeypatch, capsys):
    model, loads, schedules, stage_1_sigmas = COMPOSITION[case]
    pipeline = "distilled" if case == "distilled-on-dev" else case
    log = _spy(monkeypatch)
    images = ["--image", str(models["image"]), "0", "1.0", "--image", str(models["image"]), "8", "0.9"]
    argv = ["--model", str(models[model]), "--pipeline", pipeline, "--prompt", PROMPT, "--frame-rate", "24",
            "--output-path", str(models["tmp"] / f"composition-{case}.mp4"), *small(pipeline), *images]
    assert generate(argv) == 0, capsys.readouterr().err
    assert log["loads"] == loads
    assert log["schedules"] == schedules
    first, second = log["stages"]
    assert first["size"] == (1, 1) and second["size"] == (2, 2)  # half size, then x2 upsampled to full size
    if stage_1_sigmas is not None:
        assert first["sigmas"] == stage_1_sigmas
    assert first["noise_scale"] == 1.0 and first["carried"] == (False, False)
    assert second["sigmas"] == STAGE_2 and second["noise_scale"] == pytest.approx(0.909375)
    assert second["carried"] == (True, True)  # the upsampled video and the stage-1 audio are re-noised and refined
    if case == "keyframes":  # every image, frame 0 included, appended as a keyframe
        assert first["conditionings"] == second["conditionings"] == ["VideoConditionByKeyframeIndex"] * 2
    else:  # frame 0 replaces the first latent frame, later frames are appended keyframes
        assert first["conditionings"] == ["VideoConditionByKeyframeIndex", "VideoConditionByLatentIndex"]


def test_one_stage_composition(models, monkeypatch, capsys):
    log = _spy(monkeypatch)
    argv = ["--model", str(models["dev"]), "--pipeline", "one-stage", "--prompt", PROMPT,
            "--output-path", str(models["tmp"] / "composition-one-stage.mp4"), *SMALL]
    assert generate(argv) == 0, capsys.readouterr().err
    assert log["loads"] == [None] and log["schedules"] == [(2, None)]
    (stage,) = log["stages"]
    assert stage["size"] == (2, 2) and stage["noise_scale"] == 1.0 and stage["carried"] == (False, False)
    assert len(stage["sigmas"]) == 3 and stage["sigmas"][-1] == 0.0


def test_out_of_memory_is_one_line_and_no_file(models, monkeypatch, capsys):
    from ltx_mlx.pipelines.common import Generation

    def oom(self, *a, **k):
        raise RuntimeError("[malloc] Unable to allocate 123456789 bytes")

    monkeypatch.setattr(Generation, "denoise", oom)
    out = models["tmp"] / "oom.mp4"
    argv = ["--model", str(models["distilled"]), "--prompt", PROMPT, "--output-path", str(out), *SMALL_DISTILLED]
    assert generate(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Unable to allocate" in err[0] and "smaller --height/--width" in err[0]
    assert not out.exists()
