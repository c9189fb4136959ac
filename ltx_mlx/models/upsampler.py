"""Latent upsamplers (spatial ×2, rational ×0.75/1.5/2/4, temporal ×2, spatial+temporal), channels-last inside.

Each ships as its own safetensors file: a flat metadata `config` and keys without a prefix. They work on
un-normalised latents; `upsample_video` wraps one between the VAE statistics' un-normalise and normalise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .base import BaseConfig, check_choice
from .video_vae import depth_to_space

PREFIX = ""  # upsampler files hold only the upsampler, unprefixed
RATIONAL_SCALES = {0.75: (3, 4), 1.5: (3, 2), 2.0: (2, 1), 4.0: (4, 1)}


@dataclass
class UpsamplerConfig(BaseConfig):
    in_channels: int = 128
    mid_channels: int = 512
    num_blocks_per_stage: int = 4
    dims: int = 3
    spatial_upsample: bool = True
    temporal_upsample: bool = False
    spatial_scale: float = 2.0
    rational_resampler: bool = False

    def validate(self):
        if not (self.spatial_upsample or self.temporal_upsample):
            raise ValueError("latent upsampler config: spatial_upsample or temporal_upsample must be true (both are "
                             "false)")
        check_choice("latent upsampler config", "dims", self.dims, (2, 3))
        if self.dims == 2 and (self.temporal_upsample or self.rational_resampler):
            raise ValueError("latent upsampler with dims=2 supports only the plain spatial ×2 upsampler "
                             "(the reference cannot run temporal or rational ones with 2-D convolutions)")
        if self.spatial_upsample and self.rational_resampler and float(self.spatial_scale) not in RATIONAL_SCALES:
            raise ValueError(f"rational upsampler scale {self.spatial_scale} is not supported: choose one of "
                             f"{sorted(RATIONAL_SCALES)}")


def _conv(dims: int, cin: int, cout: int) -> nn.Module:
    return (nn.Conv3d if dims == 3 else nn.Conv2d)(cin, cout, 3, padding=1)


def _per_frame(fn, x: mx.array) -> mx.array:
    """Apply a 2-D op to every frame of (B, F, H, W, C)."""
    B, F = x.shape[:2]
    y = fn(x.reshape(B * F, *x.shape[2:]))
    return y.reshape(B, F, *y.shape[1:])


class ResBlock(nn.Module):
    def __init__(self, channels: int, dims: int):
        super().__init__()
        self.conv1 = _conv(dims, channels, channels)
        self.norm1 = nn.GroupNorm(32, channels, eps=1e-5, pytorch_compatible=True)
        self.conv2 = _conv(dims, channels, channels)
        self.norm2 = nn.GroupNorm(32, channels, eps=1e-5, pytorch_compatible=True)

    def __call__(self, x: mx.array) -> mx.array:
        h = nn.silu(self.norm1(self.conv1(x)))
        return nn.silu(self.norm2(self.conv2(h)) + x)


class BlurDownsample(nn.Module):
    """Depthwise binomial blur with stride; `kernel` (1, 1, k, k) comes from the checkpoint."""

    def __init__(self, stride: int, kernel_size: int = 5):
        super().__init__()
        self.stride = stride
        row = mx.array([math.comb(kernel_size - 1, i) for i in range(kernel_size)], dtype=mx.float32)
        k2 = row[:, None] * row[None, :]
        self.kernel = (k2 / k2.sum())[None, None]

    def __call__(self, x: mx.array) -> mx.array:  # (N, H, W, C)
        if self.stride == 1:
            return x
        C, k = x.shape[-1], self.kernel.shape[-1]
        w = mx.broadcast_to(self.kernel.reshape(1, k, k, 1).astype(x.dtype), (C, k, k, 1))
        return mx.conv2d(x, w, stride=self.stride, padding=k // 2, groups=C)


class SpatialRationalResampler(nn.Module):
    """Up by `num` (conv + pixel shuffle), then anti-aliased down by `den`, frame by frame."""

    def __init__(self, mid_channels: int, scale: float):
        super().__init__()
        self.num, self.den = RATIONAL_SCALES[float(scale)]
        self.conv = nn.Conv2d(mid_channels, self.num ** 2 * mid_channels, 3, padding=1)
        self.blur_down = BlurDownsample(self.den)

    def __call__(self, x: mx.array) -> mx.array:
        def frame(y):
            y = depth_to_space(self.conv(y)[:, None], (1, self.num, self.num))[:, 0]
            return self.blur_down(y)

        return _per_frame(frame, x)


class LatentUpsampler(nn.Module):
    def __init__(self, cfg: UpsamplerConfig):
        super().__init__()
        self.cfg = cfg
        mid, dims = cfg.mid_channels, cfg.dims
        self.initial_conv = _conv(dims, cfg.in_channels, mid)
        self.initial_norm = nn.GroupNorm(32, mid, eps=1e-5, pytorch_compatible=True)
        self.res_blocks = [ResBlock(mid, dims) for _ in range(cfg.num_blocks_per_stage)]
        if cfg.spatial_upsample and cfg.temporal_upsample:
            self.shuffle = (2, 2, 2)
            self.upsampler = [nn.Conv3d(mid, 8 * mid, 3, padding=1)]
        elif cfg.temporal_upsample:
            self.shuffle = (2, 1, 1)
            self.upsampler = [nn.Conv3d(mid, 2 * mid, 3, padding=1)]
        elif cfg.rational_resampler:
            self.upsampler = SpatialRationalResampler(mid, cfg.spatial_scale)
        else:  # the plain spatial upsampler is always ×2, whatever spatial_scale says (as the reference)
            self.shuffle = (1, 2, 2)
            self.upsampler = [nn.Conv2d(mid, 4 * mid, 3, padding=1)]
        self.post_upsample_res_blocks = [ResBlock(mid, dims) for _ in range(cfg.num_blocks_per_stage)]
        self.final_conv = _conv(dims, mid, cfg.in_channels)

    def _upsample(self, x: mx.array) -> mx.array:
        if self.cfg.temporal_upsample:
            # the first latent frame stands for a single pixel frame: drop its duplicate
            return depth_to_space(self.upsampler[0](x), self.shuffle)[:, 1:]
        if self.cfg.rational_resampler:
            return self.upsampler(x)
        if x.ndim == 4:
            return depth_to_space(self.upsampler[0](x)[:, None], self.shuffle)[:, 0]
        return _per_frame(self._upsample, x)

    def __call__(self, latent: mx.array) -> mx.array:
        """Un-normalised latents (B, F, H, W, C) -> upsampled (B, F', H', W', C)."""
        if latent.ndim != 5 or latent.shape[-1] != self.cfg.in_channels:
            raise ValueError(f"the latent upsampler takes (B, F, H, W, {self.cfg.in_channels}) channels-last "
                             f"latents, got shape {tuple(latent.shape)}")
        if self.cfg.dims == 2:
            return _per_frame(self._forward, latent)
        return self._forward(latent)

    def _forward(self, x: mx.array) -> mx.array:
        x = nn.silu(self.initial_norm(self.initial_conv(x)))
        for block in self.res_blocks:
            x = block(x)
        x = self._upsample(x)
        for block in self.post_upsample_res_blocks:
            x = block(x)
        return self.final_conv(x)


def upsample_video(latent: mx.array, statistics, upsampler: LatentUpsampler) -> mx.array:
    """Normalised latents -> un-normalise -> upsample -> normalise, with the VAE's per-channel statistics
    (a `PerChannelStatistics`, or a VAE encoder/decoder that holds one)."""
    stats = getattr(statistics, "per_channel_statistics", statistics)
    return stats.normalize(upsampler(stats.un_normalize(latent)))


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Reference-named upsampler tensors -> ours: conv weights channels-last; norms and the blur kernel as they are."""
    out = {}
    for k, w in weights.items():
        if k.endswith(".weight") and "norm" not in k.rsplit(".", 2)[-2]:
            w = w.transpose(0, *range(2, w.ndim), 1)  # Conv (O, I, *k) -> (O, *k, I)
        out[k] = w
    return out
