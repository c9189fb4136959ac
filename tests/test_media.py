"""Media I/O: image reading, CRF round trip and resize/crop against ltx_pipelines' media_io; the mp4 writer
decoded back with PyAV."""

import os
from fractions import Fraction

import av
import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_pipelines.utils import media_io as ref
from PIL import Image

from ltx_mlx import media


def _image(h=101, w=150, seed=0, noise=20):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 1.7, yy * 2.3, (xx + yy) * 0.9], -1) % 256 * 0.9
    return (smooth + rng.integers(-noise, noise + 1, smooth.shape)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (50, 70), (32, 32), (100, 150), (224, 320), (60, 40)])
def test_resize_and_center_crop_matches_reference(size):
    img = _image()
    theirs = ref.resize_and_center_crop(torch.tensor(img, dtype=torch.float32), *size)  # (1, C, 1, H, W)
    ours = media.resize_and_center_crop(img, *size)  # (1, H, W, C)
    theirs = theirs[0].permute(1, 2, 3, 0).numpy()
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    diff = np.abs(ours - theirs)
    print(f"resize {size}: max |diff| {diff.max():.3g}, {int((diff > 0).sum())} of {diff.size} values differ")
    assert diff.max() <= 4 * 2.0**-16  # bit-exact on x86 torch builds; 4 ulps at 255 for other builds' kernels


def test_resize_frames_and_normalize_match_reference():
    frames = np.random.default_rng(1).integers(0, 256, (3, 40, 60, 3)).astype(np.uint8)
    theirs = ref.normalize_latent(ref.resize_and_center_crop(torch.tensor(frames, dtype=torch.float32), 64, 64),
                                  "cpu", torch.float32)
    ours = media.normalize_pixels(media.resize_and_center_crop(frames, 64, 64))
    np.testing.assert_allclose(ours, theirs[0].permute(1, 2, 3, 0).numpy(), atol=1e-7, rtol=0)


@pytest.mark.parametrize("crf", [33, 18, 0])
@pytest.mark.parametrize("shape", [(101, 150), (64, 96)])
def test_crf_round_trip_identical_to_reference(crf, shape):
    img = _image(*shape)
    ours, theirs = media.crf_round_trip(img, crf), ref.preprocess(img, crf)
    assert ours.shape == theirs.shape == ((shape[0] // 2 * 2, shape[1] // 2 * 2, 3) if crf else img.shape)
    np.testing.assert_array_equal(ours, theirs)
    if crf:
        change = np.abs(ours.astype(int) - img[: ours.shape[0], : ours.shape[1]]).mean()
        print(f"crf {crf}: identical to the reference; mean |change| vs input {change:.2f}")
        assert change > 0


def test_decode_image_png_rgba_jpeg_and_video(tmp_path):
    img = _image()
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(np.dstack([img, np.full(img.shape[:2], 77, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(media.decode_image(tmp_path / "a.png"), img)
    np.testing.assert_array_equal(media.decode_image(tmp_path / "rgba.png"), img)
    for subsampling in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
        Image.fromarray(img).save(tmp_path / "a.jpg", quality=92, subsampling=subsampling)
        jpg = media.decode_image(tmp_path / "a.jpg")
        pil = ref.decode_image(str(tmp_path / "a.jpg"))
        err = np.abs(jpg.astype(int) - pil)
        print(f"JPEG ({subsampling=}) via PyAV vs Pillow: max {err.max()}, mean {err.mean():.3f} levels")
        assert jpg.shape == pil.shape and err.max() <= 4 and err.mean() < 0.2  # only the IDCTs differ
    frames = np.stack([_image(64, 96, s, noise=0) + 10 * s for s in range(3)])
    media.write_mp4(tmp_path / "v.mp4", frames, 24, crf=0)
    first = media.decode_image(tmp_path / "v.mp4")
    assert first.shape == (64, 96, 3) and np.abs(first.astype(int) - frames[0]).mean() < 3


def test_load_image_conditioning_matches_reference(tmp_path):
    Image.fromarray(_image()).save(tmp_path / "a.png")
    theirs = ref.load_image_conditioning(str(tmp_path / "a.png"), 64, 96, torch.float32, "cpu", crf=33)
    ours = media.load_image_conditioning(tmp_path / "a.png", 64, 96)
    assert ours.shape == (1, 1, 64, 96, 3)
    np.testing.assert_array_equal(np.array(ours), theirs.permute(0, 2, 3, 4, 1).numpy())


def test_bad_images_raise(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        media.decode_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="Could not read an image"):
        media.decode_image(tmp_path / "junk.png")


def _tone(n, sr, channels=2):
    t = np.arange(n) / sr
    tone = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)])
    return tone[:channels].astype(np.float32)


@pytest.mark.parametrize("fps", [Fraction(24000, 1001), 24000 / 1001, 25, 30.0])
def test_write_mp4_decodes_back(tmp_path, fps):
    frames_n, h, w, sr = 17, 64, 96, 24000
    video = np.random.default_rng(2).integers(0, 256, (frames_n, h, w, 3)).astype(np.uint8)
    seconds = frames_n / float(fps)
    audio = _tone(round(seconds * sr), sr)
    class Progress:
        n = 0

        def update(self, k):
            self.n += k

    progress, encoded_before_next = Progress(), []

    def chunks():  # streamed: each chunk is encoded before the next one is asked for
        for i in range(0, frames_n, 5):
            yield mx.array(video[i:i + 5]) if fps == 25 else video[i:i + 5]
            encoded_before_next.append(progress.n)

    path = tmp_path / "out.mp4"
    assert media.write_mp4(path, chunks(), fps, audio, sr, progress=progress) == frames_n
    assert os.listdir(tmp_path) == ["out.mp4"] and encoded_before_next == [5, 10, 15, 17]
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        count = sum(1 for _ in c.decode(v))
        assert (count, v.codec_context.width, v.codec_context.height) == (frames_n, w, h)
        assert v.average_rate == media.as_frame_rate(fps) and v.codec_context.name == "h264"
        assert (a.codec_context.name, a.rate, a.channels) == ("aac", sr, 2)
        video_s, audio_s = float(v.duration * v.time_base), float(a.duration * a.time_base)
    print(f"fps {fps}: video {video_s:.4f}s, audio {audio_s:.4f}s, expected {seconds:.4f}s")
    assert abs(video_s - seconds) < 1e-3 and abs(audio_s - video_s) < 1 / float(fps)
    got = media.read_audio(path)
    assert got is not None and got[1] == sr and got[0].shape[0] == 2


def test_fractional_rate_kept():
    assert media.as_frame_rate(24000 / 1001) == Fraction(24000, 1001)
    assert media.as_frame_rate(29.97) == Fraction(2997, 100)
    assert media.as_frame_rate(24.0) == 24 and media.as_frame_rate(Fraction(30000, 1001)) == Fraction(30000, 1001)
    with pytest.raises(ValueError, match="positive"):
        media.as_frame_rate(0)


def test_interrupted_write_leaves_nothing(tmp_path):
    def chunks():
        yield np.zeros((4, 32, 32, 3), np.uint8)
        raise KeyboardInterrupt

    path = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        media.write_mp4(path, chunks(), 24, _tone(4000, 24000), 24000)
    assert os.listdir(tmp_path) == []
    bad = iter([np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, 32, 64, 3), np.uint8)])
    with pytest.raises(ValueError, match="same size"):
        media.write_mp4(path, bad, 24)
    assert os.listdir(tmp_path) == []


def test_writer_bad_input(tmp_path, monkeypatch):
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="even"):
        media.write_mp4(tmp_path / "o.mp4", np.zeros((2, 33, 32, 3), np.uint8), 24)
    with pytest.raises(ValueError, match="uint8"):
        media.write_mp4(tmp_path / "o.mp4", frames.astype(np.float32), 24)
    with pytest.raises(ValueError, match="does not exist"):
        media.write_mp4(tmp_path / "no" / "o.mp4", frames, 24)
    with pytest.raises(ValueError, match="is a folder"):
        media.write_mp4(tmp_path, frames, 24)
    with pytest.raises(ValueError, match="No video frames"):
        media.write_mp4(tmp_path / "o.mp4", iter([]), 24)
    with pytest.raises(ValueError, match="stereo"):
        media.write_mp4(tmp_path / "o.mp4", frames, 24, np.zeros((3, 100), np.float32), 24000)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real_access = os.access
    # Root ignores permission bits, so deny write access explicitly as well as through the mode.
    monkeypatch.setattr(media.os, "access", lambda p, mode: real_access(p, mode) and not (
        mode & os.W_OK and os.fspath(p).startswith(str(locked))))
    try:
        with pytest.raises(ValueError, match="not writable"):
            media.write_mp4(locked / "o.mp4", frames, 24)
    finally:
        locked.chmod(0o700)
    assert os.listdir(tmp_path) == ["locked"] and os.listdir(locked) == []


@pytest.mark.parametrize("start,duration", [(0.0, None), (0.25, 0.5), (0.1, 0.3)])
def test_read_audio_matches_reference(tmp_path, start, duration):
    sr = 48000
    path = tmp_path / "a.mp4"
    media.write_mp4(path, np.zeros((25, 32, 32, 3), np.uint8), 25, _tone(sr, sr), sr)
    ours, rate = media.read_audio(path, start, duration)
    theirs = ref.decode_audio_from_file(str(path), "cpu", start, duration)
    assert rate == theirs.sampling_rate == sr
    np.testing.assert_array_equal(ours, theirs.waveform[0].numpy())
    if duration:
        assert ours.shape == (2, round(duration * sr))
    media.write_mp4(tmp_path / "silent.mp4", np.zeros((2, 32, 32, 3), np.uint8), 25)
    assert media.read_audio(tmp_path / "silent.mp4") is None


def _decode_all(path):
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    return np.stack(frames), audio


def test_writer_matches_reference_encode_video(tmp_path):
    """At an integer rate our mp4 decodes to the same frames and audio samples as the reference writer's."""
    from ltx_core.types import Audio

    sr, fps = 24000, 25
    video = np.random.default_rng(3).integers(0, 256, (9, 64, 96, 3)).astype(np.uint8)
    audio = _tone(round(9 / fps * sr), sr) * 3  # clipped
    media.write_mp4(tmp_path / "ours.mp4", iter([video[:4], video[4:]]), fps, audio, sr)
    ref.encode_video(iter([torch.from_numpy(video[:4]), torch.from_numpy(video[4:])]), fps,
                     Audio(torch.from_numpy(audio), sr), str(tmp_path / "ref.mp4"), 2)
    (ours_v, ours_a), (ref_v, ref_a) = _decode_all(tmp_path / "ours.mp4"), _decode_all(tmp_path / "ref.mp4")
    np.testing.assert_array_equal(ours_v, ref_v)
    np.testing.assert_array_equal(ours_a, ref_a)


# Every PCM sample format PyAV decodes to, from files written with a codec that yields it.
PCM = [  # (codec, format given to the encoder, container, decoded format, tolerance; the output is float32)
    ("pcm_u8", "u8", "wav", "u8", 1 / 64), ("pcm_s16le", "s16", "wav", "s16", 1e-4),
    ("pcm_s24le", "s32", "wav", "s32", 1e-6), ("pcm_s32le", "s32", "wav", "s32", 1e-7),
    ("pcm_f32le", "flt", "wav", "flt", 1e-7), ("pcm_f64le", "dbl", "wav", "dbl", 1e-7),
    ("wavpack", "s16p", "wv", "s16p", 1e-4), ("wavpack", "fltp", "wv", "fltp", 1e-7),
    ("alac", "s32p", "mov", "s32p", 1e-6),
]
_RANGES = {"u8": (128, 127), "s16": (0, 32767), "s32": (0, 2 ** 31 - 1), "flt": (0, 1), "dbl": (0, 1)}


def _write_pcm(path, codec, fmt, container, x, rate):
    base = fmt.rstrip("p")
    offset, scale = _RANGES[base]
    dtype = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "flt": np.float32, "dbl": np.float64}[base]
    data = (np.round(x * scale) + offset if base in ("u8", "s16", "s32") else x).astype(dtype)
    layout = "mono" if len(x) == 1 else "stereo"
    with av.open(str(path), "w", format=container) as c:
        s = c.add_stream(codec, rate=rate)
        s.codec_context.layout, s.codec_context.format = layout, fmt
        arr = data if fmt.endswith("p") else np.ascontiguousarray(data.T).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*s.encode(frame), *s.encode(None)]:
            c.mux(packet)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("codec,fmt,container,decoded,tol", PCM, ids=[f"{c}-{f}" for c, f, *_ in PCM])
def test_read_audio_decodes_every_pcm_format(tmp_path, codec, fmt, container, decoded, tol, channels):
    rate, n = 8000, 1600
    t = np.arange(n) / rate
    x = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), -0.25 + 0.5 * np.cos(2 * np.pi * 200 * t)])[:channels]
    path = tmp_path / f"tone.{container}"
    _write_pcm(path, codec, fmt, container, x, rate)
    with av.open(str(path)) as c:
        assert next(c.decode(audio=0)).format.name == decoded
    got, got_rate = media.read_audio(path)
    assert got_rate == rate and got.dtype == np.float32 and got.shape == (channels, n)
    np.testing.assert_allclose(got, x, atol=tol, rtol=0)  # no DC offset (u8 is centred on 128), no gain error


def _busy(seconds: float):
    import subprocess
    import sys

    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)]


def test_same_frames_same_bytes_under_cpu_load(tmp_path):
    """libx264 runs one thread, so its output cannot depend on thread timing: two encodes of the same frames
    while every core is busy are byte-identical, and the stream's own x264 settings say threads=1."""
    rng = np.random.default_rng(5)
    frames = np.clip(rng.normal(128, 60, (25, 128, 192, 3)), 0, 255).astype(np.uint8)
    frames[:, 32:96, ::8] = 255  # some structure for motion search
    load = _busy(30)
    try:
        paths = [tmp_path / f"{i}.mp4" for i in range(2)]
        for p in paths:
            media.write_mp4(p, iter([frames[:12], frames[12:]]), 24, _tone(24000, 24000), 24000)
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    a, b = (p.read_bytes() for p in paths)
    assert a == b
    assert b" threads=1 " in a  # x264's options SEI in the bitstream (the encoder's default here is 2 or more)


def test_partials_of_dead_writers_are_removed_and_the_path_is_locked(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "clip.mp4"
    stale = tmp_path / f".clip.mp4.{dead.pid}-00ff00ff.partial"
    other = tmp_path / f".other.mp4.{dead.pid}-00ff00ff.partial"  # another output's: not ours to touch
    stale.write_bytes(b"x")
    other.write_bytes(b"x")
    (tmp_path / ".clip.mp4.lock").write_text(str(dead.pid))  # a dead run's lock is taken over
    media.write_mp4(out, np.zeros((2, 32, 32, 3), np.uint8), 24)
    assert sorted(os.listdir(tmp_path)) == [".other.mp4." + stale.name.split(".mp4.")[1], "clip.mp4"]
    with media.output_lock(out):  # held by this process: re-entrant for its own writes
        media.write_mp4(out, np.zeros((2, 32, 32, 3), np.uint8), 24)
        assert os.path.exists(media.lock_path(out))
    assert not os.path.exists(media.lock_path(out))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".clip.mp4.lock").write_text(str(live.pid))
        with pytest.raises(ValueError, match=f"Another run \\(process {live.pid}\\) is writing"):
            media.write_mp4(out, np.zeros((2, 32, 32, 3), np.uint8), 24)
    finally:
        live.kill()
        live.wait()
