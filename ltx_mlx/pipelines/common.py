"""The steps every pipeline is made of: text encoding, image conditionings, denoising stages, the latent
upsampler, audio decoding and tiled video decoding streamed into the mp4 writer; plus the per-stage
bookkeeping (progress bars, time, peak memory) and freeing each model when its stage is done."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from ..audio import encode_audio
from ..conditioning import AudioLatentTools, VideoLatentTools, apply_conditionings
from ..diffusion import (GaussianNoiser, NoiseStream, euler_denoising_loop, guided_denoising_fn,
                         res2s_denoising_loop, simple_denoising_fn)
from ..latents import audio_latent_length
from ..media import load_image_conditioning, write_mp4
from ..models.audio_vae import LATENT_DOWNSAMPLE_FACTOR, AudioVAEConfig
from ..models.transformer import Modality, X0Model
from ..models.perturbations import Perturbations
from ..models.upsampler import upsample_video
from ..models.video_vae import VideoVAEConfig, decode_video, scale_factors
from ..text_encoder import TextContext
from .settings import SPATIAL_X2, Settings


# ---------------------------------------------------------------------------------------------- result


@dataclass
class GenerationResult:
    """frames uint8 (F, H, W, 3) (None when streamed to a file with keep_frames=False), audio float32 (2, N)
    at `sample_rate` (None with audio=False), per-stage seconds and peak bytes."""

    frames: np.ndarray | None
    audio: np.ndarray | None
    sample_rate: int | None
    frame_rate: float
    timings: dict = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)
    path: str | None = None

    def save(self, path) -> str:
        if self.frames is None:
            raise ValueError("this result kept no frames (it was streamed to a file with keep_frames=False)")
        write_mp4(path, self.frames, self.frame_rate, self.audio, self.sample_rate)
        return str(path)


# ---------------------------------------------------------------------------------------------- transformer


def _modality(state, context: mx.array, sigma: float, enabled: bool, context_mask: mx.array | None = None) -> Modality:
    """The state (batch 1) as n = len(context) identical samples: guidance passes batched along the batch axis."""
    n = context.shape[0]
    s = mx.full((n,), sigma, dtype=mx.float32)

    def batched(x):
        return x if x is None or x.shape[0] == n else mx.broadcast_to(x, (n, *x.shape[1:]))

    mask = batched(state.denoise_mask)  # (n, T) or (n, T, 1)
    return Modality(latent=batched(state.latent), sigma=s, timesteps=mask * s.reshape(n, *[1] * (mask.ndim - 1)),
                    positions=batched(state.positions), context=context, enabled=enabled, context_mask=context_mask,
                    attention_mask=batched(state.attention_mask))


def _stack_contexts(contexts: list[mx.array]) -> tuple[mx.array, mx.array | None]:
    """(n, S, D) contexts; unequal lengths are zero-padded at the end and masked out (a 0/1 (n, S) keep-mask)."""
    S = max(c.shape[1] for c in contexts)
    if all(c.shape[1] == S for c in contexts):
        return mx.concatenate(contexts), None
    padded = [mx.pad(c, [(0, 0), (0, S - c.shape[1]), (0, 0)]) for c in contexts]
    keep = mx.array([[1] * c.shape[1] + [0] * (S - c.shape[1]) for c in contexts], dtype=mx.int32)
    return mx.concatenate(padded), keep


def transformer_fn(model: X0Model, positive: TextContext, negative: TextContext | None = None,
                   batch: bool = False):
    """`model_fn` for the guiders: the GuidancePasses of a step (negative prompt, STG, modality isolation).

    `batch`: passes with the same enabled modalities run as one forward of batch size len(passes), each pass
    one sample (its own context and perturbations); the activations then scale with the number of passes,
    which the memory planner counts when it decides this. Off: one forward per pass.
    """

    def forward(video_state, audio_state, sigma: float, group) -> list:
        p0 = group[0]
        contexts = [negative if p.negative and negative is not None else positive for p in group]
        (video_ctx, video_keep), (audio_ctx, audio_keep) = (_stack_contexts([getattr(c, m) for c in contexts])
                                                            for m in ("video", "audio"))
        video = _modality(video_state, video_ctx, sigma, p0.video_enabled, video_keep)
        audio = _modality(audio_state, audio_ctx, sigma, p0.audio_enabled, audio_keep)
        # The guiders' perturbation kinds and the transformer's share their names.
        v, a = model(video, audio, Perturbations([list(p.perturbations) for p in group]))
        return [(v[i:i + 1], a[i:i + 1]) for i in range(len(group))] if len(group) > 1 else [(v, a)]

    def run(video_state, audio_state, sigma: float, passes):
        if not batch:
            return [forward(video_state, audio_state, sigma, [p])[0] for p in passes]
        groups = {}  # the transformer switches a modality off for the whole batch: group by those flags
        for i, p in enumerate(passes):
            groups.setdefault((p.video_enabled, p.audio_enabled), []).append(i)
        out = [None] * len(passes)
        for indices in groups.values():
            for i, result in zip(indices, forward(video_state, audio_state, sigma, [passes[i] for i in indices])):
                out[i] = result
        return out

    return run


# ---------------------------------------------------------------------------------------------- the run


class Generation:
    """One generation: the model bundle, the resolved settings, the noise source and the stage bookkeeping.

    `batch_guidance`: run a guided step's passes as one batched forward (`transformer_fn(batch=...)`): fewer,
    larger matmuls, and a stage's activations times the passes. Off by default: until the memory model decides
    it, it is the user's choice (`generate(batch_guidance=True)`, `--batch-guidance`).
    """

    def __init__(self, bundle, settings: Settings, *, progress: bool = True, verbose: bool = False,
                 keep_frames: bool = True, log: Callable[[str], None] | None = None, low_memory: bool = False,
                 batch_guidance: bool = False):
        self.bundle, self.settings = bundle, settings
        self.low_memory, self.batch_guidance = low_memory, batch_guidance
        self.dtype = getattr(mx, bundle.dtype)
        self.progress, self.verbose, self.keep_frames = progress, verbose, keep_frames
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.noise_stream = NoiseStream(settings.seed)
        self.timings, self.peaks = {}, {}
        cfg = bundle.config["config"]
        self.vae_cfg = VideoVAEConfig.from_dict(cfg["vae"])
        self.audio_cfg = AudioVAEConfig.from_dict(cfg["audio_vae"])

    # -- bookkeeping

    @contextlib.contextmanager
    def stage(self, name: str):
        mx.reset_peak_memory()
        start = time.perf_counter()
        try:
            yield
        except (MemoryError, RuntimeError) as e:
            if not is_allocation_failure(e):
                raise
            raise MemoryError(f"out of memory in the {name} stage (peak {mx.get_peak_memory() / 1e9:.2f} GB before "
                              f"it failed: {' '.join(str(e).split()) or type(e).__name__}); try --low-memory, a "
                              "smaller --height/--width or fewer --num-frames, or a quantized model "
                              "(convert.py -q)") from None
        self.timings[name] = time.perf_counter() - start
        self.peaks[name] = mx.get_peak_memory()
        if self.verbose:
            self.log(f"[{name}] {self.timings[name]:.2f} s, peak memory {self.peaks[name] / 1e9:.2f} GB")

    def bar(self, total: int, desc: str, unit: str = "step"):
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, leave=self.verbose, file=sys.stderr)

    def free(self, *names: str):
        """Drop cached models; callers delete their own references first."""
        self.bundle.free(*names)
        gc.collect()
        mx.clear_cache()

    # -- grids

    def video_tools(self, height: int, width: int) -> VideoLatentTools:
        t, sp = scale_factors(self.vae_cfg, self.vae_cfg.decoder_blocks)
        return VideoLatentTools.from_pixel_shape(1, self.settings.num_frames, height, width, self.settings.frame_rate,
                                                 channels=self.vae_cfg.latent_channels, scale_factors=(t, sp, sp))

    def audio_tools(self) -> AudioLatentTools:
        c = self.audio_cfg
        bins = (c.mel_bins or 64) // 2 ** (len(c.ch_mult) - 1)
        frames = audio_latent_length(self.settings.num_frames, self.settings.frame_rate, c.sampling_rate, c.hop_length,
                                     LATENT_DOWNSAMPLE_FACTOR)
        return AudioLatentTools(1, c.z_channels, frames, bins, c.sampling_rate, c.hop_length,
                                LATENT_DOWNSAMPLE_FACTOR, causal=c.causality_axis is not None)

    # -- steps

    def load_transformer(self, loras=None, name: str = "load transformer") -> X0Model:
        """The denoiser (x0 predictions), with `loras` fused (None: the bundle's own LoRAs); in low-memory mode
        only its non-block weights are loaded here, each block's are read while it runs."""
        with self.stage(name):
            return X0Model(self.bundle.transformer(loras, stream=self.low_memory))

    def encode_text(self) -> tuple[TextContext, TextContext | None]:
        """Gemma runs the prompt(s) and is freed before the text projection is loaded; then that is freed too."""
        negative = self.settings.negative_prompt
        prompts = [self.settings.prompt] + ([negative] if negative is not None else [])
        with self.stage("text"), self.bar(len(prompts), "text encoding", "prompt") as bar:
            encoder = self.bundle.text_encoder(stream=self.low_memory)
            contexts = encoder.encode(prompts, free_gemma=True)
            bar.update(len(prompts))
            del encoder
            self.free("gemma", "text_projection")
        return contexts[0], (contexts[1] if len(contexts) > 1 else None)

    def encode_images(self, sizes: Sequence[tuple[int, int]], build: Callable):
        """Conditioning items per stage size: each image read at that size, encoded with the video encoder (then
        freed) and handed to `build(images, latents)`; also returns the VAE's per-channel statistics, which the
        upsampler needs."""
        images = self.settings.images
        with self.stage("image encoding"):
            encoder = self.bundle.video_encoder()

            def encode(img, height: int, width: int) -> mx.array:
                z = encoder(load_image_conditioning(img.path, height, width, crf=img.crf).astype(self.dtype))
                mx.eval(z)
                return z

            items = [build(images, [encode(img, h, w) for img in images]) for h, w in sizes]
            stats = encoder.per_channel_statistics
            del encoder, encode
            self.free("video_encoder")
        return items, stats

    def noiser(self, stage: int) -> GaussianNoiser:
        """The stage's noise: injected (video then audio, token space) or the run's seeded stream."""
        given = self.settings.noise[stage] if stage < len(self.settings.noise) else None
        if given is None:
            return GaussianNoiser(self.noise_stream)
        return GaussianNoiser([given["video"], given["audio"]])

    def res2s_noise(self, stage: int) -> dict:
        given = self.settings.noise[stage] if stage < len(self.settings.noise) else None
        if not given:
            return {}
        return {k: given[k] for k in ("step_noise", "substep_noise") if k in given}

    def denoise(self, name: str, stage: int, loop: Callable, sigmas, video_tools: VideoLatentTools,
                audio_tools: AudioLatentTools, conditionings=(), noise_scale: float = 1.0,
                initial_video: mx.array | None = None, initial_audio: mx.array | None = None,
                freeze_audio: bool = False, audio_conditionings=()):
        """Build and noise the states (video first, then audio), drive the loop one step at a time, return the
        clean channels-last video latent (B, F, H, W, C) and audio latent (B, T, M, C).

        `freeze_audio`: video-only denoising (the reference's `denoise_video_only`): the audio latent is kept
        as given (its noise is still drawn, at scale 0, so the stream stays in step) with denoise mask 0.
        """
        noiser = self.noiser(stage)
        video = apply_conditionings(video_tools.create_initial_state(self.dtype, initial_video), conditionings,
                                    video_tools)
        video = noiser(video, noise_scale)
        audio = apply_conditionings(audio_tools.create_initial_state(self.dtype, initial_audio), audio_conditionings,
                                    audio_tools)
        audio = noiser(audio, 0.0 if freeze_audio else noise_scale)
        if freeze_audio:
            audio = replace(audio, denoise_mask=mx.zeros_like(audio.denoise_mask))
        steps = len(sigmas) - 1
        with self.stage(name), self.bar(steps, f"{name} ({video_tools.token_count} video tokens)") as bar:
            last = time.perf_counter()
            for video, audio in loop(sigmas, video, audio):
                mx.eval(video.latent, audio.latent)
                now = time.perf_counter()
                bar.set_postfix_str(f"{now - last:.2f} s/step")
                bar.update(1)
                last = now
        video = video_tools.clear_conditioning(video)
        return video_tools.unpatchify(video.latent), audio_tools.unpatchify(audio.latent)

    def encode_audio(self, waveform: np.ndarray, rate: int, audio_tools: AudioLatentTools,
                     pad: bool = False) -> mx.array:
        """A waveform → the channels-last audio latent (B, T, M, C) cut to the generation's length (zero-padded
        to it with `pad`, else a shorter one is an error), with the audio encoder (then freed)."""
        with self.stage("audio encoding"), self.bar(1, "audio encoding", "clip") as bar:
            encoder = self.bundle.audio_encoder()
            latent = encode_audio(waveform, rate, encoder).transpose(0, 2, 3, 1)  # the VAE gives (B, C, T, M)
            mx.eval(latent)
            bar.update(1)
            del encoder
            self.free("audio_encoder")
        need = audio_tools.frames
        if pad and latent.shape[1] < need:
            latent = mx.pad(latent, [(0, 0), (0, need - latent.shape[1]), (0, 0), (0, 0)])
        if latent.shape[1] < need:
            raise ValueError(f"the audio gives {latent.shape[1]} latent frames but the video needs {need} "
                             f"({self.settings.num_frames / self.settings.frame_rate:.3f} s); give a longer audio")
        return latent[:, :need]

    def upsample(self, latent: mx.array, statistics) -> mx.array:
        with self.stage("upsample"), self.bar(1, "upsampling x2", "latent") as bar:
            upsampler = self.bundle.get(SPATIAL_X2)
            out = upsample_video(latent, statistics, upsampler)
            mx.eval(out)
            bar.update(1)
            del upsampler
            self.free(SPATIAL_X2)
        return out

    def decode(self, video_latent: mx.array, audio_latent: mx.array, tiled: bool = True) -> GenerationResult:
        """Audio first (the mp4 writer muxes it alongside the video), then the video tile by tile, each chunk
        streamed into the file as soon as it is decoded."""
        waveform, rate = self.decode_audio(audio_latent) if self.settings.audio else (None, None)
        frames = self.decode_video(video_latent, self.settings.tiling if tiled else None, waveform, rate)
        return GenerationResult(frames, waveform, rate, self.settings.frame_rate, dict(self.timings), dict(self.peaks),
                                self.settings.output_path)

    def decode_audio(self, latent: mx.array) -> tuple[np.ndarray, int]:
        with self.stage("audio decode"), self.bar(1, "audio decode + vocoder", "clip") as bar:
            decoder, vocoder = self.bundle.audio_decoder(), self.bundle.vocoder()
            mel = decoder(latent.transpose(0, 3, 1, 2).astype(self.dtype))  # the VAE takes (B, C, T, M)
            wav = vocoder(mel).astype(mx.float32)[0]
            mx.eval(wav)
            rate = int(vocoder.output_sampling_rate)
            bar.update(1)
            del decoder, vocoder
            self.free("audio_decoder", "vocoder")
        return fit_audio(np.array(wav), rate, self.settings.num_frames / self.settings.frame_rate), rate

    def decode_video(self, latent: mx.array, tiling, audio, rate) -> np.ndarray | None:
        with self.stage("video decode"), self.bar(self.settings.num_frames, "video decode", "frame") as bar:
            decoder = self.bundle.video_decoder()
            kept = []

            def chunks() -> Iterator[np.ndarray]:
                for chunk in decode_video(latent, decoder, tiling, noise=self.noise_stream):
                    frames = np.array(chunk)
                    if self.keep_frames:
                        kept.append(frames)
                    if self.settings.output_path is None:
                        bar.update(len(frames))
                    yield frames

            if self.settings.output_path is not None:
                write_mp4(self.settings.output_path, chunks(), self.settings.frame_rate, audio, rate, progress=bar)
            else:
                for _ in chunks():
                    pass
            del decoder
            self.free("video_decoder")
        return np.concatenate(kept) if kept else None


def is_allocation_failure(e: BaseException) -> bool:
    """MLX reports a failed allocation as a RuntimeError ("[metal::malloc] Attempting to allocate …",
    "Insufficient Memory", …); Python's own as MemoryError."""
    return isinstance(e, MemoryError) or any(w in str(e).lower() for w in ("alloc", "memory"))


def cache_limit_bytes() -> int:
    """The bound on MLX's buffer cache during a generation: 1/16 of the machine's memory, between 256 MiB and
    8 GiB ($LTX_MLX_CACHE_LIMIT_GB overrides it). Buffers freed within a stage are reused from the cache step
    after step; without a bound (Metal's default is the whole memory limit) the buffers of finished stages stay
    resident, the swap on 16 GB Macs."""
    given = os.environ.get("LTX_MLX_CACHE_LIMIT_GB")
    if given:
        try:
            gb = float(given)
            if not gb >= 0 or gb == float("inf"):
                raise ValueError
        except ValueError:
            raise ValueError(f"LTX_MLX_CACHE_LIMIT_GB={given!r} is not a number of GB >= 0; unset it or give "
                             "e.g. 2") from None
        return int(gb * 1e9)
    return min(8 << 30, max(256 << 20, total_memory_bytes() // 16))


def total_memory_bytes() -> int:
    """The device's memory: Metal's `memory_size`, else the machine's physical memory."""
    info = mx.device_info()
    if "memory_size" in info:
        return int(info["memory_size"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@contextlib.contextmanager
def bounded_cache():
    """MLX's buffer cache bounded by `cache_limit_bytes()` (or the smaller limit already set) for the block, the
    previous limit restored after."""
    bound = cache_limit_bytes()
    previous = mx.set_cache_limit(bound)
    if not os.environ.get("LTX_MLX_CACHE_LIMIT_GB") and previous < bound:
        mx.set_cache_limit(previous)  # never raise a smaller limit already set (MLX's CPU default is 32 MiB)
    try:
        yield
    finally:
        mx.set_cache_limit(previous)
        mx.clear_cache()


def fit_audio(wav: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """Trim or zero-pad the waveform to the video's duration (the decoder's 4T-3 mel frames and the latent
    rounding leave it up to ~50 ms off, more than a frame at 24 fps)."""
    n = int(round(seconds * rate))
    if wav.shape[-1] >= n:
        return np.ascontiguousarray(wav[..., :n])
    return np.pad(wav, ((0, 0), (0, n - wav.shape[-1])))


# ---------------------------------------------------------------------------------------------- loops


def euler_loop(denoise_fn):
    return lambda sigmas, video, audio: euler_denoising_loop(sigmas, video, audio, denoise_fn)


def res2s_loop(denoise_fn, **noise):
    return lambda sigmas, video, audio: res2s_denoising_loop(sigmas, video, audio, denoise_fn, **noise)


def simple(model: X0Model, context: TextContext):
    return simple_denoising_fn(transformer_fn(model, context))


def guided(model: X0Model, positive: TextContext, negative: TextContext | None, settings: Settings,
           batch: bool = False):
    return guided_denoising_fn(transformer_fn(model, positive, negative, batch), settings.video_guider,
                               settings.audio_guider)
