"""Latent shapes, patchifiers and token positions for the LTX-2 transformer.

The layout convention: latents outside the transformer are channels-last, as the VAEs compute inside, video
`(B, F, H, W, C)` and audio `(B, T, M, C)` (T latent frames, M mel bins); the pipelines, the conditioning items
and the latent tools all use it. The patchifiers also take the reference's channels-first `(B, C, F, H, W)` /
`(B, C, T, M)` (`channels_last=False`), which the parity tests compare against and the audio VAE's public call
still takes at its boundary. Video tokens are f-major then h, w; audio tokens are `(c m)` per latent frame.
Positions are `[start, end)` bounds: video `(B, 3, T, 2)` in (seconds, pixels, pixels), audio `(B, 1, T, 2)`
in seconds.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

VIDEO_SCALE_FACTORS = (8, 32, 32)  # (time, height, width) between pixels and latents
AUDIO_SAMPLE_RATE = 16000
AUDIO_HOP_LENGTH = 160
AUDIO_LATENT_DOWNSAMPLE = 4


def video_latent_shape(frames: int, height: int, width: int, scale_factors=VIDEO_SCALE_FACTORS) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width) of a pixel video: (F−1)//8+1, H//32, W//32."""
    st, sh, sw = scale_factors
    if frames < 1 or height < sh or width < sw:
        raise ValueError(f"a {frames}x{height}x{width} video is too small for latent scale factors {scale_factors}")
    return (frames - 1) // st + 1, height // sh, width // sw


def audio_latent_length(frames: int, fps: float, sample_rate: int = AUDIO_SAMPLE_RATE,
                        hop_length: int = AUDIO_HOP_LENGTH, downsample: int = AUDIO_LATENT_DOWNSAMPLE) -> int:
    """Audio latent frames matching a video of `frames` at `fps` (25 per second with the defaults)."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    latents_per_second = float(sample_rate) / float(hop_length) / float(downsample)
    return round(float(frames) / float(fps) * latents_per_second)


def patchify_video(latent: mx.array, patch_size: int = 1, channels_last: bool = False) -> mx.array:
    """`(B, C, F, H, W)` → tokens `(B, F·(H/p)·(W/p), C·p·p)`, channel order (c, p_h, p_w)."""
    x = latent if not channels_last else latent.transpose(0, 4, 1, 2, 3)
    B, C, F, H, W = x.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"latent height/width ({H}, {W}) must be multiples of the patch size {p}")
    x = x.reshape(B, C, F, H // p, p, W // p, p).transpose(0, 2, 3, 5, 1, 4, 6)
    return x.reshape(B, F * (H // p) * (W // p), C * p * p)


def unpatchify_video(tokens: mx.array, frames: int, height: int, width: int, patch_size: int = 1,
                     channels_last: bool = False) -> mx.array:
    """Inverse of `patchify_video`; `frames, height, width` are the latent sizes."""
    B, T, D = tokens.shape
    p = patch_size
    h, w = height // p, width // p
    if T != frames * h * w:
        raise ValueError(f"{T} tokens do not make a {frames}x{height}x{width} latent with patch size {p}")
    C = D // (p * p)
    x = tokens.reshape(B, frames, h, w, C, p, p).transpose(0, 4, 1, 2, 5, 3, 6).reshape(B, C, frames, height, width)
    return x.transpose(0, 2, 3, 4, 1) if channels_last else x


def patchify_audio(latent: mx.array, channels_last: bool = False) -> mx.array:
    """`(B, C, T, M)` → tokens `(B, T, C·M)` (`b c t f -> b t (c f)`)."""
    x = latent.transpose(0, 1, 3, 2) if channels_last else latent.transpose(0, 2, 1, 3)  # (B, T, C, M)
    B, T, C, M = x.shape
    return x.reshape(B, T, C * M)


def unpatchify_audio(tokens: mx.array, channels: int, mel_bins: int, channels_last: bool = False) -> mx.array:
    B, T, D = tokens.shape
    if D != channels * mel_bins:
        raise ValueError(f"audio tokens of width {D} do not split into {channels} channels x {mel_bins} mel bins")
    x = tokens.reshape(B, T, channels, mel_bins)
    return x.transpose(0, 1, 3, 2) if channels_last else x.transpose(0, 2, 1, 3)


def video_latent_bounds(batch: int, frames: int, height: int, width: int, patch_size: int = 1) -> np.ndarray:
    """Latent-grid `[start, end)` per token and axis: int64 `(B, 3, T, 2)`."""
    f, h, w = np.meshgrid(np.arange(frames), np.arange(0, height, patch_size), np.arange(0, width, patch_size),
                          indexing="ij")
    starts = np.stack([f, h, w]).reshape(3, -1)
    ends = starts + np.array([1, patch_size, patch_size])[:, None]
    bounds = np.stack([starts, ends], axis=-1)
    return np.broadcast_to(bounds, (batch, *bounds.shape)).copy()


def video_positions(batch: int, frames: int, height: int, width: int, fps: float,
                    scale_factors=VIDEO_SCALE_FACTORS, causal_fix: bool = True, patch_size: int = 1,
                    dtype: mx.Dtype = mx.float32) -> mx.array:
    """Token bounds in (seconds, pixels, pixels), `(B, 3, T, 2)`.

    The causal VAE gives latent frame 0 a single pixel frame: time bounds become `max(8·t − 7, 0)`.
    Pipelines hand the transformer positions in their compute dtype; with bf16 they are rounded to bf16
    here, as the reference does.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pixels = video_latent_bounds(batch, frames, height, width, patch_size) * np.array(scale_factors)[None, :, None, None]
    if causal_fix:
        pixels[:, 0] = np.maximum(pixels[:, 0] + 1 - scale_factors[0], 0)
    pos = mx.array(pixels.astype(np.float32))
    pos = mx.concatenate([pos[:, :1] / fps, pos[:, 1:]], axis=1)
    return pos.astype(dtype)


def audio_positions(batch: int, frames: int, sample_rate: int = AUDIO_SAMPLE_RATE,
                    hop_length: int = AUDIO_HOP_LENGTH, downsample: int = AUDIO_LATENT_DOWNSAMPLE,
                    causal: bool = True, shift: int = 0) -> mx.array:
    """Token bounds in seconds, float32 `(B, 1, T, 2)`: latent frame i covers mel frames from 4i−3 (causal)."""

    def seconds(first: int) -> np.ndarray:
        mel = np.arange(first, first + frames, dtype=np.float32) * np.float32(downsample)
        if causal:
            mel = np.maximum(mel + np.float32(1 - downsample), np.float32(0))
        return mel * np.float32(hop_length) / np.float32(sample_rate)

    bounds = np.stack([seconds(shift), seconds(shift + 1)], axis=-1)  # (T, 2)
    return mx.array(np.broadcast_to(bounds, (batch, 1, frames, 2)).copy())
