"""Audio VAE: log-mel spectrogram (B, 2, T, 64) <-> audio latent (B, z, T', F').

Channels-last inside: activations are (B, T, F, C) with time as the "height" axis. The public
`__call__`s take and return the reference layout (B, C, T, F). Causal padding is along the
config's `causality_axis` ("height" = time in the released files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .base import BaseConfig, check_choice

ENCODER_PREFIX = "audio_vae.encoder."
DECODER_PREFIX = "audio_vae.decoder."
STATISTICS_PREFIX = "audio_vae.per_channel_statistics."
# The reference crops decoded mel to 4·T (4·T − 3 when causal) whatever the number of levels.
LATENT_DOWNSAMPLE_FACTOR = 4
CAUSALITY_AXES = (None, "height", "width", "width-compatibility")


@dataclass
class AudioVAEConfig(BaseConfig):
    """`config["audio_vae"]`; defaults are the reference configurator's code defaults."""

    ch: int = 128
    out_ch: int = 2
    in_channels: int = 2
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8, 16, 32)
    resolution: int = 256
    z_channels: int = 8
    double_z: bool = True
    norm_type: str = "pixel"
    causality_axis: str | None = "height"
    mid_block_add_attention: bool = True
    resamp_with_conv: bool = True
    attn_type: str = "vanilla"
    mel_bins: int | None = None
    sampling_rate: int = 16000
    hop_length: int = 160
    n_fft: int = 1024

    @classmethod
    def from_dict(cls, audio_vae: dict) -> "AudioVAEConfig":
        params = audio_vae.get("model", {}).get("params", {})
        dd = params.get("ddconfig", {})
        pre = audio_vae.get("preprocessing", {})
        stft = pre.get("stft", {})
        mel_bins = dd.get("mel_bins") or pre.get("mel", {}).get("n_mel_channels") \
            or audio_vae.get("variables", {}).get("mel_bins")
        # the model's sizes come from ddconfig; the mel and STFT settings from their own sections
        kw = {k: v for k, v in dd.items() if k not in ("mel_bins", "sampling_rate", "hop_length", "n_fft")}
        for k in ("ch_mult", "attn_resolutions"):
            if k in kw:
                if kw[k] is None:
                    raise ValueError(f"audio_vae ddconfig.{k} is null; give a list (use [] for none)")
                kw[k] = tuple(kw[k])
        return super().from_dict(dict(kw, mel_bins=mel_bins, sampling_rate=params.get("sampling_rate", 16000),
                                      hop_length=stft.get("hop_length", 160), n_fft=stft.get("filter_length", 1024)))

    def validate(self):
        check_choice("audio_vae config", "norm_type", self.norm_type, ("pixel", "group"))
        check_choice("audio_vae config", "causality_axis", self.causality_axis, CAUSALITY_AXES)
        if self.causality_axis is not None and self.norm_type == "group":
            raise ValueError(f"audio_vae config: a causal ResnetBlock (causality_axis {self.causality_axis!r}) cannot "
                             "use GroupNorm (set norm_type 'pixel')")
        check_choice("audio_vae config", "attn_type", self.attn_type, ("vanilla", "none"))


def _norm(channels: int, norm_type: str) -> nn.Module:
    return PixelNorm() if norm_type == "pixel" else nn.GroupNorm(32, channels, eps=1e-6, pytorch_compatible=True)


class PixelNorm(nn.Module):
    """RMS over channels (last axis), eps 1e-6 in the audio VAE."""

    def __call__(self, x):
        return mx.fast.rms_norm(x, None, 1e-6)


def _conv_padding(axis: str | None, k: int) -> list[tuple[int, int]]:
    """(time, freq) padding of a k×k causal conv."""
    p = k - 1
    sym = (p // 2, p - p // 2)
    if axis == "height":
        return [(p, 0), sym]
    if axis in ("width", "width-compatibility"):
        return [sym, (p, 0)]
    return [sym, sym]


class CausalConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, axis: str | None):
        super().__init__()
        self.padding = _conv_padding(axis, k)
        self.conv = nn.Conv2d(cin, cout, k)

    def __call__(self, x):
        return self.conv(mx.pad(x, [(0, 0), *self.padding, (0, 0)]))


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: AudioVAEConfig):
        super().__init__()
        axis = cfg.causality_axis
        self.norm1 = _norm(cin, cfg.norm_type)
        self.conv1 = CausalConv2d(cin, cout, 3, axis)
        self.norm2 = _norm(cout, cfg.norm_type)
        self.conv2 = CausalConv2d(cout, cout, 3, axis)
        if cin != cout:
            self.nin_shortcut = CausalConv2d(cin, cout, 1, axis)

    def __call__(self, x):
        h = self.conv1(nn.silu(self.norm1(x)))
        h = self.conv2(nn.silu(self.norm2(h)))
        if "nin_shortcut" in self:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all (time, freq) positions, 1×1 conv projections."""

    def __init__(self, channels: int, norm_type: str):
        super().__init__()
        self.norm = _norm(channels, norm_type)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def __call__(self, x):
        B, T, F, C = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(B, 1, T * F, C) for m in (self.q, self.k, self.v))
        h = mx.fast.scaled_dot_product_attention(q, k, v, scale=C ** -0.5)
        return x + self.proj_out(h.reshape(B, T, F, C))


def _attn(channels: int, cfg: AudioVAEConfig, attn_type: str) -> nn.Module:
    return AttnBlock(channels, cfg.norm_type) if attn_type == "vanilla" else nn.Identity()


_DOWN_PADDING = {None: [(0, 1), (0, 1)], "height": [(2, 0), (0, 1)],
                 "width": [(0, 1), (2, 0)], "width-compatibility": [(0, 1), (1, 0)]}


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool, axis: str | None):
        super().__init__()
        if axis is not None and not with_conv:
            raise ValueError("audio_vae: causal downsampling needs resamp_with_conv true")
        self.padding = _DOWN_PADDING[axis]
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def __call__(self, x):
        if "conv" in self:
            return self.conv(mx.pad(x, [(0, 0), *self.padding, (0, 0)]))
        B, T, F, C = x.shape
        x = x[:, : T // 2 * 2, : F // 2 * 2]
        return x.reshape(B, T // 2, 2, F // 2, 2, C).mean(axis=(2, 4))


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool, axis: str | None):
        super().__init__()
        self.axis = axis
        if with_conv:
            self.conv = CausalConv2d(channels, channels, 3, axis)

    def __call__(self, x):
        x = mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2)
        if "conv" not in self:
            return x
        x = self.conv(x)
        # The causal conv sees the first input row twice; dropping one output keeps length 2n − 1.
        if self.axis == "height":
            return x[:, 1:]
        if self.axis == "width":
            return x[:, :, 1:]
        return x


class Level(nn.Module):
    def __init__(self, blocks: list, attn: list, resample: nn.Module | None, name: str):
        super().__init__()
        self.block = blocks
        self.attn = attn
        if resample is not None:
            setattr(self, name, resample)

    def __call__(self, h):
        for i, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[i](h)
        return h


class MidBlock(nn.Module):
    def __init__(self, channels: int, cfg: AudioVAEConfig, attn_type: str):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, cfg)
        self.attn_1 = _attn(channels, cfg, attn_type) if cfg.mid_block_add_attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, cfg)

    def __call__(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class PerChannelStatistics(nn.Module):
    """Latent statistics over the patchified `(c f)` features (channel-major)."""

    def __init__(self, channels: int):
        super().__init__()
        self["std-of-means"] = mx.ones((channels,))
        self["mean-of-means"] = mx.zeros((channels,))

    def _as_grid(self, name: str, F: int, C: int) -> mx.array:
        stat = self[name]
        if stat.size != F * C:
            raise ValueError(f"audio latent has {C} channels × {F} bins = {F * C} features per frame, but the "
                             f"checkpoint's per-channel statistics have {stat.size}; the mel bins do not match "
                             "this audio VAE")
        return stat.reshape(C, F).T  # feature c·F + f → grid (f, c)

    def normalize(self, x):
        F, C = x.shape[2], x.shape[3]
        return (x - self._as_grid("mean-of-means", F, C)) / self._as_grid("std-of-means", F, C)

    def un_normalize(self, x):
        F, C = x.shape[2], x.shape[3]
        return x * self._as_grid("std-of-means", F, C) + self._as_grid("mean-of-means", F, C)


def _check_input(x: mx.array, channels: int, what: str, bins: int | None = None):
    if x.ndim != 4 or x.shape[1] != channels or (bins is not None and x.shape[3] != bins):
        want = f"(batch, {channels}, frames, {bins if bins is not None else 'bins'})"
        raise ValueError(f"{what} must have shape {want}, got {tuple(x.shape)}")


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioVAEConfig):
        super().__init__()
        self.config = cfg
        ch, axis = cfg.ch, cfg.causality_axis
        self.per_channel_statistics = PerChannelStatistics(ch)
        self.conv_in = CausalConv2d(cfg.in_channels, ch, 3, axis)
        in_mult = (1, *cfg.ch_mult)
        res, self.down = cfg.resolution, []
        for level, mult in enumerate(cfg.ch_mult):
            cin, cout = ch * in_mult[level], ch * mult
            blocks = [ResnetBlock(cin if i == 0 else cout, cout, cfg) for i in range(cfg.num_res_blocks)]
            attn = [_attn(cout, cfg, cfg.attn_type) for _ in blocks] if res in cfg.attn_resolutions else []
            last = level == len(cfg.ch_mult) - 1
            down = None if last else Downsample(cout, cfg.resamp_with_conv, axis)
            self.down.append(Level(blocks, attn, down, "downsample"))
            res = res if last else res // 2
        top = ch * cfg.ch_mult[-1]
        self.mid = MidBlock(top, cfg, cfg.attn_type)
        self.norm_out = _norm(top, cfg.norm_type)
        self.conv_out = CausalConv2d(top, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, axis)

    def __call__(self, mel: mx.array) -> mx.array:
        """Log-mel (B, in_channels, T, mel_bins) → normalised latent means (B, z, T', F')."""
        _check_input(mel, self.config.in_channels, "audio encoder input (log-mel)", self.config.mel_bins)
        h = self.conv_in(mel.transpose(0, 2, 3, 1))
        for level in self.down:
            h = level(h)
            if "downsample" in level:
                h = level.downsample(h)
        h = self.mid(h)
        h = self.conv_out(nn.silu(self.norm_out(h)))
        h = h[..., : math.ceil(h.shape[-1] / 2)]  # the reference's chunk(2)[0]: the means
        return self.per_channel_statistics.normalize(h).transpose(0, 3, 1, 2)


class AudioDecoder(nn.Module):
    def __init__(self, cfg: AudioVAEConfig):
        super().__init__()
        self.config = cfg
        ch, axis, n = cfg.ch, cfg.causality_axis, len(cfg.ch_mult)
        self.per_channel_statistics = PerChannelStatistics(ch)
        cin = ch * cfg.ch_mult[-1]
        self.conv_in = CausalConv2d(cfg.z_channels, cin, 3, axis)
        # The reference decoder always builds vanilla attention, whatever attn_type says (the encoder follows it).
        self.mid = MidBlock(cin, cfg, "vanilla")
        res, up = cfg.resolution // 2 ** (n - 1), [None] * n
        for level in reversed(range(n)):
            cout = ch * cfg.ch_mult[level]
            blocks = [ResnetBlock(cin if i == 0 else cout, cout, cfg) for i in range(cfg.num_res_blocks + 1)]
            attn = [_attn(cout, cfg, "vanilla") for _ in blocks] if res in cfg.attn_resolutions else []
            # The reference decoder always resamples with a conv, whatever resamp_with_conv says.
            upsample = Upsample(cout, True, axis) if level != 0 else None
            up[level] = Level(blocks, attn, upsample, "upsample")
            res = res * 2 if level != 0 else res
            cin = cout
        self.up = up
        self.norm_out = _norm(cin, cfg.norm_type)
        self.conv_out = CausalConv2d(cin, cfg.out_ch, 3, axis)

    def __call__(self, latent: mx.array) -> mx.array:
        """Normalised latent (B, z, T, F) → log-mel (B, out_ch, 4T − 3, mel_bins) (4T when not causal)."""
        cfg = self.config
        _check_input(latent, cfg.z_channels, "audio decoder input (latent)")
        T, F = latent.shape[2], latent.shape[3]
        h = self.per_channel_statistics.un_normalize(latent.transpose(0, 2, 3, 1))
        h = self.mid(self.conv_in(h))
        for level in reversed(self.up):
            h = level(h)
            if "upsample" in level:
                h = level.upsample(h)
        h = self.conv_out(nn.silu(self.norm_out(h)))
        frames = T * LATENT_DOWNSAMPLE_FACTOR
        if cfg.causality_axis is not None:
            frames = max(frames - (LATENT_DOWNSAMPLE_FACTOR - 1), 1)
        return _fit(h, frames, cfg.mel_bins or F).transpose(0, 3, 1, 2)


def _fit(h: mx.array, frames: int, bins: int) -> mx.array:
    """Crop or zero-pad (B, T, F, C) to `frames` × `bins`."""
    h = h[:, :frames, :bins]
    pad_t, pad_f = frames - h.shape[1], bins - h.shape[2]
    if pad_t or pad_f:
        h = mx.pad(h, [(0, 0), (0, pad_t), (0, pad_f), (0, 0)])
    return h


_CONV_MODULES = ("conv", "q", "k", "v", "proj_out")


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Reference-named encoder/decoder tensors (prefix stripped) → our layout: Conv2d (O,I,H,W) → (O,H,W,I)."""
    out = {}
    for key, w in weights.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "weight" and module.rpartition(".")[2] in _CONV_MODULES:
            w = mx.contiguous(w.transpose(0, 2, 3, 1))
        out[key] = w
    return out
