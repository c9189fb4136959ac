"""Media I/O with PyAV: images and videos in, conditioning arrays out, and the mp4 writer.

Layouts: decoded images/frames are RGB uint8 `(H, W, 3)`; `load_image_conditioning` returns float32
`(1, 1, H, W, 3)` in [-1, 1] (B, F, H, W, C: the video VAE encoder's channels-last input); audio is float32
`(channels, samples)`. The mp4 writer takes uint8 `(f, H, W, 3)` chunks and float32 `(2, N)` audio.

Deliberate differences from the reference writer: the video frame rate is kept as a fraction
(24000/1001 stays 24000/1001) instead of being truncated with `int(fps)`; libx264 runs one thread so the same
frames always give the same bytes (the reference's default thread count can encode them differently); only
`.mp4` paths are written; a path is locked while it is written and dead writers' partial files are removed.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import secrets
from collections import deque
from fractions import Fraction
from io import BytesIO
from typing import Iterable, Iterator

import av
import mlx.core as mx
import numpy as np

DEFAULT_IMAGE_CRF = 33
# Integer PCM → [-1, 1): (offset, full scale). Unsigned 8-bit is centred on 128.
_INT_AUDIO = {"u8": (128.0, 128.0), "s16": (0.0, 32768.0), "s32": (0.0, 2147483648.0), "s64": (0.0, 2.0 ** 63)}
# One encoding thread for the mp4: libx264's output then depends on the frames alone, not on thread timing under
# load. (The single-frame CRF round trip keeps the encoder's default, as the reference, whose pixels it matches.)
_X264_DETERMINISTIC = {"threads": "1"}


def check_readable(path, what: str = "file"):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"The {what} {path!r} does not exist (or is not a file); check the path.")
    if not os.access(path, os.R_OK):
        raise ValueError(f"The {what} {path!r} is not readable; check its permissions.")


def check_output_path(path):
    """Fail early, before any heavy work, if `path` cannot be written or does not name an .mp4 file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"The output path must be a str or os.PathLike, got {path!r:.80}.")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"The output path {path!r} is a folder; give a file name such as {path!r}/out.mp4.")
    if os.path.splitext(path)[1].lower() != ".mp4":
        raise ValueError(f"The output path {path!r} does not end in .mp4, the only container written (H.264 + "
                         "AAC); give a name ending in .mp4.")
    if not os.path.isdir(folder):
        raise ValueError(f"The output folder {folder!r} does not exist; create it first.")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"The output path {path!r} is not writable; choose another location.")


def _first_video_frame(container) -> av.VideoFrame:
    if not container.streams.video:
        raise ValueError("it has no image or video stream")
    return next(container.decode(container.streams.video[0]))


# ---------------------------------------------------------------------------------------------------
# Images


def decode_image(path) -> np.ndarray:
    """A PNG/JPEG image, or the first frame of a video, as RGB uint8 `(H, W, 3)` (alpha dropped)."""
    check_readable(path, "image")
    try:
        with av.open(os.fspath(path)) as container:
            frame = _first_video_frame(container)
            if container.streams.video[0].codec_context.name == "mjpeg" and frame.format.name in _JPEG_CHROMA:
                return _jpeg_to_rgb(frame)
            return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, StopIteration, ValueError) as e:
        raise ValueError(f"Could not read an image from {os.fspath(path)!r} ({e}); "
                         "use a PNG, JPEG or video file.") from e


# JPEG colour as libjpeg (the reference reads images with Pillow): "fancy" triangle-filter chroma upsampling
# and libjpeg's 16-bit fixed-point YCbCr → RGB. Only the decoders' IDCTs then differ (±1 on a few samples).
_JPEG_CHROMA = {"yuvj444p": (1, 1), "yuvj422p": (2, 1), "yuvj420p": (2, 2)}


def _neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([x[:, :1], x[:, :-1]], axis=1), np.concatenate([x[:, 1:], x[:, -1:]], axis=1)


def _interleave(even: np.ndarray, odd: np.ndarray) -> np.ndarray:
    return np.stack([even, odd], axis=-1).reshape(even.shape[0], -1)


def _fancy_h2v1(p: np.ndarray) -> np.ndarray:
    last, nxt = _neighbours(p)
    even, odd = (3 * p + last + 1) >> 2, (3 * p + nxt + 2) >> 2
    even[:, 0], odd[:, -1] = p[:, 0], p[:, -1]
    return _interleave(even, odd)


def _fancy_h2v2_row(cs: np.ndarray) -> np.ndarray:
    """One output row from column sums `3·nearer row + farther row`."""
    last, nxt = _neighbours(cs)
    even, odd = (3 * cs + last + 8) >> 4, (3 * cs + nxt + 7) >> 4
    even[:, 0], odd[:, -1] = (4 * cs[:, 0] + 8) >> 4, (4 * cs[:, -1] + 7) >> 4
    return _interleave(even, odd)


def _upsample_chroma(p: np.ndarray, factors: tuple[int, int], height: int, width: int) -> np.ndarray:
    p = p.astype(np.int32)
    if factors == (2, 2):
        up = np.concatenate([p[:1], p[:-1]])
        down = np.concatenate([p[1:], p[-1:]])
        rows = [_fancy_h2v2_row(3 * p + up), _fancy_h2v2_row(3 * p + down)]
        p = np.stack(rows, axis=1).reshape(-1, rows[0].shape[1])
    elif factors == (2, 1):
        p = _fancy_h2v1(p)
    return p[:height, :width]


def _jpeg_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    y, cb, cr = (np.frombuffer(pl, np.uint8)[:pl.height * pl.line_size].reshape(pl.height, pl.line_size)[:, :pl.width]
                 for pl in frame.planes)
    height, width = y.shape
    factors = _JPEG_CHROMA[frame.format.name]
    cb, cr = (_upsample_chroma(p, factors, height, width).astype(np.int64) - 128 for p in (cb, cr))

    def fix(c):
        return int(c * 65536 + 0.5)

    y = y.astype(np.int64)
    r = y + ((fix(1.40200) * cr + 32768) >> 16)
    g = y + ((-fix(0.34414) * cb + 32768 - fix(0.71414) * cr) >> 16)
    b = y + ((fix(1.77200) * cb + 32768) >> 16)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def crf_round_trip(image: np.ndarray, crf: float = DEFAULT_IMAGE_CRF) -> np.ndarray:
    """Encode one RGB frame with libx264 (preset veryfast, yuv420p, given CRF) in memory and decode it back,
    as the reference does so conditioning images look like video frames. Odd sizes lose their last
    row/column. `crf == 0` returns the image untouched (the reference's convention)."""
    if crf == 0:
        return image
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    if height == 0 or width == 0:
        raise ValueError(f"An image of {image.shape[0]}x{image.shape[1]} is too small for the H.264 round trip.")
    with BytesIO() as buffer:
        with av.open(buffer, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
            stream.height, stream.width = height, width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")
            container.mux(stream.encode(frame.reformat(format="yuv420p")))
            container.mux(stream.encode())
        buffer.seek(0)
        with av.open(buffer) as container:
            return _first_video_frame(container).to_ndarray(format="rgb24")


def _fma(a, b, c) -> np.ndarray:
    """float32 a·b + c with one rounding (the exact product fits float64), as FMA-contracted C code computes."""
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32) if np.isscalar(a) else \
        (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def _linear_taps(src_size: int, dst_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear source indices and weights (align_corners=False, no antialias), in float32."""
    scale = np.float32(src_size) / np.float32(dst_size)
    src = _fma(np.full(dst_size, scale), np.arange(dst_size, dtype=np.float32) + np.float32(0.5),
               np.full(dst_size, np.float32(-0.5)))
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), src_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    i1 = i0 + (i0 < src_size - 1)
    return i0, i1, np.float32(1) - w1, w1


def resize_and_center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale to cover `height × width` (scale = max(height/H, width/W), sizes rounded up), bilinear without
    antialiasing, then crop the centre. `(H, W, C)` or `(F, H, W, C)` → float32 `(F, height, width, C)`.

    Bit-exact with the reference on torch's CPU kernels: those pick a per-pixel 4-weight sum for small
    outputs (resized height + width ≤ 128) and a separable width-then-height sum otherwise, and their
    products and sums are FMA-contracted; the same choices and roundings are reproduced here.
    """
    x = np.asarray(image)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or min(x.shape[1:3]) < 1 or height < 1 or width < 1:
        raise ValueError(f"Expected an image (H, W, C) or frames (F, H, W, C) and a positive target size, "
                         f"got shape {x.shape} → {height}x{width}.")
    x = x.astype(np.float32)
    src_h, src_w = x.shape[1:3]
    scale = max(height / src_h, width / src_w)
    new_h, new_w = math.ceil(src_h * scale), math.ceil(src_w * scale)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    h0, h1, a0, a1 = (t[top:top + height, None, None] for t in _linear_taps(src_h, new_h))
    w0, w1, b0, b1 = (t[left:left + width, None] for t in _linear_taps(src_w, new_w))
    rows0, rows1 = x[:, h0[:, 0, 0]], x[:, h1[:, 0, 0]]
    x00, x01, x10, x11 = rows0[:, :, w0[:, 0]], rows0[:, :, w1[:, 0]], rows1[:, :, w0[:, 0]], rows1[:, :, w1[:, 0]]
    if new_h + new_w <= 128:
        w00, w01, w10, w11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
        return _fma(x11, np.broadcast_to(w11, x11.shape), _fma(x10, np.broadcast_to(w10, x10.shape),
                    _fma(x00, np.broadcast_to(w00, x00.shape), x01 * w01)))
    r0 = _fma(x00, np.broadcast_to(b0, x00.shape), x01 * b1)
    r1 = _fma(x10, np.broadcast_to(b0, x10.shape), x11 * b1)
    return _fma(r0, np.broadcast_to(a0, r0.shape), r1 * a1)


def normalize_pixels(x: np.ndarray) -> np.ndarray:
    return x / np.float32(127.5) - np.float32(1.0)


def load_image_conditioning(path, height: int, width: int, crf: float = DEFAULT_IMAGE_CRF) -> mx.array:
    """Image file → float32 `(1, 1, height, width, 3)` in [-1, 1], ready for the video VAE encoder."""
    image = crf_round_trip(decode_image(path), crf)
    return mx.array(normalize_pixels(resize_and_center_crop(image, height, width))[None])


# ---------------------------------------------------------------------------------------------------
# Videos and audio in


def read_video_frames(path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 `(H, W, 3)` frames of the first video stream, at most `max_frames`."""
    check_readable(path, "video")
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{os.fspath(path)!r} has no video stream.")
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if max_frames is not None and i >= max_frames:
                break
            yield frame.to_ndarray(format="rgb24")


def load_video_conditioning(path, height: int, width: int, max_frames: int) -> mx.array:
    """Video file → float32 `(1, F, height, width, 3)` in [-1, 1] (no CRF round trip, as the reference)."""
    frames = [resize_and_center_crop(f, height, width) for f in read_video_frames(path, max_frames)]
    if not frames:
        raise ValueError(f"{os.fspath(path)!r} has no decodable frames.")
    return mx.array(normalize_pixels(np.concatenate(frames))[None])


def _audio_to_float(frame: av.AudioFrame) -> np.ndarray:
    """Any PCM sample format PyAV decodes to (u8, s16, s32, s64, flt, dbl; packed or planar) → float32
    `(channels, samples)`, integers scaled to [-1, 1)."""
    fmt = frame.format.name.rstrip("p")
    x = frame.to_ndarray()
    if fmt in _INT_AUDIO:
        offset, scale = _INT_AUDIO[fmt]
        x = (x.astype(np.float64) - offset) / scale
    x = x.astype(np.float32)
    if not frame.format.is_planar:
        x = x.reshape(-1, len(frame.layout.channels)).T
    return np.ascontiguousarray(x)


def read_audio(path, start_time: float = 0.0, duration: float | None = None) -> tuple[np.ndarray, int] | None:
    """Float32 `(channels, samples)` and the sample rate of the first audio stream from `start_time` seconds
    for at most `duration` seconds; None when the file has no audio stream."""
    check_readable(path, "audio file")
    if start_time < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"Audio start time must be >= 0 and duration > 0, got {start_time} and {duration}.")
    with av.open(os.fspath(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate, tb = stream.rate, stream.time_base
        end_time = start_time + duration if duration else math.inf
        container.seek(int(start_time / tb), stream=stream)
        chunks, first_time = [], None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * tb)
            if t + frame.samples / frame.sample_rate < start_time:
                continue
            if t > end_time:
                break
            first_time = t if first_time is None else first_time
            chunks.append(_audio_to_float(frame))
    if not chunks:
        return None
    audio = np.concatenate(chunks, axis=-1)
    skip = round((start_time - first_time) * rate)
    audio = audio[:, skip:] if skip > 0 else audio
    if duration is not None:
        audio = audio[:, :round(duration * rate)]
    return audio, rate


# ---------------------------------------------------------------------------------------------------
# mp4 out


def as_frame_rate(fps) -> Fraction:
    """Exact frame rate: ints and Fractions as given; floats to the nearest fraction with denominator ≤ 1001
    (so 24000/1001 as a float becomes 24000/1001, 25.0 stays 25)."""
    rate = Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)
    if rate <= 0:
        raise ValueError(f"The frame rate must be positive, got {fps}.")
    return rate


def _stereo_s16(audio, sample_rate) -> av.AudioFrame:
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"The audio sample rate must be a positive integer, got {sample_rate!r}.")
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] not in (1, 2):
        raise ValueError(f"Audio must be float (2, samples) stereo or (samples,)/(1, samples) mono, got {x.shape}.")
    x = np.broadcast_to(x, (2, x.shape[1]))
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)  # truncates toward zero, as torch's .to(int16)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate, frame.pts = int(sample_rate), 0
    return frame


def _encode_audio(container, frame: av.AudioFrame) -> deque:
    """All AAC packets of the (whole) audio; the encoder resamples s16 to its format and frame size."""
    stream = container.add_stream("aac", rate=frame.sample_rate)
    stream.codec_context.layout = "stereo"
    stream.codec_context.time_base = Fraction(1, frame.sample_rate)
    return deque([*stream.encode(frame), *stream.encode(None)])


def _check_chunk(chunk, size):
    x = np.asarray(chunk)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"Video chunks must be uint8 (frames, H, W, 3), got {x.dtype} {x.shape}.")
    if size is not None and x.shape[1:3] != size:
        raise ValueError(f"All video chunks must have the same size {size}, got {x.shape[1:3]}.")
    if x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(f"H.264 (yuv420p) needs even sizes, got {x.shape[1]}x{x.shape[2]}; crop or resize to even.")
    return x


def _write(container, chunks: Iterator, fps: Fraction, audio: av.AudioFrame | None, crf, progress) -> int:
    first = _check_chunk(next(chunks), None)
    size = first.shape[1:3]
    options = {**_X264_DETERMINISTIC, **({} if crf is None else {"crf": str(crf)})}
    stream = container.add_stream("libx264", rate=fps, options=options)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    pending = _encode_audio(container, audio) if audio is not None else deque()

    def mux(packets):
        for packet in packets:
            container.mux(packet)
            # Interleave audio with the video by time; mp4 does not require it but players stream better.
            now = float(packet.pts * packet.time_base) if packet.pts is not None else math.inf
            while pending and float(pending[0].pts * pending[0].time_base) <= now:
                container.mux(pending.popleft())

    count = 0
    chunk = first
    while chunk is not None:
        for frame in chunk:
            mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        count += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
        chunk = next(chunks, None)
        chunk = None if chunk is None else _check_chunk(chunk, size)
    mux(stream.encode(None))
    for packet in pending:
        container.mux(packet)
    return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _partial_name(path: str, pid: int) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{pid}-{secrets.token_hex(4)}.partial")


def remove_stale_partials(path) -> list[str]:
    """Remove the partial files of `path` whose writing process is dead (a killed run); returns them."""
    path = os.path.abspath(os.fspath(path))
    pattern = re.compile(re.escape(f".{os.path.basename(path)}.") + r"(\d+)-[0-9a-f]+\.partial")
    removed = []
    for name in os.listdir(os.path.dirname(path)):
        m = pattern.fullmatch(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(os.path.dirname(path), name))
            removed.append(name)
    return removed


_HELD: dict[str, int] = {}  # lock file -> nesting depth, in this process


def lock_path(path) -> str:
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


@contextlib.contextmanager
def output_lock(path):
    """Hold `path` for this process: a lock file beside it, created exclusively with our pid. A second run to
    the same path is refused while the owner lives; a lock whose owner is dead is taken over. Re-entrant."""
    lock = lock_path(path)
    if lock in _HELD:
        _HELD[lock] += 1
        try:
            yield
        finally:
            _HELD[lock] -= 1
        return
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                with open(lock) as f:
                    owner = int(f.read().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and _alive(owner):
                raise ValueError(f"Another run (process {owner}) is writing {os.fspath(path)!r}; wait for it to "
                                 f"finish or choose another --output-path (if no such run exists, delete {lock!r})."
                                 ) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)  # its owner is dead
    else:
        raise ValueError(f"Could not lock {os.fspath(path)!r} ({lock!r} keeps reappearing); is another run writing "
                         "there?")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    _HELD[lock] = 1
    try:
        remove_stale_partials(path)
        yield
    finally:
        del _HELD[lock]
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)


def write_mp4(path, video: Iterable | np.ndarray, fps, audio=None, sample_rate: int | None = None, *,
              crf: float | None = None, progress=None) -> int:
    """Write H.264 (yuv420p) video at `fps` (kept exact, see `as_frame_rate`) and optional AAC stereo audio.

    `video`: one uint8 `(F, H, W, 3)` array or an iterable of such chunks, consumed lazily so decoded tiles
    stream straight in. `audio`: float `(2, N)` in [-1, 1] at `sample_rate`. The file is written next to
    `path` under a temporary name and renamed when complete; on any error it is removed (a full disk is an
    OSError with errno ENOSPC whose message names `path`, not the temporary file). The path is held
    with `output_lock` meanwhile, and partial files left by dead writers are removed. `crf`: x264
    quality (encoder default when None, as the reference). `progress`: an optional tqdm-like object
    updated with frame counts. Returns the number of frames written.
    """
    check_output_path(path)
    rate = as_frame_rate(fps)
    if audio is not None and sample_rate is None:
        raise ValueError("Audio was given without its sample rate.")
    audio = _stereo_s16(audio, sample_rate) if audio is not None else None
    chunks = iter([video]) if isinstance(video, (np.ndarray, mx.array)) else iter(video)
    path = os.path.abspath(os.fspath(path))
    tmp = _partial_name(path, os.getpid())
    with output_lock(path):
        try:
            with av.open(tmp, "w", format="mp4") as container:
                try:
                    count = _write(container, chunks, rate, audio, crf, progress)
                except StopIteration:
                    raise ValueError("No video frames were given.") from None
            os.replace(tmp, path)
        except BaseException as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # PyAV names the partial file, not the output
                full = OSError(f"the disk is full: no space left on the device to write {path!r}; nothing was left "
                               "there: free some space or choose another output path")
                full.errno = errno.ENOSPC
                raise full from None
            raise
    return count
