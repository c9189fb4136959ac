"""Latent states in token space and the conditioning items that edit them.

A `LatentState` holds patchified tokens `(B, T, C)`, the per-token denoising strength `(B, T, 1)`
(1 = generate, 0 = keep clean), the token positions (`(B, 3, T, 2)` video, `(B, 1, T, 2)` audio) and,
once a conditioning item asks for one, a self-attention mask `(B, T, T)` in [0, 1].
Conditioning items only ever overwrite tokens of the target grid or append tokens after it, so
`clear_conditioning` can truncate back to the target before unpatchifying.

Latents are channels-last (see `latents.py`): video `(B, F, H, W, C)`, audio `(B, T, M, C)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import mlx.core as mx
import numpy as np

from .latents import (VIDEO_SCALE_FACTORS, audio_positions, patchify_audio, patchify_video, unpatchify_audio,
                      unpatchify_video, video_latent_bounds, video_latent_shape, video_positions)


@dataclass(frozen=True)
class LatentState:
    latent: mx.array
    denoise_mask: mx.array
    positions: mx.array
    clean_latent: mx.array
    attention_mask: mx.array | None = None


@dataclass(frozen=True)
class VideoLatentTools:
    """The target video grid: latent sizes, fps and how latent bounds map to pixels and seconds."""

    batch: int
    channels: int
    frames: int
    height: int
    width: int
    fps: float
    scale_factors: tuple[int, int, int] = VIDEO_SCALE_FACTORS
    causal_fix: bool = True
    patch_size: int = 1

    @classmethod
    def from_pixel_shape(cls, batch: int, frames: int, height: int, width: int, fps: float, channels: int = 128,
                         scale_factors: tuple[int, int, int] = VIDEO_SCALE_FACTORS) -> VideoLatentTools:
        f, h, w = video_latent_shape(frames, height, width, scale_factors)
        return cls(batch, channels, f, h, w, float(fps), tuple(scale_factors))

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.frames, self.height, self.width, self.channels)

    @property
    def token_count(self) -> int:
        p = self.patch_size
        return self.frames * (self.height // p) * (self.width // p)

    def patchify(self, latent: mx.array) -> mx.array:
        return patchify_video(latent, self.patch_size, channels_last=True)

    def unpatchify(self, tokens: mx.array) -> mx.array:
        """Target tokens `(B, T, C)` → channels-last latent `(B, F, H, W, C)`."""
        return unpatchify_video(tokens, self.frames, self.height, self.width, self.patch_size, channels_last=True)

    def pixel_bounds(self, batch: int, frames: int, height: int, width: int, causal_fix: bool) -> np.ndarray:
        """Integer pixel-frame/pixel `[start, end)` bounds `(B, 3, T, 2)` of a latent grid."""
        bounds = video_latent_bounds(batch, frames, height, width, self.patch_size)
        pixels = bounds * np.array(self.scale_factors)[None, :, None, None]
        if causal_fix:
            pixels[:, 0] = np.maximum(pixels[:, 0] + 1 - self.scale_factors[0], 0)
        return pixels

    def create_initial_state(self, dtype: mx.Dtype = mx.float32, initial_latent: mx.array | None = None) -> LatentState:
        """Zero (or given) latent, mask 1, positions rounded to `dtype` as the reference does."""
        if initial_latent is None:
            initial_latent = mx.zeros(self.latent_shape, dtype=dtype)
        elif tuple(initial_latent.shape) != self.latent_shape:
            raise ValueError(f"The initial video latent has shape {tuple(initial_latent.shape)}, expected "
                             f"{self.latent_shape} (B, F, H, W, C) for this size and frame count.")
        tokens = self.patchify(initial_latent.astype(dtype))
        positions = video_positions(self.batch, self.frames, self.height, self.width, self.fps, self.scale_factors,
                                    self.causal_fix, self.patch_size, dtype=dtype)
        mask = mx.ones((*tokens.shape[:2], 1), dtype=mx.float32)
        return LatentState(tokens, mask, positions, tokens)

    def clear_conditioning(self, state: LatentState) -> LatentState:
        return _truncate(state, self.token_count)


@dataclass(frozen=True)
class AudioLatentTools:
    """The target audio grid, channels-last `(B, T, M, C)`; positions in seconds (always float32, as the
    reference)."""

    batch: int
    channels: int
    frames: int
    mel_bins: int
    sample_rate: int = 16000
    hop_length: int = 160
    downsample: int = 4
    causal: bool = True

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.frames, self.mel_bins, self.channels)

    @property
    def token_count(self) -> int:
        return self.frames

    def patchify(self, latent: mx.array) -> mx.array:
        return patchify_audio(latent, channels_last=True)

    def unpatchify(self, tokens: mx.array) -> mx.array:
        """Tokens `(B, T, C·M)` → channels-last latent `(B, T, M, C)`."""
        return unpatchify_audio(tokens, self.channels, self.mel_bins, channels_last=True)

    def create_initial_state(self, dtype: mx.Dtype = mx.float32, initial_latent: mx.array | None = None) -> LatentState:
        if initial_latent is None:
            initial_latent = mx.zeros(self.latent_shape, dtype=dtype)
        elif tuple(initial_latent.shape) != self.latent_shape:
            raise ValueError(f"The initial audio latent has shape {tuple(initial_latent.shape)}, expected "
                             f"{self.latent_shape} (B, T, M, C).")
        tokens = self.patchify(initial_latent.astype(dtype))
        positions = audio_positions(self.batch, self.frames, self.sample_rate, self.hop_length, self.downsample,
                                    self.causal)
        mask = mx.ones((*tokens.shape[:2], 1), dtype=mx.float32)
        return LatentState(tokens, mask, positions, tokens)

    def clear_conditioning(self, state: LatentState) -> LatentState:
        return _truncate(state, self.token_count)


def _truncate(state: LatentState, n: int) -> LatentState:
    """Drop appended tokens; the mask resets to 1 and the attention mask goes (positions keep their dtype)."""
    return LatentState(
        latent=state.latent[:, :n],
        denoise_mask=mx.ones_like(state.denoise_mask[:, :n]),
        positions=state.positions[:, :, :n],
        clean_latent=state.clean_latent[:, :n],
    )


def apply_conditionings(state: LatentState, items: Sequence, tools) -> LatentState:
    for item in items:
        state = item.apply_to(state, tools)
    return state


# ---------------------------------------------------------------------------------------------------
# Self-attention masks for appended tokens (reference: conditioning/mask_utils.py)


def resolve_cross_mask(attention_mask, num_new_tokens: int, batch: int, dtype: mx.Dtype) -> mx.array:
    """A scalar, `(M,)` or `(B|1, M)` attention weight → `(B, M)`."""
    m = mx.array(attention_mask)
    if m.ndim == 0:
        return mx.full((batch, num_new_tokens), m.item(), dtype=dtype)
    if m.ndim == 1 and m.shape[0] == num_new_tokens:
        m = m[None]
    elif m.ndim != 2 or m.shape[1] != num_new_tokens or m.shape[0] not in (1, batch):
        raise ValueError(f"The attention mask for {num_new_tokens} conditioning tokens must be a scalar, "
                         f"({num_new_tokens},) or ({batch} or 1, {num_new_tokens}); got shape {tuple(m.shape)}.")
    return mx.broadcast_to(m.astype(dtype), (batch, num_new_tokens))


def build_attention_mask(existing: mx.array | None, num_noisy: int, num_existing: int,
                         cross: mx.array) -> mx.array:
    """`(B, N+M, N+M)`: existing block kept (1 if none), new self block 1, noisy↔new = `cross`,
    earlier conditioning tokens ↔ new = 0."""
    B, M = cross.shape
    dtype = cross.dtype
    N, n_prev = num_existing, num_existing - num_noisy
    top_left = mx.ones((B, N, N), dtype) if existing is None else existing.astype(dtype)
    to_new = mx.concatenate([mx.broadcast_to(cross[:, None, :], (B, num_noisy, M)), mx.zeros((B, n_prev, M), dtype)],
                            axis=1)
    from_new = mx.concatenate([mx.broadcast_to(cross[:, :, None], (B, M, num_noisy)), mx.zeros((B, M, n_prev), dtype),
                               mx.ones((B, M, M), dtype)], axis=2)
    return mx.concatenate([mx.concatenate([top_left, to_new], axis=2), from_new], axis=1)


def update_attention_mask(state: LatentState, attention_mask, num_noisy: int, num_new: int, batch: int,
                          dtype: mx.Dtype) -> mx.array | None:
    """The mask after appending `num_new` tokens to `state`: None stays None unless a mask exists (then the
    new tokens get full attention)."""
    if attention_mask is None:
        if state.attention_mask is None:
            return None
        cross = mx.ones((batch, num_new), dtype=dtype)
    else:
        cross = resolve_cross_mask(attention_mask, num_new, batch, dtype)
    return build_attention_mask(state.attention_mask, num_noisy, state.latent.shape[1], cross)


# ---------------------------------------------------------------------------------------------------
# Conditioning items (reference: conditioning/types/*.py, ltx_pipelines/retake.py)


def check_strength(strength: float) -> float:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"Conditioning strength must be in [0, 1] (1 keeps the image clean), got {strength}.")
    return strength


def _append(state: LatentState, tools: VideoLatentTools, tokens: mx.array, positions: mx.array,
            strength: float) -> LatentState:
    """Append tokens at the end; their mask `1 − strength` is rounded to the latent dtype first, as the
    reference builds it in that dtype. Concatenation promotes (bf16 positions + fp32 → fp32)."""
    mask = mx.full((*tokens.shape[:2], 1), 1.0 - strength, dtype=tokens.dtype)
    new_attention = update_attention_mask(state, None, tools.token_count, tokens.shape[1], tokens.shape[0],
                                          tokens.dtype)
    return LatentState(
        latent=mx.concatenate([state.latent, tokens], axis=1),
        denoise_mask=mx.concatenate([state.denoise_mask, mask], axis=1),
        positions=mx.concatenate([state.positions, positions], axis=2),
        clean_latent=mx.concatenate([state.clean_latent, tokens], axis=1),
        attention_mask=new_attention,
    )


def _check_video_latent(name: str, latent: mx.array, tools: VideoLatentTools):
    if latent.ndim != 5 or latent.shape[0] != tools.batch or latent.shape[4] != tools.channels:
        raise ValueError(f"{name} latent must be (B={tools.batch}, F, H, W, C={tools.channels}) channels-last, "
                         f"got shape {tuple(latent.shape)}.")


class VideoConditionByLatentIndex:
    """Image-to-video: overwrite the tokens of latent frame `latent_idx` (and the following ones if the latent
    has several frames) in the latent and the clean latent; their mask becomes `1 − strength`."""

    def __init__(self, latent: mx.array, strength: float, latent_idx: int):
        self.latent, self.strength, self.latent_idx = latent, check_strength(strength), latent_idx

    def apply_to(self, state: LatentState, tools: VideoLatentTools) -> LatentState:
        _check_video_latent("The conditioning image", self.latent, tools)
        _, f, h, w, _ = self.latent.shape
        if (h, w) != (tools.height, tools.width):
            raise ValueError(f"The conditioning image latent is {h}x{w} but the video latent is "
                             f"{tools.height}x{tools.width}; encode the image at the video's size.")
        if not 0 <= self.latent_idx <= tools.frames - f:
            raise ValueError(f"Latent index {self.latent_idx} with {f} frame(s) does not fit a video of "
                             f"{tools.frames} latent frames (valid: 0..{tools.frames - f}).")
        tokens = tools.patchify(self.latent)
        start = self.latent_idx * (tools.token_count // tools.frames)
        stop = start + tokens.shape[1]

        def put(x, value):
            return mx.concatenate([x[:, :start], value.astype(x.dtype), x[:, stop:]], axis=1)

        mask = mx.full((tokens.shape[0], tokens.shape[1], 1), 1.0 - self.strength, dtype=state.denoise_mask.dtype)
        return replace(state, latent=put(state.latent, tokens), clean_latent=put(state.clean_latent, tokens),
                       denoise_mask=put(state.denoise_mask, mask))


class VideoConditionByKeyframeIndex:
    """A keyframe at pixel frame `frame_idx`, appended as tokens with its own positions: the causal fix only
    at frame 0, time shifted by `frame_idx` pixel frames then divided by fps (fp32)."""

    def __init__(self, keyframes: mx.array, frame_idx: int, strength: float):
        self.keyframes, self.frame_idx, self.strength = keyframes, int(frame_idx), check_strength(strength)

    def apply_to(self, state: LatentState, tools: VideoLatentTools) -> LatentState:
        _check_video_latent("The keyframe", self.keyframes, tools)
        B, f, h, w, _ = self.keyframes.shape
        pixels = tools.pixel_bounds(B, f, h, w, causal_fix=tools.causal_fix and self.frame_idx == 0)
        pixels[:, 0] += self.frame_idx
        positions = pixels.astype(np.float32)
        positions[:, 0] /= np.float32(tools.fps)
        return _append(state, tools, tools.patchify(self.keyframes), mx.array(positions), self.strength)


class VideoConditionByReferenceLatent:
    """IC-LoRA reference video appended as tokens; spatial positions × `downscale_factor` so a smaller
    reference lines up with the target grid."""

    def __init__(self, latent: mx.array, downscale_factor: int = 1, strength: float = 1.0):
        self.latent, self.downscale_factor, self.strength = latent, downscale_factor, check_strength(strength)

    def apply_to(self, state: LatentState, tools: VideoLatentTools) -> LatentState:
        _check_video_latent("The reference video", self.latent, tools)
        B, f, h, w, _ = self.latent.shape
        positions = tools.pixel_bounds(B, f, h, w, causal_fix=tools.causal_fix).astype(np.float32)
        positions[:, 0] /= np.float32(tools.fps)
        if self.downscale_factor != 1:
            positions[:, 1:] *= np.float32(self.downscale_factor)
        return _append(state, tools, tools.patchify(self.latent), mx.array(positions), self.strength)


class ConditioningItemAttentionStrengthWrapper:
    """Applies `conditioning`, then sets how strongly its new tokens and the generated tokens attend to each
    other: a scalar, `(M,)` or `(B, M)` weight in [0, 1]."""

    def __init__(self, conditioning, attention_mask):
        self.conditioning, self.attention_mask = conditioning, attention_mask

    def apply_to(self, state: LatentState, tools: VideoLatentTools) -> LatentState:
        new_state = self.conditioning.apply_to(state, tools)
        num_new = new_state.latent.shape[1] - state.latent.shape[1]
        if num_new == 0:
            return new_state
        mask = update_attention_mask(state, self.attention_mask, tools.token_count, num_new,
                                     new_state.latent.shape[0], new_state.latent.dtype)
        return replace(new_state, attention_mask=mask)


def _area_matrix(src: int, dst: int) -> np.ndarray:
    """Rows average the source cells [floor(i·src/dst), ceil((i+1)·src/dst)) (torch's "area" resize)."""
    m = np.zeros((dst, src), np.float32)
    for i in range(dst):
        lo, hi = (i * src) // dst, -((-(i + 1) * src) // dst)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def downsample_mask_to_latent(mask, frames: int, height: int, width: int) -> mx.array:
    """IC-LoRA pixel attention mask `(B, F_pix, H_pix, W_pix)` in [0, 1] → per-token weights `(B, frames·h·w)`:
    area-resized per frame, first frame kept, the rest averaged over groups of `(F_pix − 1)/(frames − 1)`."""
    x = np.asarray(mask, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"The conditioning attention mask must be (B, frames, H, W), got shape {x.shape}.")
    f_pix = x.shape[1]
    x = _area_matrix(x.shape[2], height) @ x @ _area_matrix(x.shape[3], width).T
    if f_pix > 1 and frames > 1:
        if (f_pix - 1) % (frames - 1):
            raise ValueError(f"A mask of {f_pix} frames does not map onto {frames} latent frames: "
                             f"(frames − 1) must divide {f_pix - 1}.")
        t = (f_pix - 1) // (frames - 1)
        rest = x[:, 1:].reshape(x.shape[0], frames - 1, t, height, width).mean(axis=2)
        x = np.concatenate([x[:, :1], rest], axis=1)
    else:
        x = x[:, :1]
    return mx.array(x.reshape(x.shape[0], -1))


@dataclass(frozen=True)
class TemporalRegionMask:
    """Retake: mask 1 for tokens whose time span overlaps `[start_time, end_time)` seconds, 0 elsewhere."""

    start_time: float
    end_time: float
    fps: float

    def apply_to(self, state: LatentState, tools) -> LatentState:
        if isinstance(tools, VideoLatentTools):
            pixels = tools.pixel_bounds(1, tools.frames, tools.height, tools.width, tools.causal_fix)
            seconds = pixels[0, 0].astype(np.float32) / np.float32(self.fps)
        else:
            seconds = np.array(audio_positions(1, tools.frames, tools.sample_rate, tools.hop_length, tools.downsample,
                                               tools.causal))[0, 0]
        inside = (seconds[:, 1] > np.float32(self.start_time)) & (seconds[:, 0] < np.float32(self.end_time))
        if state.denoise_mask.shape[1] != inside.shape[0]:
            raise ValueError("TemporalRegionMask must be applied before any tokens are appended.")
        mask = mx.broadcast_to(mx.array(inside)[None, :, None], state.denoise_mask.shape)
        return replace(state, denoise_mask=mask.astype(state.denoise_mask.dtype))


# ---------------------------------------------------------------------------------------------------
# User images → conditioning items (reference: ltx_pipelines/utils/helpers.py). Each image carries `frame_idx`
# and `strength`; `latents` are their encodings at the stage's size, `(1, 1, h, w, C)` (the caller reads the
# files and runs the video VAE encoder).


def combined_image_conditionings(images: Sequence, latents: Sequence[mx.array]) -> list:
    """Frame 0 → replace latent frame 0; any other frame → an appended keyframe."""
    return [VideoConditionByLatentIndex(z, img.strength, 0) if img.frame_idx == 0
            else VideoConditionByKeyframeIndex(z, img.frame_idx, img.strength)
            for img, z in zip(images, latents, strict=True)]


def image_conditionings_by_replacing_latent(images: Sequence, latents: Sequence[mx.array]) -> list:
    """Every image replaces a latent frame; as in the reference, `frame_idx` is used as the *latent* index."""
    return [VideoConditionByLatentIndex(z, img.strength, img.frame_idx) for img, z in zip(images, latents, strict=True)]


def image_conditionings_by_adding_guiding_latent(images: Sequence, latents: Sequence[mx.array]) -> list:
    """Every image (frame 0 included) is an appended keyframe (keyframe interpolation)."""
    return [VideoConditionByKeyframeIndex(z, img.frame_idx, img.strength)
            for img, z in zip(images, latents, strict=True)]
