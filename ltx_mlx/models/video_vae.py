"""Video VAE of LTX-2 / LTX-2.3: causal 3-D conv encoder and decoder, channels-last (B, F, H, W, C) inside.

Built from the checkpoint's `config["vae"]`. Latents handed in and out are *normalised* with the
shared per-channel statistics (the transformer works on normalised latents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .base import BaseConfig, check_choice
from .transformer import CombinedTimestepEmbedding  # the reference's VAE uses the DiT's, too
from .vae_tiling import Noise, TilingConfig, gaussian_noise, tiled_decode

ENCODER_PREFIX = "vae.encoder."
DECODER_PREFIX = "vae.decoder."
STATISTICS_PREFIX = "vae.per_channel_statistics."
# Aggregates the real files carry beside the two statistics the model reads; the reference ignores them.
UNUSED_STATISTICS = ("channel", "mean-of-stds", "mean-of-stds_over_std-of-means")

PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
NOISE_SCALE, DECODE_TIMESTEP = 0.025, 0.05
CONV_CHUNK_BYTES = 64 * 2**20
# Evaluate every convolution's output as it is made: a lazily built whole-decoder graph keeps ~4x more
# activations alive (measured in bench/vae_decode_memory.py); set False to trace the model (e.g. mx.compile).
EVAL_EACH_CONV = True


@dataclass
class VideoVAEConfig(BaseConfig):
    dims: int = 3
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 128
    patch_size: int = 4
    norm_layer: str = "pixel_norm"
    latent_log_var: str = "uniform"
    spatial_padding_mode: str | None = None  # one key; None -> encoder "zeros", decoder "reflect"
    encoder_blocks: list = field(default_factory=list)
    decoder_blocks: list = field(default_factory=list)
    causal_decoder: bool = False
    timestep_conditioning: bool = True
    decoder_base_channels: int = 128

    def validate(self):
        if self.dims != 3:
            raise ValueError(f"video VAE config: dims={self.dims!r} is not supported: only 3-D causal convolutions "
                             "(dims 3)")
        check_choice("video VAE config", "norm_layer", self.norm_layer, ("pixel_norm", "group_norm"))
        if self.spatial_padding_mode is not None:
            check_choice("video VAE config", "spatial_padding_mode", self.spatial_padding_mode, sorted(PADDING_MODES))

    @property
    def encoder_padding(self) -> str:
        return self.spatial_padding_mode or "zeros"

    @property
    def decoder_padding(self) -> str:
        return self.spatial_padding_mode or "reflect"


def _blocks(blocks: list) -> list[tuple[str, dict]]:
    return [(name, {"num_layers": p} if isinstance(p, int) else dict(p)) for name, p in blocks]


def _strides(name: str) -> tuple[int, int, int]:
    if name.startswith("compress_time"):
        return (2, 1, 1)
    if name.startswith("compress_space"):
        return (1, 2, 2)
    if name.startswith("compress_all"):
        return (2, 2, 2)
    return (1, 1, 1)


def scale_factors(cfg: VideoVAEConfig, blocks: list) -> tuple[int, int]:
    """(time, space) compression of a block list: 8 and 32 for the LTX-2 / LTX-2.3 files."""
    s = [_strides(name) for name, _ in _blocks(blocks)]
    return math.prod(t for t, _, _ in s), cfg.patch_size * math.prod(h for _, h, _ in s)


# ---------------------------------------------------------------------------------------------------------
# Layout helpers (channels-last versions of the reference's einops patterns)

def _pad_index(x: mx.array, axis: int, before: int, after: int, mode: str) -> mx.array:
    idx = np.pad(np.arange(x.shape[axis]), (before, after), mode=mode)
    return mx.take(x, mx.array(idx.astype(np.int32)), axis=axis)


def patchify(x: mx.array, p: int) -> mx.array:
    """(B,F,H,W,C) -> (B,F,H/p,W/p,C*p*p) with channel order (c, r_w, q_h), as `b c f (h q)(w r) -> b (c r q) f h w`."""
    B, F, H, W, C = x.shape
    x = x.reshape(B, F, H // p, p, W // p, p, C).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(B, F, H // p, W // p, C * p * p)


def unpatchify(x: mx.array, p: int) -> mx.array:
    B, F, h, w, D = x.shape
    x = x.reshape(B, F, h, w, D // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(B, F, h * p, w * p, D // (p * p))


def depth_to_space(x: mx.array, s: tuple[int, int, int]) -> mx.array:
    """`b (c p1 p2 p3) d h w -> b c (d p1)(h p2)(w p3)` in channels-last."""
    B, D, H, W, C = x.shape
    c = C // math.prod(s)
    x = x.reshape(B, D, H, W, c, *s).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(B, D * s[0], H * s[1], W * s[2], c)


def space_to_depth(x: mx.array, s: tuple[int, int, int]) -> mx.array:
    """`b c (d p1)(h p2)(w p3) -> b (c p1 p2 p3) d h w` in channels-last."""
    B, D, H, W, C = x.shape
    x = x.reshape(B, D // s[0], s[0], H // s[1], s[1], W // s[2], s[2], C).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(B, D // s[0], H // s[1], W // s[2], C * math.prod(s))


# ---------------------------------------------------------------------------------------------------------
# Building blocks

class PixelNorm(nn.Module):
    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, None, 1e-8)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group_norm":
        return nn.GroupNorm(32, channels, eps=1e-6, pytorch_compatible=True)
    return PixelNorm()


class CausalConv3d(nn.Module):
    """k×k×k conv; time padded by repeating the first frame (causal) or first and last (symmetric)."""

    def __init__(self, in_channels: int, out_channels: int, stride=(1, 1, 1), padding_mode: str = "zeros",
                 kernel_size: int = 3):
        super().__init__()
        self.kernel_size, self.padding_mode, self.time_stride = kernel_size, padding_mode, stride[0]
        p = kernel_size // 2 if padding_mode == "zeros" else 0  # zeros: padded inside the conv, no copy
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=(0, p, p))

    def __call__(self, x: mx.array, causal: bool = True) -> mx.array:
        k = self.kernel_size
        return self._chunked_conv(x, *((k - 1, 0) if causal else (k // 2, k // 2)))

    def _pad_space(self, x: mx.array) -> mx.array:
        if self.padding_mode == "zeros":
            return x
        p, mode = self.kernel_size // 2, PADDING_MODES[self.padding_mode]
        return _pad_index(_pad_index(x, 2, p, p, mode), 3, p, p, mode)

    def _chunked_conv(self, x: mx.array, front: int, back: int) -> mx.array:
        # Convolutions may unfold their input k^3-fold (im2col): run them a few output frames at a time so
        # that buffer stays under CONV_CHUNK_BYTES, gathering and padding each chunk's frames (edge frames in
        # time, the padding mode in space), so no padded copy of the whole input is made either.
        k, s, F = self.kernel_size, self.time_stride, x.shape[1]
        frames = (F + front + back - k) // s + 1
        per_frame = x.shape[0] * (x.shape[2] + 2) * (x.shape[3] + 2) * x.shape[4] * k ** 3 * x.dtype.size
        n = min(frames, max(1, CONV_CHUNK_BYTES // per_frame))
        outs = []
        for i in range(0, frames, n):
            first, stop = i * s - front, (min(i + n, frames) - 1) * s + k - front
            idx = np.clip(np.arange(first, stop), 0, F - 1).astype(np.int32)
            outs.append(self.conv(self._pad_space(mx.take(x, mx.array(idx), axis=1))))
            if EVAL_EACH_CONV:  # the backend may hold a conv's unfold buffer until its graph is evaluated
                mx.eval(outs[-1])
        y = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=1)
        if EVAL_EACH_CONV:  # frees the chunks before the next layer's graph holds them (~12% lower decode peak)
            mx.eval(y)
        return y


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm_layer: str, padding_mode: str,
                 inject_noise: bool = False, timestep_conditioning: bool = False):
        super().__init__()
        self.inject_noise, self.timestep_conditioning = inject_noise, timestep_conditioning
        self.norm1 = _norm(norm_layer, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, padding_mode=padding_mode)
        self.norm2 = _norm(norm_layer, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, padding_mode=padding_mode)
        if inject_noise:
            self.per_channel_scale1 = mx.zeros((in_channels,))
            self.per_channel_scale2 = mx.zeros((in_channels,))
        if in_channels != out_channels:
            self.norm3 = nn.GroupNorm(1, in_channels, eps=1e-6, pytorch_compatible=True)
            self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1)
        if timestep_conditioning:
            self.scale_shift_table = mx.zeros((4, in_channels))

    def _noise(self, h: mx.array, scale: mx.array, noise: Noise) -> mx.array:
        # One (H, W) field shared by every frame and batch item, scaled per channel (StyleGAN-style).
        return h + noise(h.shape[2:4]).astype(h.dtype)[..., None] * scale

    def __call__(self, x: mx.array, causal: bool = True, ada: mx.array | None = None,
                 noise: Noise | None = None) -> mx.array:
        h = self.norm1(x)
        if self.timestep_conditioning:
            ada = (self.scale_shift_table + ada)[:, :, None, None, None, :]  # (B, 4, 1, 1, 1, C)
            shift1, scale1, shift2, scale2 = ada[:, 0], ada[:, 1], ada[:, 2], ada[:, 3]
            h = h * (1 + scale1) + shift1
        h = self.conv1(nn.silu(h), causal)
        if self.inject_noise:
            h = self._noise(h, self.per_channel_scale1, noise)
        h = self.norm2(h)
        if self.timestep_conditioning:
            h = h * (1 + scale2) + shift2
        h = self.conv2(nn.silu(h), causal)
        if self.inject_noise:
            h = self._noise(h, self.per_channel_scale2, noise)
        if "conv_shortcut" in self:
            x = self.conv_shortcut(self.norm3(x))
        return x + h


class UNetMidBlock3D(nn.Module):
    def __init__(self, channels: int, num_layers: int, norm_layer: str, padding_mode: str,
                 inject_noise: bool = False, timestep_conditioning: bool = False):
        super().__init__()
        self.timestep_conditioning = timestep_conditioning
        if timestep_conditioning:
            self.time_embedder = CombinedTimestepEmbedding(4 * channels)
        self.res_blocks = [ResnetBlock3D(channels, channels, norm_layer, padding_mode, inject_noise,
                                         timestep_conditioning) for _ in range(num_layers)]

    def __call__(self, x: mx.array, causal: bool = True, timestep: mx.array | None = None,
                 noise: Noise | None = None) -> mx.array:
        ada = None
        if self.timestep_conditioning:
            ada = self.time_embedder(timestep, x.dtype).reshape(x.shape[0], 4, -1)
        for block in self.res_blocks:
            x = block(x, causal, ada, noise)
        return x


class SpaceToDepthDownsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride, padding_mode: str):
        super().__init__()
        self.stride = tuple(stride)
        self.group_size = in_channels * math.prod(stride) // out_channels
        self.conv = CausalConv3d(in_channels, out_channels // math.prod(stride), padding_mode=padding_mode)

    def __call__(self, x: mx.array, causal: bool = True) -> mx.array:
        if self.stride[0] == 2:
            x = mx.concatenate([x[:, :1], x], axis=1)
        skip = space_to_depth(x, self.stride)
        skip = skip.reshape(*skip.shape[:-1], -1, self.group_size).mean(axis=-1)
        return space_to_depth(self.conv(x, causal), self.stride) + skip


class DepthToSpaceUpsample(nn.Module):
    def __init__(self, in_channels: int, stride, padding_mode: str, residual: bool = False, multiplier: int = 1):
        super().__init__()
        self.stride, self.residual, self.multiplier = tuple(stride), residual, multiplier
        self.conv = CausalConv3d(in_channels, math.prod(stride) * in_channels // multiplier,
                                 padding_mode=padding_mode)

    def __call__(self, x: mx.array, causal: bool = True) -> mx.array:
        y = depth_to_space(self.conv(x, causal), self.stride)
        drop = 1 if self.stride[0] == 2 else 0
        if not self.residual:
            return y[:, drop:]
        # the input, depth-to-spaced and repeated along channels (broadcast, not materialised)
        skip = depth_to_space(x, self.stride)[:, drop:]
        B, D, H, W, C = y[:, drop:].shape
        n = math.prod(self.stride) // self.multiplier
        return (y[:, drop:].reshape(B, D, H, W, n, C // n) + skip[..., None, :]).reshape(B, D, H, W, C)


class PerChannelStatistics(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self["std-of-means"] = mx.ones((channels,))
        self["mean-of-means"] = mx.zeros((channels,))

    def normalize(self, x: mx.array) -> mx.array:
        return (x - self["mean-of-means"].astype(x.dtype)) / self["std-of-means"].astype(x.dtype)

    def un_normalize(self, x: mx.array) -> mx.array:
        return x * self["std-of-means"].astype(x.dtype) + self["mean-of-means"].astype(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# Encoder

def _encoder_block(name: str, p: dict, channels: int, cfg: VideoVAEConfig) -> tuple[nn.Module, int]:
    pad, stride = cfg.encoder_padding, _strides(name)
    if name == "res_x":
        return UNetMidBlock3D(channels, p["num_layers"], cfg.norm_layer, pad), channels
    if name == "res_x_y":
        out = channels * p.get("multiplier", 2)
        return ResnetBlock3D(channels, out, cfg.norm_layer, pad), out
    if name in ("compress_time", "compress_space", "compress_all"):
        return CausalConv3d(channels, channels, stride, pad), channels
    if name == "compress_all_x_y":
        out = channels * p.get("multiplier", 2)
        return CausalConv3d(channels, out, stride, pad), out
    if name in ("compress_time_res", "compress_space_res", "compress_all_res"):
        out = channels * p.get("multiplier", 2)
        return SpaceToDepthDownsample(channels, out, stride, pad), out
    raise ValueError(f"video VAE encoder block {name!r} is not supported (res_x, res_x_y, compress_time/space/all, "
                     "compress_all_x_y, compress_time/space/all_res)")


class VideoEncoder(nn.Module):
    def __init__(self, cfg: VideoVAEConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.latent_log_var not in ("uniform", "per_channel", "constant"):
            raise ValueError(f"video VAE latent_log_var {cfg.latent_log_var!r} is not supported "
                             "(uniform, per_channel, constant)")
        self.time_factor, self.space_factor = scale_factors(cfg, cfg.encoder_blocks)
        C = cfg.latent_channels
        self.per_channel_statistics = PerChannelStatistics(C)
        self.conv_in = CausalConv3d(cfg.in_channels * cfg.patch_size ** 2, C, padding_mode=cfg.encoder_padding)
        self.down_blocks = []
        channels = C
        for name, p in _blocks(cfg.encoder_blocks):
            block, channels = _encoder_block(name, p, channels, cfg)
            self.down_blocks.append(block)
        self.conv_norm_out = _norm(cfg.norm_layer, channels)
        out = 2 * C if cfg.latent_log_var == "per_channel" else C + 1
        self.conv_out = CausalConv3d(channels, out, padding_mode=cfg.encoder_padding)

    def check_input(self, x: mx.array):
        if x.ndim != 5 or x.shape[-1] != self.cfg.in_channels:
            raise ValueError(f"the video encoder takes (B, F, H, W, {self.cfg.in_channels}) channels-last video, "
                             f"got shape {tuple(x.shape)}")
        B, F, H, W, _ = x.shape
        if (F - 1) % self.time_factor:
            k = (F - 1) // self.time_factor
            raise ValueError(f"the video has {F} frames; the encoder needs {self.time_factor}k+1 frames "
                             f"(crop to {self.time_factor * k + 1} or pad to {self.time_factor * (k + 1) + 1})")
        if H % self.space_factor or W % self.space_factor:
            raise ValueError(f"the video is {W}x{H} (WxH); width and height must be multiples of "
                             f"{self.space_factor}: resize or crop it")

    def __call__(self, x: mx.array) -> mx.array:
        """(B, F, H, W, 3) video in [-1, 1] -> normalised latent means (B, F', H', W', C)."""
        self.check_input(x)
        x = self.conv_in(patchify(x, self.cfg.patch_size))
        for block in self.down_blocks:
            x = block(x)
        x = self.conv_out(nn.silu(self.conv_norm_out(x)))
        return self.per_channel_statistics.normalize(x[..., : self.cfg.latent_channels])


# ---------------------------------------------------------------------------------------------------------
# Decoder

def _decoder_block(name: str, p: dict, channels: int, cfg: VideoVAEConfig) -> tuple[nn.Module, int]:
    pad, tc = cfg.decoder_padding, cfg.timestep_conditioning
    if name == "res_x":
        return UNetMidBlock3D(channels, p["num_layers"], cfg.norm_layer, pad, p.get("inject_noise", False), tc), channels
    if name == "res_x_y":
        out = channels // p.get("multiplier", 2)
        return ResnetBlock3D(channels, out, cfg.norm_layer, pad, p.get("inject_noise", False)), out
    if name in ("compress_time", "compress_space", "compress_all"):
        m = p.get("multiplier", 1)
        residual = p.get("residual", False) if name == "compress_all" else False
        return DepthToSpaceUpsample(channels, _strides(name), pad, residual, m), channels // m
    raise ValueError(f"video VAE decoder block {name!r} is not supported (res_x, res_x_y, compress_time, "
                     "compress_space, compress_all); the reference cannot run 'attn_res_x' either")


class VideoDecoder(nn.Module):
    def __init__(self, cfg: VideoVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.causal, self.timestep_conditioning = cfg.causal_decoder, cfg.timestep_conditioning
        self.time_factor, self.space_factor = scale_factors(cfg, cfg.decoder_blocks)
        channels = cfg.decoder_base_channels * 8
        self.per_channel_statistics = PerChannelStatistics(cfg.latent_channels)
        self.conv_in = CausalConv3d(cfg.latent_channels, channels, padding_mode=cfg.decoder_padding)
        self.up_blocks = []
        for name, p in reversed(_blocks(cfg.decoder_blocks)):
            block, channels = _decoder_block(name, p, channels, cfg)
            self.up_blocks.append(block)
        self.conv_norm_out = _norm(cfg.norm_layer, channels)
        self.conv_out = CausalConv3d(channels, cfg.out_channels * cfg.patch_size ** 2,
                                     padding_mode=cfg.decoder_padding)
        if cfg.timestep_conditioning:
            self.timestep_scale_multiplier = mx.array(1000.0)
            self.last_time_embedder = CombinedTimestepEmbedding(2 * channels)
            self.last_scale_shift_table = mx.zeros((2, channels))

    def check_input(self, z: mx.array):
        if z.ndim != 5 or z.shape[-1] != self.cfg.latent_channels:
            raise ValueError(f"the video decoder takes (B, F', H', W', {self.cfg.latent_channels}) channels-last "
                             f"latents, got shape {tuple(z.shape)}")

    def __call__(self, z: mx.array, timestep: mx.array | float | None = None, key: mx.array | None = None,
                 noise: Noise | None = None) -> mx.array:
        """Normalised latents (B, F', H', W', C) -> video (B, 8(F'-1)+1, 32H', 32W', 3), not clamped.

        Random draws (the timestep-conditioning noise, `inject_noise` blocks) come from `noise(shape)`
        in the reference's order, or from `key`.
        """
        self.check_input(z)
        noise = noise or gaussian_noise(key)
        B = z.shape[0]
        t = None
        if self.timestep_conditioning:
            z = noise(z.shape).astype(z.dtype) * NOISE_SCALE + (1.0 - NOISE_SCALE) * z
            t = mx.broadcast_to(mx.array(DECODE_TIMESTEP if timestep is None else timestep, dtype=z.dtype), (B,))
            t = t * self.timestep_scale_multiplier.astype(z.dtype)
        x = self.conv_in(self.per_channel_statistics.un_normalize(z), self.causal)
        for block in self.up_blocks:
            if isinstance(block, UNetMidBlock3D):
                x = block(x, self.causal, t, noise)
            elif isinstance(block, ResnetBlock3D):
                x = block(x, self.causal, noise=noise)
            else:
                x = block(x, self.causal)
        x = self.conv_norm_out(x)
        if self.timestep_conditioning:
            ada = self.last_scale_shift_table + self.last_time_embedder(t, x.dtype).reshape(B, 2, -1)
            ada = ada[:, :, None, None, None, :]
            x = x * (1 + ada[:, 1]) + ada[:, 0]
        x = self.conv_out(nn.silu(x), self.causal)
        return unpatchify(x, self.cfg.patch_size)


def to_uint8(video: mx.array) -> mx.array:
    """(F, H, W, 3) float video in [-1, 1] -> uint8, truncating like the reference's `.to(torch.uint8)`."""
    return (mx.clip((video.astype(mx.float32) + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(mx.uint8)


def decode_video(z: mx.array, decoder: VideoDecoder, tiling: TilingConfig | None = None, timestep=None, key: mx.array | None = None,
                 noise: Noise | None = None) -> Iterator[mx.array]:
    """Decode normalised latents (B, F', H', W', C) of the first batch item into uint8 (F, H, W, 3) chunks.

    With a `TilingConfig` the frames stream out chunk by chunk (see `vae_tiling.tiled_decode`).
    """
    if tiling is None:
        yield to_uint8(decoder(z, timestep, key, noise)[0])
        return
    for chunk in tiled_decode(decoder, z, tiling, timestep, key, noise):
        yield to_uint8(chunk[0])


# ---------------------------------------------------------------------------------------------------------
# Weights

def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Reference-named encoder/decoder tensors (prefix stripped; statistics under `per_channel_statistics.`) -> ours."""
    out = {}
    for k, w in weights.items():
        if k.startswith("per_channel_statistics.") and k.split(".", 1)[1] in UNUSED_STATISTICS:
            continue
        if k.endswith((".conv.weight", "conv_shortcut.weight")):
            w = w.transpose(0, 2, 3, 4, 1)  # Conv3d (O, I, kT, kH, kW) -> (O, kT, kH, kW, I)
        elif k.endswith((".per_channel_scale1", ".per_channel_scale2")):
            w = w.reshape(-1)
        out[k] = w
    return out
